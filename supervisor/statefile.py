"""``running-agents.json``: the local record of which agent processes are ours.

On disk it is the JSON object of ``State`` plus ``"checksum": "sha256:<hex>"``, the SHA-256 of
the object's canonical JSON (sorted keys, no spaces, UTF-8) without the checksum field; the file
itself is pretty-printed, since the checksum does not depend on formatting. See
``state.example.json`` at the repository root.

Writes are atomic and serialised: under ``<file>.lock`` (flock) a unique temp file in the same
dir is written, fsynced, renamed over the file, and the dir is fsynced, so a crash at any
instant leaves the old or the new version (reliability.md F10/F14; git's lockfile and
python-atomicwrites do the same). A failed write is never retried on the same descriptor: after
an fsync error the kernel may have dropped the dirty pages and a second fsync may "succeed"
(PostgreSQL's fsync-gate, ``data_sync_retry=off``; F11), so the whole save fails, the temp file
is removed, and the next save rewrites everything.

Loading never raises for bad content: a file that is empty, truncated, bit-flipped, not UTF-8,
not JSON, of another format or version, or fails the checksum or the schema, is moved to
``quarantine/`` and reported in one line; the caller rebuilds from the store and a process scan.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from supervisor.datadir import fsync_dir, private_file, write_all
from supervisor.errors import StateFileError

__all__ = ["FORMAT", "VERSION", "AgentEntry", "LoadResult", "State", "StateFile", "checksum_of"]

log = logging.getLogger("agent_supervisor.statefile")

FORMAT: Final = "agent-supervisor/running-agents"
VERSION: Final = 1
MAX_BYTES: Final = 16 * 1024 * 1024
"""A larger file is not ours (thousands of agents fit in 1 MiB); refusing it keeps load fast."""

_Text = Annotated[str, Field(min_length=1)]
_Time = Annotated[float, Field(allow_inf_nan=False)]
_Limit = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# strict: a "5" where an int belongs means someone else wrote this file; do not coerce it.
_MODEL: Final = ConfigDict(frozen=True, extra="forbid", strict=True)


class AgentEntry(BaseModel):
    """One live agent: enough to find it again (pid + start identity) and to judge it."""

    model_config = _MODEL

    job_id: int = Field(ge=0)
    attempt: int = Field(ge=1)
    worker: _Text
    pid: int = Field(gt=0)
    pgid: int = Field(gt=0)
    start_identity: _Text
    """Opaque token from the process module; on Linux ``linux:<boot_id>:<starttime ticks>``."""
    command: list[str] = Field(min_length=1)
    started_at: _Time
    """Wall clock at spawn, for display only (it jumps when the clock is stepped)."""
    started_mono: _Time
    """``time.monotonic()`` at spawn; meaningful only within the same boot."""
    timeout_s: _Limit | None
    idle_timeout_s: _Limit | None
    log_path: _Text
    run_dir: _Text
    """The attempt dir holding the payload, result and exit files."""


class State(BaseModel):
    """The whole file (without its checksum)."""

    model_config = _MODEL

    format: Literal["agent-supervisor/running-agents"]
    version: Literal[1]
    worker_id: _Text
    boot_id: _Text
    updated_at: _Time
    agents: list[AgentEntry]

    @field_validator("version", mode="before")
    @classmethod
    def _int_version(cls, value: Any) -> Any:
        if type(value) is not int:  # Literal[1] alone would take True and 1.0
            raise ValueError("version must be an integer")
        return value

    @model_validator(mode="after")
    def _one_agent_per_job(self) -> State:
        seen: set[int] = set()
        for agent in self.agents:
            if agent.job_id in seen:
                raise ValueError(f"job {agent.job_id} has two agents")
            seen.add(agent.job_id)
        return self

    @classmethod
    def empty(cls, *, worker_id: str, boot_id: str, now: float) -> State:
        """A state with no agents."""
        return cls(
            format=FORMAT, version=VERSION, worker_id=worker_id, boot_id=boot_id, updated_at=now, agents=[]
        )

    def agent(self, job_id: int) -> AgentEntry | None:
        """The entry of ``job_id``, if any."""
        return next((a for a in self.agents if a.job_id == job_id), None)

    def with_agent(self, entry: AgentEntry, *, now: float) -> State:
        """A copy with ``entry`` added (replacing the job's previous entry)."""
        agents = [a for a in self.agents if a.job_id != entry.job_id] + [entry]
        return self._copy(agents, now)

    def without_agent(self, job_id: int, *, now: float) -> State:
        """A copy without the entry of ``job_id``."""
        return self._copy([a for a in self.agents if a.job_id != job_id], now)

    def _copy(self, agents: list[AgentEntry], now: float) -> State:
        fields = self.model_dump()
        fields.update(agents=agents, updated_at=now)
        return State.model_validate(fields)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What ``StateFile.load`` found: the state, or None with the reason in one line."""

    state: State | None
    problem: str | None = None


def _canonical(obj: dict[str, Any]) -> bytes:
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def checksum_of(obj: dict[str, Any]) -> str:
    """``sha256:<hex>`` of ``obj``'s canonical JSON, ignoring any ``checksum`` key it has."""
    return "sha256:" + hashlib.sha256(_canonical(obj)).hexdigest()


class _Unusable(Exception):
    """The file content is not a valid state file; the message says why, in one line."""


def _encode(state: State) -> bytes:
    """The file content for ``state``: pretty JSON with the checksum last, no trailing newline
    (so that every proper prefix of a valid file is invalid JSON)."""
    obj = state.model_dump(mode="json")
    obj["checksum"] = checksum_of(obj)
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads would otherwise accept NaN/Infinity


def _decode(raw: bytes) -> State:
    """Parse and verify file content; ``_Unusable`` says what is wrong."""
    if not raw:
        raise _Unusable("the file is empty")
    if len(raw) > MAX_BYTES:
        raise _Unusable(f"the file is {len(raw)} bytes, more than {MAX_BYTES}")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise _Unusable(f"not UTF-8 at byte {exc.start}") from exc
    except RecursionError as exc:  # "[[[[…" deeper than the interpreter's stack
        raise _Unusable("not JSON: nested too deeply") from exc
    except ValueError as exc:
        raise _Unusable(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise _Unusable(f"not a JSON object but {type(obj).__name__}")
    # Format and version before the checksum: a newer version may checksum differently, and
    # "version 2" says more than "checksum mismatch".
    if obj.get("format") != FORMAT:
        raise _Unusable(f"format is {obj.get('format')!r:.60}, not {FORMAT!r}")
    if type(obj.get("version")) is not int or obj["version"] != VERSION:
        raise _Unusable(f"version {obj.get('version')!r:.20} is not supported (expected {VERSION})")
    if not isinstance(obj.get("checksum"), str):
        raise _Unusable("the checksum is missing")
    try:
        expected = checksum_of(obj)
    except (RecursionError, ValueError) as exc:  # nesting that json.loads took but dumps refuses
        raise _Unusable(f"cannot checksum the content: {type(exc).__name__}") from exc
    if obj["checksum"] != expected:
        raise _Unusable("checksum mismatch (torn or corrupted write)")
    try:
        return State.model_validate({k: v for k, v in obj.items() if k != "checksum"})
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise _Unusable(f"invalid field {loc}: {first['msg']}") from exc


class _HeldFileLock:
    """An flock on ``path``, through a descriptor opened once and kept: taking and dropping it
    costs two system calls, where filelock opens and closes the file every time (~0.1 ms, paid
    on every save). Threads of this process queue on a mutex first, since flock does not
    exclude holders of one open file description; other processes queue on the flock
    (filelock's ``FileLock`` on the same path excludes and is excluded alike)."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self._mutex = threading.Lock()
        self._fd: int | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        if not self._mutex.acquire(timeout=self._timeout_s):
            raise self._timed_out()
        try:
            if self._fd is None:
                self._fd = private_file(self.path, os.O_RDWR | os.O_CREAT)
            delay = 0.001
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self._timed_out() from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.05)
        except BaseException:
            self._mutex.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def close(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)  # also drops the flock, were it held

    def _timed_out(self) -> StateFileError:
        return StateFileError(f"timed out after {self._timeout_s:g} s waiting for the lock {self.path}")


class StateFile:
    """Load and save one ``running-agents.json``, serialised with other processes by an flock
    on ``<file>.lock`` (``lock_timeout_s`` bounds the wait; then ``StateFileError``). It keeps
    that lock file open until ``close()``."""

    def __init__(self, path: Path, quarantine_dir: Path, *, lock_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.quarantine_dir = Path(quarantine_dir)
        self._lock = _HeldFileLock(self.path.with_name(self.path.name + ".lock"), lock_timeout_s)

    def close(self) -> None:
        """Close the lock file (a later call opens it again)."""
        self._lock.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._lock.acquire()
        except OSError as exc:
            raise StateFileError(f"cannot lock {self._lock.path}: {exc.strerror or exc}") from exc
        try:
            yield
        finally:
            self._lock.release()

    def load(self) -> LoadResult:
        """Read the file. Bad content is quarantined and reported in ``problem``, never raised;
        ``StateFileError`` only when the file exists but cannot be read at all (EACCES, EIO)."""
        with self._locked():
            self._remove_stale_temps()
            return self._load()

    def save(self, state: State, *, durable: bool = True) -> None:
        """Replace the file with ``state`` atomically; ``StateFileError`` if that fails (the
        previous file is then left as it was, unless only the final dir fsync failed).

        ``durable=False`` skips the two fsyncs: the rename stays atomic against a crash of
        this process, and only an OS crash or power cut could lose the write — which also
        kills every agent the file describes; a torn or stale file is caught by the checksum
        and rebuilt from the store and a process scan."""
        with self._locked():
            self._save(state, durable=durable)

    def update(self, fn: Callable[[State], State], *, initial: State | None = None) -> State:
        """Load, apply ``fn``, save, all under one lock; returns the saved state.

        ``initial`` stands in when the file is missing or was quarantined; without it that
        case raises ``StateFileError``.
        """
        with self._locked():
            self._remove_stale_temps()
            loaded = self._load()
            current = loaded.state if loaded.state is not None else initial
            if current is None:
                raise StateFileError(f"no usable state file at {self.path}: {loaded.problem or 'missing'}")
            new = fn(current)
            self._save(new)
            return new

    def _load(self) -> LoadResult:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return LoadResult(None, None)
        except OSError as exc:
            raise StateFileError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            return LoadResult(_decode(raw))
        except _Unusable as exc:
            reason = " ".join(str(exc).split())
        try:
            moved = self._quarantine()
            problem = f"{self.path} was unusable ({reason}); moved it to {moved}"
        except OSError as err:
            problem = f"{self.path} was unusable ({reason}); could not quarantine it: {err.strerror or err}"
        log.warning("state file: %s", problem)
        return LoadResult(None, problem)

    def _quarantine(self) -> Path:
        self.quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        now_us = time.time_ns() // 1000
        stamp = (
            time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_us // 1_000_000)) + f".{now_us % 1_000_000:06d}Z"
        )
        for n in range(1000):
            target = self.quarantine_dir / f"running-agents.{stamp}.{n}.json"
            try:
                os.link(self.path, target)  # never overwrites an earlier quarantined file
            except FileExistsError:
                continue
            except OSError:  # no hard links here (some FUSE/SMB mounts): check, then rename
                if target.exists():
                    continue
                os.replace(self.path, target)
                return target
            os.unlink(self.path)
            return target
        raise FileExistsError(f"too many quarantined files named running-agents.{stamp}.*")

    def _save(self, state: State, *, durable: bool = True) -> None:
        data = _encode(state)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd: int | None = None
        try:
            fd = private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
            # Forget the fd before closing: close() frees it even when it reports EIO, and a
            # second close could hit a descriptor another thread has opened since.
            closing, fd = fd, None
            os.close(closing)
            os.replace(tmp, self.path)
            if durable:  # without this a power cut can undo the rename on ext4/xfs (ALICE, OSDI'14)
                fsync_dir(self.path.parent)
        except OSError as exc:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StateFileError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _remove_stale_temps(self) -> None:
        # Runs under the lock, when no writer of ours can be mid-save: any temp file left is
        # from a writer killed mid-write (SIGKILL, power cut) and is garbage. Done when
        # loading (a supervisor loads once per start), not on every save.
        prefix = f".{self.path.name}."
        with contextlib.suppress(OSError), os.scandir(self.path.parent) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
