"""Retention: what the supervisor writes does not grow without bound.

Every attempt leaves a run dir (payload, result, progress, exit files) and a log. ``Retention``
deletes them for finished attempts once they are older than ``retention_s``, and the oldest
first while all of them together exceed ``files_max_bytes``; optionally it purges finished
job rows older than ``retain_jobs_s`` from the store too. It runs in a thread of its own, every
``retention_every_s``: a sweep lists and stats every attempt's files (about 1 s per 100,000
on this kind of machine), which the supervisor loop must never wait for.

Never deleted: the files of attempts that run now (the loop hands over the live set with each
sweep), and anything younger than ``_MIN_AGE_S``, so an attempt that starts during a sweep is
safe even under the size cap. ``remove_job_files`` is what ``purge`` calls for jobs it deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from supervisor.clock import Clock
from supervisor.datadir import DataDir
from supervisor.errors import StoreError
from supervisor.job import TERMINAL
from supervisor.store import JobStore

__all__ = ["DiskUse", "Retention", "RetentionReport", "disk_use", "remove_job_files"]

log = logging.getLogger("agent_supervisor")

_MIN_AGE_S: Final = 120.0
"""Files younger than this are never deleted (an attempt starting while a sweep runs)."""


@dataclass(frozen=True, slots=True)
class DiskUse:
    """What the data dir's file system has left."""

    free_bytes: int
    total_bytes: int


def disk_use(path: Path) -> DiskUse | None:
    """Free and total bytes of the file system holding ``path`` (None if it cannot be read)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return DiskUse(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """One sweep: what the attempts' files take, and what went."""

    at: float
    """Wall-clock time of the sweep."""
    bytes: int
    files: int
    """Files and dirs (inodes) of every attempt, after the sweep."""
    attempts: int
    deleted_attempts: int
    deleted_bytes: int
    purged_jobs: int = 0


@dataclass(slots=True)
class _Attempt:
    store: str
    """The store's subdir the files are in ("" for the flat layout of older versions)."""
    key: tuple[int, int] | None
    paths: list[Path]
    mtime: float
    bytes: int
    files: int


def _attempt_key(name: str) -> tuple[int, int] | None:
    stem = name.removesuffix(".log")
    job, _, attempt = stem.partition("-")
    return (int(job), int(attempt)) if job.isdigit() and attempt.isdigit() else None


def _size(path: Path) -> tuple[int, int, float]:
    """(bytes, inodes, newest mtime) of a file or a dir tree (one level: attempt dirs are flat)."""
    try:
        st = path.lstat()
    except OSError:
        return 0, 0, 0.0
    if not path.is_dir() or path.is_symlink():
        return st.st_size, 1, st.st_mtime
    total, count, newest = 0, 1, st.st_mtime
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                est = entry.stat(follow_symlinks=False)
                total += est.st_size
                count += 1
                newest = max(newest, est.st_mtime)
    return total, count, newest


def _attempts(datadir: DataDir) -> list[_Attempt]:
    """Every attempt's files, from every store's subdirs (and the flat layout of old versions)."""
    found: dict[tuple[str, tuple[int, int] | None, str], _Attempt] = {}
    for top in (datadir.runs, datadir.logs):
        with contextlib.suppress(OSError):
            for entry in os.scandir(top):
                groups = [(entry.name, Path(entry.path))]
                if entry.is_dir(follow_symlinks=False) and _attempt_key(entry.name) is None:
                    with contextlib.suppress(OSError):  # a store's subdir: <store>/<job>-<attempt>
                        groups = [(f"{entry.name}/{e.name}", Path(e.path)) for e in os.scandir(entry.path)]
                for label, path in groups:
                    store, _, name = label.rpartition("/")
                    key = _attempt_key(name)
                    size, count, mtime = _size(path)
                    ident = (store, key, name.removesuffix(".log")) if key else (store, None, label)
                    item = found.setdefault(ident, _Attempt(store, key, [], 0.0, 0, 0))
                    item.paths.append(path)
                    item.mtime = max(item.mtime, mtime)
                    item.bytes += size
                    item.files += count
    return list(found.values())


def _delete(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def remove_job_files(datadir: DataDir, job_ids: Collection[int]) -> int:
    """Delete the run dirs and logs of every attempt of ``job_ids`` (a purge) in this store's
    subdirs (``datadir.store_key``; the flat layout of older versions too, where job ids could
    collide across stores: only without a key); how many attempts went."""
    wanted = set(job_ids)
    gone = 0
    for item in _attempts(datadir):
        if item.store not in ("", datadir.store_key):
            continue  # another store's job with the same id
        if item.key is not None and item.key[0] in wanted:
            _delete(item.paths)
            gone += 1
    return gone


class Retention:
    """The retention thread of one run (see the module docstring).

    ``live`` returns the (job, attempt) pairs that run now; ``on_report`` receives each
    sweep's report (the loop puts it into ``status.json``). ``wake()`` runs a sweep soon.
    """

    def __init__(
        self,
        datadir: DataDir,
        store: JobStore,
        *,
        clock: Clock,
        retention_s: float,
        files_max_bytes: int,
        every_s: float,
        retain_jobs_s: float | None,
        live: Callable[[], set[tuple[int, int]]],
        on_report: Callable[[RetentionReport], None],
        also: Callable[[], None] | None = None,
    ) -> None:
        self._datadir = datadir
        self._store = store
        self._clock = clock
        self.retention_s = retention_s
        self.files_max_bytes = files_max_bytes
        self.every_s = every_s
        self.retain_jobs_s = retain_jobs_s
        self._live = live
        self._on_report = on_report
        self._also = also
        """More housekeeping on the same thread and cadence (the workspaces' prune)."""
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agent-supervisor-retention", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._poke.set()

    def close(self) -> None:
        """Stop the thread (a sweep in progress finishes its current step) and join it."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._on_report(self.sweep())
                if self._also is not None:
                    self._also()
            except Exception:  # a sweep must never take the supervisor down
                log.exception("retention sweep failed")
            self._poke.wait(self.every_s)
            self._poke.clear()

    def sweep(self) -> RetentionReport:
        """One pass: delete what is too old, then the oldest while over the size cap."""
        now = self._clock.time()
        live = self._live()
        attempts = _attempts(self._datadir)
        keep: list[_Attempt] = []
        deleted = deleted_bytes = 0
        for item in sorted(attempts, key=lambda a: a.mtime):
            protected = (item.key is not None and item.key in live) or now - item.mtime < _MIN_AGE_S
            if not protected and self.retention_s > 0 and now - item.mtime > self.retention_s:
                _delete(item.paths)
                deleted += 1
                deleted_bytes += item.bytes
            else:
                keep.append(item)
        total = sum(a.bytes for a in keep)
        if self.files_max_bytes > 0 and total > self.files_max_bytes:
            survivors = []
            for item in keep:  # oldest first
                protected = (item.key is not None and item.key in live) or now - item.mtime < _MIN_AGE_S
                if total > self.files_max_bytes and not protected:
                    _delete(item.paths)
                    deleted += 1
                    deleted_bytes += item.bytes
                    total -= item.bytes
                else:
                    survivors.append(item)
            keep = survivors
        purged = 0
        if self.retain_jobs_s is not None and not self._stop.is_set():
            try:
                purged = len(self._store.purge(statuses=TERMINAL, older_than_s=self.retain_jobs_s).deleted)
            except StoreError as exc:
                log.warning("retention: finished jobs not purged (%s)", exc)
        if deleted:
            log.info("retention: deleted the files of %d attempts (%d bytes)", deleted, deleted_bytes)
        return RetentionReport(
            now,
            sum(a.bytes for a in keep),
            sum(a.files for a in keep),
            len(keep),
            deleted,
            deleted_bytes,
            purged,
        )
