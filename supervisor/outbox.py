"""The durable outbox: outcomes the store could not take yet, replayed in order later.

When a store stays unreachable through its retries, what the supervisor learned (an attempt's
outcome) must not be lost with the process: it is appended here, fsynced, and replayed in
order once the store answers. Replays are safe because ``JobStore.finish`` is idempotent for
the attempt that already settled a job, and fenced against everyone else.

One JSON object per line, each carrying a CRC32 of its body, so a line torn by a crash
mid-append is recognised and skipped (it was never acknowledged to anyone). The file lives in
the data dir, private to the user.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from supervisor.datadir import fsync_dir
from supervisor.errors import StateFileError
from supervisor.lifecycle import Outcome

__all__ = ["Outbox", "OutboxEntry", "outbox_depth"]

log = logging.getLogger("agent_supervisor.outbox")


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A fenced ``finish`` waiting for the store."""

    job_id: int
    worker: str
    attempt: int
    outcome: Outcome


def _encode(entry: OutboxEntry) -> bytes:
    body = json.dumps(
        {
            "op": "finish",
            "job_id": entry.job_id,
            "worker": entry.worker,
            "attempt": entry.attempt,
            "outcome": entry.outcome.to_json(),
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return f"{zlib.crc32(body.encode()):08x} {body}\n".encode()


def _decode(line: bytes) -> OutboxEntry | None:
    try:
        crc, body = line.rstrip(b"\n").split(b" ", 1)
        if int(crc, 16) != zlib.crc32(body):
            return None
        data = json.loads(body)
        return OutboxEntry(
            int(data["job_id"]), str(data["worker"]), int(data["attempt"]), Outcome.from_json(data["outcome"])
        )
    except (ValueError, KeyError, TypeError):
        return None


class Outbox:
    """An append-only, crash-safe queue of outcomes in ``path`` (``outbox.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries = self._load()

    def _load(self) -> list[OutboxEntry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateFileError(f"cannot read the outbox {self.path}: {exc.strerror}") from exc
        entries = []
        for number, line in enumerate(raw.splitlines(keepends=True), 1):
            entry = _decode(line)
            if entry is None:
                log.warning("outbox %s line %d is damaged (a crash mid-write?); skipped", self.path, number)
            else:
                entries.append(entry)
        return entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[OutboxEntry]:
        return list(self._entries)

    def append(self, entry: OutboxEntry) -> None:
        """Add an entry durably (fsynced before returning)."""
        data = _encode(entry)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateFileError(f"cannot write the outbox {self.path}: {exc.strerror}") from exc
        self._entries.append(entry)

    def drop_first(self, count: int) -> None:
        """Forget the first ``count`` entries (they reached the store): rewrite atomically."""
        remaining = self._entries[count:]
        if not remaining:
            try:
                self.path.unlink(missing_ok=True)
                fsync_dir(self.path.parent)
            except OSError as exc:
                raise StateFileError(f"cannot clear the outbox {self.path}: {exc.strerror}") from exc
            self._entries = []
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"".join(_encode(e) for e in remaining))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StateFileError(f"cannot rewrite the outbox {self.path}: {exc.strerror}") from exc
        self._entries = remaining

    def job_ids(self) -> set[int]:
        return {e.job_id for e in self._entries}


def outbox_depth(path: Path) -> int:
    """Entries waiting in an outbox file, read without locking (for ``health`` elsewhere)."""
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if _decode(line) is not None)
    except OSError:
        return 0
