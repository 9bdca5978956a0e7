"""Change hints between processes on one machine: a FIFO per watcher in a shared directory.

The SQLite store has no server to push changes, and an idle supervisor must not poll the file
(20 wake-ups a second cost a laptop's battery). So every watcher makes a FIFO
``<dir>/<pid>-<token>.fifo`` and blocks in a thread reading it; a writer that committed a change
a claimer cares about writes one line to every FIFO in the directory but its own. The line is
JSON: ``{"due_at": <epoch>|null}`` (``JobStore.watch``).

Why FIFOs: a FIFO is addressed by path, with no length limit (an AF_UNIX socket path may not
exceed ~104-108 bytes, and a data dir can be deep), it works on Linux and macOS, and a writer
finds out for free that a watcher is gone: opening a FIFO for writing with ``O_NONBLOCK`` fails
with ``ENXIO`` when nobody has it open for reading (fifo(7)) — the writer then removes it, so a
crashed supervisor leaves nothing behind for long. The reader opens its FIFO read-write: it then
never sees end-of-file when writers come and go (Linux and macOS allow ``O_RDWR`` on a FIFO),
and a blocking read costs nothing while idle. A line shorter than ``PIPE_BUF`` is written
atomically, so lines never interleave. A full FIFO (``EAGAIN``: its watcher is far behind) is
skipped: one hint already waits there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["FifoWatch", "notify"]

log = logging.getLogger("agent_supervisor.store")

_SUFFIX: Final = ".fifo"
_STOP: Final = b'{"stop": true}\n'
_MAX_LINE: Final = 512  # well under PIPE_BUF (4096 on Linux, 512 on macOS: POSIX's minimum)


def _private_dir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(errno.EPERM, "not a directory of this user", str(path))
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)


def notify(directory: Path, due_at: float | None, *, skip: str | None = None) -> int:
    """Write a hint to every watcher's FIFO in ``directory`` (but ``skip``, a FIFO's name);
    remove FIFOs nobody reads any more. Returns how many watchers were told. Never raises:
    a hint that cannot be delivered only costs the watcher its next poll."""
    line = json.dumps({"due_at": due_at}).encode() + b"\n"
    told = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0  # no directory: nobody ever watched
    for entry in entries:
        if not entry.name.endswith(_SUFFIX) or entry.name == skip:
            continue
        try:
            fd = os.open(entry.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader: its watcher died without cleaning up
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            continue
        try:
            os.write(fd, line)
            told += 1
        except OSError:  # EAGAIN: full, a hint already waits there
            pass
        finally:
            os.close(fd)
    return told


class FifoWatch:
    """One watcher: a FIFO in ``directory`` and a daemon thread calling ``wake(due_at)`` for
    every hint read from it. ``close()`` removes the FIFO and joins the thread."""

    def __init__(self, directory: Path, wake: Callable[[float | None], None]) -> None:
        _private_dir(directory)
        self.name = f"{os.getpid()}-{secrets.token_hex(6)}{_SUFFIX}"
        self._path = directory / self.name
        os.mkfifo(self._path, 0o600)
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self._path.unlink(missing_ok=True)
            raise
        self._wake = wake
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="agent-supervisor-wake", daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                log.warning("wake-up channel %s failed: %s; polling instead", self._path, exc)
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            pending = pending[-_MAX_LINE:]
            for raw in lines:
                if raw + b"\n" == _STOP and self._closed:
                    return
                try:
                    due = json.loads(raw).get("due_at")
                    due = float(due) if due is not None else None
                except (ValueError, TypeError, AttributeError):
                    due = None  # a garbled hint is still a hint
                try:
                    self._wake(due)
                except Exception:
                    log.exception("wake-up callback failed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._fd, _STOP)
        self._thread.join(5.0)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._path.unlink(missing_ok=True)
