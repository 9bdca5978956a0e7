"""Cap an agent's log file in place while the agent keeps appending to it.

The agent writes with O_APPEND straight into the file (``procs.spawn``); the supervisor calls
``LogCap.check`` now and then. Past the cap, the file keeps its first ``cap`` bytes, then a
one-line marker, and everything the agent appends after the marker is dropped at the next
check, with only the last ``tail_bytes`` of it kept in memory. So the file is never larger
than cap + marker after a check, and memory stays bounded by ``tail_bytes``.

There is no "truncate and tell me the old size" system call, so bytes the agent appends between
our last fstat and the ftruncate (or between the first ftruncate and the marker's pwrite) are
dropped without being counted: ``dropped`` is a lower bound, and the final marker says "at
least". At ordinary output rates it is exact; an agent writing ~2 GB/s can lose megabytes
uncounted when we are preempted between the two calls (measured: up to ~1 % of 500 MB).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

__all__ = ["LogCap"]

_MARKER: Final = "\n[agent-supervisor: output truncated at {cap} bytes]\n"
_FINAL_MARKER: Final = (
    "\n[agent-supervisor: output truncated at {cap} bytes; at least {dropped} bytes dropped]\n"
)


def _decode_tail(data: bytes, cut: bool) -> str:
    if cut:  # the cut may split a multibyte character: drop its orphaned continuation bytes
        i = 0
        while i < min(3, len(data)) and data[i] & 0xC0 == 0x80:
            i += 1
        data = data[i:]
    return data.decode("utf-8", errors="replace")


class LogCap:
    """Keeps ``path`` at most ``cap_bytes`` (+ a marker line) and the output's last ``tail_bytes``."""

    def __init__(self, path: Path, cap_bytes: int, tail_bytes: int = 4096) -> None:
        if cap_bytes < 0 or tail_bytes < 0:
            raise ValueError("cap_bytes and tail_bytes must be >= 0")
        self.path = path
        self.cap = cap_bytes
        self.tail_bytes = tail_bytes
        self._marker = _MARKER.format(cap=cap_bytes).encode()
        self._size = 0
        self._dropped = 0
        self._keep: int | None = None  # cap + len(marker) once truncated, else None
        self._tail = bytearray()  # last tail_bytes of the real output, valid once truncated

    @property
    def size(self) -> int:
        """The file size seen by the last check."""
        return self._size

    @property
    def dropped(self) -> int:
        """Bytes of output dropped so far."""
        return self._dropped

    @property
    def truncated(self) -> bool:
        """Whether output has been dropped (the file holds the marker)."""
        return self._keep is not None

    def check(self) -> bool:
        """One stat; True when the file's size changed since the last check. Truncates past the cap."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return False
        # A size change, not the mtime: our own truncation resets the size we remember, and a
        # shrink by someone else counts as activity rather than risk a false idle timeout.
        grew = size != self._size
        self._size = size
        if self._keep is not None and size < self._keep:
            self._keep = None  # truncated by someone else (e.g. `: > log`): the marker is gone
        if size > (self.cap if self._keep is None else self._keep):
            self._truncate()
        return grew

    def _truncate(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            if self._keep is None:
                self._keep = self._find_marker(fd)
            if self._keep is None:
                # Nothing was dropped yet, so the output's tail may reach back into the head.
                self._tail = bytearray(self._cut(fd, 0, self.cap))
                # pwrite at a fixed offset, not an append: the marker always sits at [cap, keep).
                os.pwrite(fd, self._marker, self.cap)
                self._keep = self.cap + len(self._marker)
            if os.fstat(fd).st_size > self._keep:  # output appended after the marker
                self._tail += self._cut(fd, self._keep, self._keep)
                del self._tail[: max(0, len(self._tail) - self.tail_bytes)]
            self._size = self._keep
        finally:
            os.close(fd)

    def _cut(self, fd: int, start: int, keep: int) -> bytes:
        """Truncate to ``keep``, counting the bytes dropped; the last tail_bytes of [start, end)."""
        size = os.fstat(fd).st_size
        for _ in range(3):
            lo = max(start, size - self.tail_bytes)
            chunk = os.pread(fd, size - lo, lo)
            now = os.fstat(fd).st_size
            if now == size:
                break
            size = now  # the agent appended meanwhile: read the newer tail
        # Keep fstat → ftruncate adjacent: whatever lands between the two is lost uncounted.
        os.ftruncate(fd, keep)
        self._dropped += max(0, size - keep)
        return chunk

    def _find_marker(self, fd: int) -> int | None:
        """The end of a marker already at ``cap`` (a LogCap before a restart wrote it), if any."""
        head = os.pread(fd, 200, self.cap)
        prefix = self._marker[: self._marker.index(b"bytes") + 5]
        end = head.find(b"]\n")
        if not head.startswith(prefix) or end < len(prefix):
            return None
        counted = re.search(rb"; at least (\d+) bytes dropped", head[:end])
        self._dropped += int(counted.group(1)) if counted else 0
        return self.cap + end + 2

    def finish(self) -> str:
        """Final check; the marker then states the total dropped. Returns the output's tail as text."""
        self.check()
        if self._keep is not None:
            final = _FINAL_MARKER.format(cap=self.cap, dropped=self._dropped).encode()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    os.pwrite(fd, final, self.cap)
                    os.ftruncate(fd, self.cap + len(final))
                finally:
                    os.close(fd)
            except FileNotFoundError:
                pass
            self._marker = final
            self._keep = self._size = self.cap + len(final)
            return _decode_tail(bytes(self._tail), cut=True)
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - self.tail_bytes))
                data = f.read(self.tail_bytes)
        except FileNotFoundError:
            return ""
        return _decode_tail(data, cut=size > self.tail_bytes)
