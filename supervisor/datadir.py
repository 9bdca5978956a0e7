"""The data dir: its layout, private permissions, and the one-supervisor-per-data-dir lock.

::

    <data dir>/                 0o700
        running-agents.json     the state file (supervisor.statefile)
        worker-id               the worker id, kept apart too (a quarantined state file
                                must not cost the supervisor its leases)
        outbox.jsonl            outcomes waiting for the store (supervisor.outbox)
        status.json             what only the live supervisor knows (supervisor.status)
        store-id                the identity of the store this data dir works with
        supervisor.lock         held (flock) by the supervisor that owns this dir
        supervisor.pid          that supervisor's pid, for the "already running" message
        logs/<store>/<job>-<attempt>.log
        runs/<store>/<job>-<attempt>/   payload.json, result.json, progress.json and exit
                                of one attempt (``AttemptFiles``); <store> is the first 12
                                characters of the store's identity, so job ids of a
                                replaced store never meet an old job's files
        quarantine/             state files that failed to load
        workspaces/             repository mirrors and one worktree per attempt; its layout
                                belongs to ``supervisor.workspaces``

This module is the one owner of these names: everyone else asks a ``DataDir``. ``DataDir.at``
only names the paths (for readers in other processes, such as ``health``);
``prepare_data_dir`` creates them.

Everything here may hold job payloads, agent output or secrets, so directories are 0o700 and
files 0o600 whatever the umask (DESIGN.md, "Settings": files holding secrets must not be
readable by others).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import filelock

from supervisor.errors import ConfigError, DataDirLockedError

__all__ = [
    "LOCK_FILE",
    "PID_FILE",
    "STATE_FILE",
    "AttemptFiles",
    "DataDir",
    "DataDirLock",
    "fsync_dir",
    "prepare_data_dir",
    "private_file",
    "write_all",
    "write_private",
]

log = logging.getLogger("agent_supervisor.datadir")

STATE_FILE: Final = "running-agents.json"
LOCK_FILE: Final = "supervisor.lock"
PID_FILE: Final = "supervisor.pid"
OUTBOX_FILE: Final = "outbox.jsonl"
WORKER_ID_FILE: Final = "worker-id"
STATUS_FILE: Final = "status.json"
STORE_ID_FILE: Final = "store-id"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


def _private_dir(path: Path) -> bool:
    """Create ``path`` as 0o700, or tighten it to 0o700 if it is ours and looser; ``OSError``
    (its ``filename`` is the path) if it cannot be made a private dir of ours. True when this
    call created it (so it is empty)."""
    created = False
    with contextlib.suppress(FileExistsError):  # a file there is reported just below
        path.mkdir(mode=DIR_MODE, parents=True)
        created = True
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(path))
    getuid = getattr(os, "getuid", None)  # absent on Windows, where POSIX modes mean little
    if getuid is None:
        return created
    if st.st_uid != getuid():
        # Another account could read our payloads and logs, or plant files for us to trust.
        raise PermissionError(errno.EPERM, f"belongs to uid {st.st_uid}, not to this user", str(path))
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        # mkdir's mode is filtered by the umask, and an existing dir may be 0o755 from an old version.
        path.chmod(DIR_MODE)
    return created


def private_file(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """Open ``path`` as a 0o600 file and return the descriptor (the caller closes it).

    ``O_NOFOLLOW`` refuses a symlink planted at ``path``; the ``fchmod`` covers a file that
    already existed with looser bits, which ``O_CREAT``'s mode would not touch.
    """
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, data: bytes, *, durable: bool = False, atomic: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + rename), as a 0o600 file.

    A reader sees the old or the new content, never a mix. With ``durable=True`` the data and
    the rename are fsynced; otherwise a power cut may lose the new content (fine for payload
    and pid files, which are rewritten on every start; the state file has its own writer).
    ``atomic=False`` writes in place instead, for a file nobody reads until we are done.
    Raises ``OSError``; the temp file is removed on failure.
    """
    if not atomic:
        fd = private_file(path)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:  # os.write may write less than asked (signals, some file systems)
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    """fsync a directory, making a rename in it durable; a no-op where that is impossible."""
    if os.name != "posix":  # Windows cannot open a directory for fsync
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class AttemptFiles:
    """The files of one attempt's dir: what the agent reads and writes, and the wrapper's
    exit file (the agent contract in README names them by environment variable)."""

    dir: Path

    @property
    def payload(self) -> Path:
        return self.dir / "payload.json"

    @property
    def result(self) -> Path:
        return self.dir / "result.json"

    @property
    def progress(self) -> Path:
        return self.dir / "progress.json"

    @property
    def exit(self) -> Path:
        return self.dir / "exit"


@dataclass(frozen=True, slots=True)
class DataDir:
    """The paths of a data dir (see the module docstring for the layout). ``store_key``
    names the store's subdirs of ``runs/`` and ``logs/`` ("" before it is known)."""

    root: Path
    store_key: str = ""

    @classmethod
    def at(cls, path: Path | str, store_key: str = "") -> DataDir:
        """The paths of the data dir at ``path``; nothing is created or checked."""
        return cls(Path(path).expanduser(), store_key)

    def for_store(self, identity: str) -> DataDir:
        """These paths, with attempt files kept apart per store (``identity[:12]``)."""
        return DataDir(self.root, _safe_key(identity[:12]))

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def pid_file(self) -> Path:
        return self.root / PID_FILE

    @property
    def outbox(self) -> Path:
        return self.root / OUTBOX_FILE

    @property
    def worker_id_file(self) -> Path:
        return self.root / WORKER_ID_FILE

    @property
    def status_file(self) -> Path:
        return self.root / STATUS_FILE

    @property
    def store_id_file(self) -> Path:
        return self.root / STORE_ID_FILE

    @property
    def store_runs(self) -> Path:
        """Where this store's attempt dirs are (``runs/<store>``, or ``runs`` without one)."""
        return self.runs / self.store_key if self.store_key else self.runs

    @property
    def store_logs(self) -> Path:
        return self.logs / self.store_key if self.store_key else self.logs

    def attempt_dir(self, job_id: int, attempt: int) -> Path:
        """``runs/<job_id>-<attempt>/``, created 0o700 if missing (``OSError`` if it cannot be)."""
        return self.new_attempt_dir(job_id, attempt)[0]

    def new_attempt_dir(self, job_id: int, attempt: int) -> tuple[Path, bool]:
        """``attempt_dir``, and whether this call created it (then nothing stale can be in it)."""
        path = self.attempt_path(job_id, attempt)
        return path, _private_dir(path)

    def attempt_path(self, job_id: int, attempt: int) -> Path:
        """``runs/<store>/<job_id>-<attempt>/`` (not created)."""
        return self.store_runs / _attempt_name(job_id, attempt)

    def log_path(self, job_id: int, attempt: int) -> Path:
        """``logs/<store>/<job_id>-<attempt>.log`` (not created)."""
        return self.store_logs / f"{_attempt_name(job_id, attempt)}.log"

    def prepare_store_dirs(self) -> None:
        """Create this store's ``runs/`` and ``logs/`` subdirs, 0o700 (``OSError`` if not)."""
        for path in (self.store_runs, self.store_logs):
            _private_dir(path)


def _safe_key(text: str) -> str:
    """A store identity as a directory name: letters, digits, ``-`` and ``_`` only."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "store"


def _attempt_name(job_id: int, attempt: int) -> str:
    # Both end up in a path: refuse anything but plain non-negative ints (bool is an int too).
    if type(job_id) is not int or type(attempt) is not int or job_id < 0 or attempt < 0:
        raise ValueError(f"job id and attempt must be non-negative ints, got {job_id!r}, {attempt!r}")
    return f"{job_id}-{attempt}"


def prepare_data_dir(path: Path) -> DataDir:
    """Create (or tighten) the data dir and its subdirs, all 0o700; ``ConfigError`` if unusable."""
    root = Path(path).expanduser()
    paths = DataDir(root)
    try:
        for directory in (root, paths.logs, paths.runs, paths.quarantine):
            _private_dir(directory)
    except OSError as exc:
        detail = exc.strerror or str(exc)
        if exc.filename and Path(exc.filename) != root:  # name the subdir that failed
            detail = f"{exc.filename}: {detail}"
        raise ConfigError(f"cannot use data dir {root}: {detail}") from exc
    return DataDir(root)


class DataDirLock:
    """The exclusive lock that makes one supervisor the owner of a data dir.

    ``acquire()`` never waits: if another supervisor holds the dir it raises
    ``DataDirLockedError`` naming that supervisor's pid (from ``supervisor.pid``).

    It is an ``flock`` on ``supervisor.lock`` (filelock's ``UnixFileLock``), so the kernel drops
    it when the holder dies, even by SIGKILL: no stale-lock cleanup, no pid guessing. flock
    locks belong to an *open file description*, and filelock opens one per ``FileLock`` object
    unless ``is_singleton=True`` (filelock PR #283 added that opt-in sharing); we keep the
    default, so two ``DataDirLock`` objects on one dir conflict even inside one process: a
    host that starts two embedded supervisors on one dir gets the error too. ``thread_local``
    is off because a host may acquire on one thread and release on another; our own mutex
    serialises acquire/release. The soft-lock fallback is off: a soft lock survives SIGKILL,
    which is exactly what this lock must not do, so a file system without flock is refused.
    The lock fd is opened non-inheritable (PEP 446), so agents never hold it after we die.
    """

    def __init__(self, data_dir: DataDir | Path) -> None:
        paths = data_dir if isinstance(data_dir, DataDir) else DataDir.at(data_dir)
        self._root, self._lock_path, self._pid_path = paths.root, paths.lock_file, paths.pid_file
        self._mutex = threading.Lock()
        self._held = False
        self._lock = filelock.FileLock(
            self._lock_path,
            timeout=0,
            mode=FILE_MODE,
            thread_local=False,
            is_singleton=False,
            fallback_to_soft=False,
        )

    @property
    def path(self) -> Path:
        """The data dir this lock guards."""
        return self._root

    @property
    def is_locked(self) -> bool:
        """Whether this object holds the lock now."""
        return self._held

    def acquire(self) -> DataDirLock:
        """Take the lock now or raise ``DataDirLockedError``; a no-op if this object holds it."""
        with self._mutex:
            if self._held:
                return self
            try:
                self._lock.acquire(timeout=0, blocking=False)
            except filelock.Timeout:
                raise DataDirLockedError(
                    f"another supervisor is running on {self._root} ({self._holder()})"
                ) from None
            except OSError as exc:  # EROFS, EACCES, ENOSYS (no flock on this file system) …
                raise ConfigError(f"cannot lock data dir {self._root}: {exc.strerror or exc}") from exc
            self._held = True
            try:
                write_private(self._pid_path, f"{os.getpid()}\n".encode())
            except OSError as exc:  # the flock is what counts; the pid only improves a message
                log.warning("could not record our pid in %s: %s", self._pid_path, exc.strerror or exc)
            return self

    def release(self) -> None:
        """Give the lock up; calling it when not held does nothing."""
        with self._mutex:
            if not self._held:
                return
            # Remove the pid file while we still hold the lock, so it never names a dead
            # supervisor after a clean stop (after a SIGKILL the next holder overwrites it).
            with contextlib.suppress(OSError):
                if self._pid_path.read_text().strip() == str(os.getpid()):
                    self._pid_path.unlink()
            self._lock.release(force=True)
            self._held = False

    def wait_until_free(self) -> None:
        """Block until no supervisor holds the lock (the holder exited), without taking it.

        A blocking ``flock`` on the same file: the kernel wakes us, no polling. It is let go
        at once; the caller then tries ``acquire``, and may lose that race to a third party.
        """
        fd = private_file(self._lock_path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _holder(self) -> str:
        try:
            text = self._pid_path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return "pid unknown"
        return f"pid {int(text)}" if text.isdigit() else "pid unknown"

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DataDirLock({str(self._root)!r}, locked={self._held})"
