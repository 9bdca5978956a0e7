"""Retention: what the supervisor writes does not grow without bound.

Every attempt leaves a run dir (payload, result, progress, exit files) and a log. ``Retention``
deletes them for finished attempts once they are older than ``retention_s``, and the oldest
first while all of them together exceed ``files_max_bytes``; optionally it purges finished
job rows older than ``retain_jobs_s`` from the store too. It runs in a thread of its own, every
``retention_every_s``: a sweep lists and stats every attempt's files (seconds per 100,000
attempts on this kind of machine), which the supervisor loop must never wait for. Sizes are
what the files take on disk (allocated blocks), not their lengths.

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


_RUN, _LOG = 1, 2
"""Which of an attempt's two places exist: its run dir (``runs/``), its log (``logs/``)."""


def _attempt_key(name: str) -> tuple[int, int] | None:
    stem = name.removesuffix(".log")
    job, _, attempt = stem.partition("-")
    return (int(job), int(attempt)) if job.isdigit() and attempt.isdigit() else None


def _usage(entry: os.DirEntry[str]) -> tuple[int, int, float]:
    """(bytes allocated on disk, inodes, newest mtime) of a file or a flat dir (attempt dirs
    are flat). Allocated, not ``st_size``: a tiny attempt's few bytes take a block per file
    and one for its dir, and that is what fills a disk."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return 0, 0, 0.0
    total, count, newest = st.st_blocks * 512, 1, st.st_mtime
    if entry.is_dir(follow_symlinks=False):
        with contextlib.suppress(OSError), os.scandir(entry.path) as inner:
            for item in inner:
                with contextlib.suppress(OSError):
                    est = item.stat(follow_symlinks=False)
                    total += est.st_blocks * 512
                    count += 1
                    newest = max(newest, est.st_mtime)
    return total, count, newest


def _scan(datadir: DataDir) -> dict[str, list[float]]:
    """Every attempt's files, from every store's subdirs (and the flat layout of older
    versions), as ``{"<store>/<job>-<attempt>": [mtime, bytes, inodes, places]}`` (``places``:
    ``_RUN | _LOG``). Compact on purpose: months of history are hundreds of thousands of
    attempts, and a sweep holds them all at once (about 0.3 kB each, where Path objects
    took 1.5). A name that is no attempt's is kept under ``"?<place>/<name>"``."""
    found: dict[str, list[float]] = {}
    for place, top in ((_RUN, datadir.runs), (_LOG, datadir.logs)):
        with contextlib.suppress(OSError), os.scandir(top) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and _attempt_key(entry.name) is None:
                    with contextlib.suppress(OSError), os.scandir(entry.path) as inner:  # <store>/
                        for sub in inner:
                            _add(found, place, f"{entry.name}/", sub)
                else:
                    _add(found, place, "", entry)
    return found


def _add(found: dict[str, list[float]], place: int, store: str, entry: os.DirEntry[str]) -> None:
    stem = entry.name.removesuffix(".log") if place == _LOG else entry.name
    ident = f"{store}{stem}" if _attempt_key(stem) is not None else f"?{place}/{store}{entry.name}"
    size, count, mtime = _usage(entry)
    item = found.get(ident)
    if item is None:
        found[ident] = [mtime, size, count, place]
    else:
        item[0], item[1], item[2], item[3] = (
            max(item[0], mtime),
            item[1] + size,
            item[2] + count,
            int(item[3]) | place,
        )


def _parse(ident: str) -> tuple[str, tuple[int, int] | None]:
    """(store subdir or "", (job, attempt) or None) of a ``_scan`` key."""
    if ident.startswith("?"):
        return "", None
    store, _, stem = ident.rpartition("/")
    return store, _attempt_key(stem)


def _paths(datadir: DataDir, ident: str, places: int) -> list[Path]:
    if ident.startswith("?"):
        place, _, label = ident[1:].partition("/")
        return [(datadir.runs if int(place) == _RUN else datadir.logs) / label]
    paths = []
    if places & _RUN:
        paths.append(datadir.runs / ident)
    if places & _LOG:
        paths.append(datadir.logs / f"{ident}.log")
    return paths


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
    for ident, item in _scan(datadir).items():
        store, key = _parse(ident)
        if store not in ("", datadir.store_key):
            continue  # another store's job with the same id
        if key is not None and key[0] in wanted:
            _delete(_paths(datadir, ident, int(item[3])))
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
        found = _scan(self._datadir)
        deleted = deleted_bytes = 0

        def protected(ident: str, mtime: float) -> bool:
            key = _parse(ident)[1]
            return (key is not None and key in live) or now - mtime < _MIN_AGE_S

        def delete(ident: str) -> None:
            nonlocal deleted, deleted_bytes
            _, size, _, places = found.pop(ident)
            _delete(_paths(self._datadir, ident, int(places)))
            deleted += 1
            deleted_bytes += int(size)

        if self.retention_s > 0:
            for ident, (mtime, *_) in list(found.items()):
                if now - mtime > self.retention_s and not protected(ident, mtime):
                    delete(ident)
        total = sum(int(item[1]) for item in found.values())
        if self.files_max_bytes > 0 and total > self.files_max_bytes:
            for ident, item in sorted(found.items(), key=lambda kv: kv[1][0]):  # oldest first
                if total <= self.files_max_bytes:
                    break
                if not protected(ident, item[0]):
                    total -= int(item[1])
                    delete(ident)
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
            sum(int(item[1]) for item in found.values()),
            sum(int(item[2]) for item in found.values()),
            len(found),
            deleted,
            deleted_bytes,
            purged,
        )
