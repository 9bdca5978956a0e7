"""All OS process work on agents: spawn, signals, reaping, limits and tree statistics.

An agent runs as ``/bin/sh -c WRAPPER agent-supervisor-wrapper argv...`` in a new session (so
its pgid is the wrapper's pid) with stdin from /dev/null and stdout/stderr appended straight to a
log file: the agent never writes into a pipe that the supervisor holds, so it cannot die of
SIGPIPE or block when the supervisor goes away, its output never sits in our memory, and a
grandchild that inherited the output cannot keep our wait hanging on a pipe (bpo-37424).

The wrapper (builtins only, so it works whatever PATH the agent gets) waits for the agent and
writes its exit status to ``$AGENT_SUPERVISOR_EXIT_FILE`` (``run_dir/exit``); a supervisor that
was killed meanwhile finds the outcome there after a restart (``AgentProcess.attach``). It
installs ``trap : TERM INT HUP``: a *handler*, not an ignore, because handlers are reset by
exec while ignored dispositions are inherited; the agent therefore sees SIGTERM normally, and
POSIX sh runs the trap only after the foreground command ends, so the wrapper outlives the
agent and records it. A status above 128 means "killed by signal status-128" (sh's ``$?``
convention); an agent that itself exits with 129..192 is reported as signalled too.

With ``limits`` the wrapper also sets rlimits with ``ulimit`` and, where agents get a cgroup,
first waits on a one-line stdin pipe while we move it into the cgroup (``supervisor.limits``
explains why this is race-free); the agent still gets /dev/null as stdin.

Identity, the env-tag scan and tree sampling live in ``supervisor.proctable``; ``Waiter`` and
``stop`` in ``supervisor.waiting``; all are re-exported here.

Windows is not supported: it has no process groups, sessions, ``killpg``, ``fork``/``wait4``
or POSIX signals, so nothing here could keep its promises; importing this module there raises
``ImportError`` with that message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from supervisor import proctable
from supervisor.cgroups import AgentCgroup, Cgroups, Counters
from supervisor.clock import SYSTEM_CLOCK, Clock
from supervisor.datadir import AttemptFiles
from supervisor.errors import SpawnError
from supervisor.limits import Setup, breach_of, describe, plain_wrapper
from supervisor.logcap import LogCap
from supervisor.processes import (
    TAG_ATTEMPT,
    TAG_JOB,
    TAG_WORKER,
    ExitStatus,
    Limits,
    TaggedProcess,
    TreeStats,
)
from supervisor.proctable import (
    ProcessTable,
    TreeSampler,
    _getpgid,
    _group_members,
    _identity_and_zombie,
    _iter_tagged_env,
    _killpg,
    _open_pidfd,
    boot_id,
    identity_of,
    memory,
    same_process,
    scan_tagged,
    set_child_subreaper,
    signal_process,
)
from supervisor.waiting import Waiter

if sys.platform == "win32":  # pragma: no cover - documented refusal
    raise ImportError(
        "agent-supervisor needs POSIX process groups, sessions and signals; Windows is not supported"
    )

__all__ = [
    "EXIT_FILE_ENV",
    "TAG_ATTEMPT",
    "TAG_JOB",
    "TAG_WORKER",
    "WRAPPER_NAME",
    "AgentProcess",
    "ExitStatus",
    "Limits",
    "LogCap",
    "OsProcesses",
    "TaggedProcess",
    "TreeStats",
    "Waiter",
    "boot_id",
    "identity_of",
    "memory",
    "same_process",
    "scan_tagged",
    "set_child_subreaper",
    "signal_process",
    "spawn",
]

EXIT_FILE_ENV: Final = "AGENT_SUPERVISOR_EXIT_FILE"
WRAPPER_NAME: Final = "agent-supervisor-wrapper"
_SH: Final = "/bin/sh"


# ---------------------------------------------------------------- exit status


_UNKNOWN: Final = ExitStatus(None, None, None)


def _from_rc(rc: int, rss: int | None) -> ExitStatus:
    if 128 < rc < 128 + signal.NSIG:  # sh's $? for "killed by signal rc-128"
        return ExitStatus(None, rc - 128, rss)
    return ExitStatus(rc, None, rss)


def _from_wait(status: int, usage: object) -> ExitStatus:
    # ru_maxrss is KiB on Linux, bytes on macOS. It is the max over the wrapper and the agent
    # it waited for, and Linux carries the pre-exec high-water mark over exec, so it is at
    # least the supervisor's RSS at spawn time: an upper bound, not the agent's exact peak.
    maxrss = int(getattr(usage, "ru_maxrss", 0))
    rss = maxrss if sys.platform == "darwin" else maxrss * 1024
    if os.WIFSIGNALED(status):
        return ExitStatus(None, os.WTERMSIG(status), rss or None)
    return _from_rc(os.WEXITSTATUS(status), rss or None)


def _read_exit_file(path: Path) -> ExitStatus:
    try:
        rc = int(path.read_text(encoding="ascii", errors="replace").strip())
    except (OSError, ValueError):
        return _UNKNOWN
    return _from_rc(rc, None) if 0 <= rc <= 255 else _UNKNOWN


def _kill_cgroup(cgroup: AgentCgroup, skip: Collection[int]) -> list[int]:
    """SIGKILL every member of the agent's cgroup but ``skip``; the pids hit.

    v2: ``cgroup.kill``. v1: a pidfd per listed pid, then the list read again: a pid still
    listed is held by a process in our cgroup, and the pidfd names the process that held it
    when opened, so a pid reused meanwhile is never signalled (its pidfd answers ESRCH).
    """
    members = cgroup.members() - set(skip) - {os.getpid()}
    if not members or cgroup.kill():
        return sorted(members)
    fds = {pid: fd for pid in members if (fd := _open_pidfd(pid)) is not None}
    hit = []
    try:
        for pid in members & cgroup.members():
            try:
                if pid in fds and sys.platform == "linux":
                    signal.pidfd_send_signal(fds[pid], signal.SIGKILL)
                else:  # no pidfd (ENOSYS): the window is one list read wide
                    os.kill(pid, signal.SIGKILL)
                hit.append(pid)
            except (ProcessLookupError, PermissionError):
                continue
    finally:
        for fd in fds.values():
            os.close(fd)
    return sorted(hit)


# ---------------------------------------------------------------- agents


@dataclass(eq=False)  # identity-hashed: a Waiter keys on the object
class AgentProcess:
    """One agent: the wrapper (session and group leader) and everything it started.

    Build it with ``spawn`` (our child) or ``attach`` (re-adoption); ``poll`` and the
    signalling methods may be called from several threads.
    """

    pid: int
    pgid: int
    _identity: str
    started_mono: float
    log_path: Path
    run_dir: Path
    job_id: int
    attempt: int
    worker: str
    _child: bool = field(default=False, repr=False)
    _pidfd: int | None = field(default=None, repr=False)
    _limits: Limits | None = field(default=None, repr=False)
    _cgroup: AgentCgroup | None = field(default=None, repr=False)
    _enforced: str = field(default="", repr=False)
    _cgroups: Cgroups | None = field(default=None, repr=False)
    """The owner of our cgroup's removal (None: spawned without limits, no cgroup)."""
    _table: ProcessTable | None = field(default=None, repr=False)
    """The process-table snapshot shared with other agents' samplers."""
    _status: ExitStatus | None = field(default=None, init=False, repr=False)
    # Held while reaping and while signalling an unreaped child, so that the pid (and with it
    # the pgid) cannot be freed and reused between our check and killpg.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stats_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _sampler: TreeSampler | None = field(default=None, init=False, repr=False)
    _cpu_mark: tuple[float, int] | None = field(default=None, init=False, repr=False)
    _final_events: dict[str, int] | None = field(default=None, init=False, repr=False)

    @classmethod
    def attach(
        cls, *, pid: int, pgid: int, identity: str, started_mono: float, log_path: Path, run_dir: Path,
        job_id: int, attempt: int, worker: str, limits: Limits | None = None,
        cgroups: Cgroups | None = None, table: ProcessTable | None = None,
    ) -> AgentProcess:  # fmt: skip
        """Re-adopt an agent recorded earlier (e.g. by a supervisor that has since died).

        Its cgroup, if it lives in one of ours, is found again (stats, breach, removal on
        ``close``); without ``limits`` the memory and pids limits are read back from it.
        ``cgroups`` and ``table``: the caller's (``OsProcesses``), else fresh ones.
        """
        pidfd = _open_pidfd(pid)
        live = identity_of(pid) == identity
        if pidfd is not None and not live:
            os.close(pidfd)  # the pid now names another process: never watch it
            pidfd = None
        cgroups = cgroups if cgroups is not None else Cgroups()
        cgroup = cgroups.find(pid) if live and sys.platform == "linux" else None
        if cgroup is not None and limits is None:
            limits = Limits(memory_max_bytes=cgroup.memory_max, pids_max=cgroup.pids_max)
        enforced = describe(limits, cgroup, cgroups.enforcement) if limits is not None else ""
        return cls(
            pid, pgid, identity, started_mono, log_path, run_dir, job_id, attempt, worker,
            _pidfd=pidfd, _limits=limits, _cgroup=cgroup, _enforced=enforced, _cgroups=cgroups,
            _table=table,
        )  # fmt: skip

    @property
    def identity(self) -> str:
        """The kernel start identity ("" when it cannot be known). Our own child's is read on
        first use, not at spawn: reading ``/proc/<pid>/stat`` of a process that is still
        starting blocks for up to ~1 ms (measured), and many agents end before anyone needs
        it. An unreaped child's pid cannot be reused, so a late read names the same process;
        after the reap it is no longer needed."""
        if not self._identity and self._child:
            with self._lock:
                if not self._identity and self._status is None:
                    self._identity = identity_of(self.pid) or ""
        return self._identity

    @property
    def limits(self) -> Limits | None:
        """The limits this agent was started (or re-adopted) with; None: spawned without."""
        return self._limits

    @property
    def enforcement(self) -> str:
        """How this agent's limits are enforced, e.g. ``memory 200 MiB: cgroup-v1
        memory.limit_in_bytes; CPU time 2 s per process: RLIMIT_CPU``; "" without limits."""
        return self._enforced

    def limit_breach(self) -> str | None:
        """A one-line cause when the tree hit a limit (cgroup OOM kill, refused forks, SIGXCPU).

        Any time; after ``close`` from the counters read just before the cgroup was removed.
        A limit that only the supervisor's sampling enforces is the caller's to report.
        """
        if self._limits is None:
            return None
        events = self._final_events
        if events is None:
            cgroup = self._cgroup
            events = cgroup.events() if cgroup is not None else {}
        status = self._status
        return breach_of(self._limits, events, status.signal if status is not None else None)

    def tree_stats(self) -> TreeStats | None:
        """RSS, CPU % since the previous call, and process count of the whole tree; None once
        no process of it is left. cgroup counters where the agent has them (4 small reads,
        ~60 us measured on cgroup v1), else one /proc pass shared by all agents for 0.25 s
        (``proctable.TreeSampler``: ~1 ms per pass over 110 processes, ~60 us when shared)."""
        with self._stats_lock:
            cgroup = self._cgroup
            counters = cgroup.counters() if cgroup is not None else Counters(None, None, None)
            now = time.monotonic()
            if counters.tasks == 0:
                return None
            scanned = None
            if None in (counters.rss_bytes, counters.cpu_ns, counters.tasks):
                if self._sampler is None:
                    ticks = self.identity.rpartition(":")[2]
                    start = int(ticks) if self.identity.startswith("linux:") and ticks.isdigit() else None
                    tag = (str(self.job_id), str(self.attempt), self.worker)
                    table = self._table if self._table is not None else ProcessTable()
                    self._sampler = TreeSampler(self.pid, self.pgid, start, tag, self.started_mono, table)
                scanned = self._sampler.sample()
                if scanned is None:
                    return None
            percent = scanned.cpu_percent if scanned is not None else 0.0
            if counters.cpu_ns is not None:
                then, used = self._cpu_mark or (self.started_mono, 0)
                self._cpu_mark = (now, counters.cpu_ns)
                percent = max(0.0, (counters.cpu_ns - used) / 1e7 / (now - then)) if now > then else 0.0
            rss, tasks = counters.rss_bytes, counters.tasks
            if scanned is not None:
                rss = scanned.rss_bytes if rss is None else rss
                tasks = scanned.processes if tasks is None else tasks
            return TreeStats(rss or 0, percent, tasks or 0)

    @property
    def exit_file(self) -> Path:
        """Where the wrapper writes the agent's exit status."""
        return AttemptFiles(self.run_dir).exit

    @property
    def status(self) -> ExitStatus | None:
        """The cached result of the last successful ``poll``."""
        return self._status

    def poll(self, *, kill_remnants: bool = False) -> ExitStatus | None:
        """Non-blocking: the exit status once the wrapper has ended (reaped exactly once), else None.

        With ``kill_remnants``, whatever is left of the group (background children of a
        finished agent) is SIGKILLed in the same critical section as the reap: the kernel does
        not hand out a pid still in use as a process group id, so the group cannot have been
        reused yet — and it costs one killpg instead of a scan of every process.
        """
        with self._lock:
            if self._status is None:
                self._status = self._poll_child() if self._child else self._poll_adopted()
                if self._status is not None and kill_remnants and self._child:
                    _killpg(self.pgid, signal.SIGKILL)
            return self._status

    def _poll_child(self) -> ExitStatus | None:
        try:
            # WNOHANG never blocks; PEP 475 retries EINTR for us anyway.
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            # ECHILD: reaped behind our back (the host set SIGCHLD to SIG_IGN, or called
            # waitpid(-1)); the wrapper's exit file still tells the outcome.
            return _read_exit_file(self.exit_file)
        return None if pid == 0 else _from_wait(status, usage)

    def _poll_adopted(self) -> ExitStatus | None:
        found = _identity_and_zombie(self.pid)
        if found is not None and found[0] == self.identity:
            if not found[1]:
                return None  # still running
            # Our zombie, e.g. re-parented to us as a subreaper, or re-adopted in the same
            # process after a reload: reap it, the identity proves it is the same process.
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid = 0  # someone else's zombie (its parent or init will reap it)
            if pid == self.pid:
                return _from_wait(status, usage)
        return _read_exit_file(self.exit_file)

    def fileno(self) -> int | None:
        """A pidfd that turns readable when the wrapper exits (Linux >= 5.3), else None."""
        return self._pidfd

    def close(self) -> None:
        """Close the pidfd (unregister from any ``Waiter`` first) and, once the wrapper has
        ended, remove the agent's cgroup (rmdir only; a busy one is retried by later sweeps,
        never an error); idempotent. A still-running agent keeps its cgroup (re-adoption)."""
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)
        cgroup, owner = self._cgroup, self._cgroups
        if cgroup is not None and owner is not None and self._status is not None:
            self._final_events = cgroup.events()  # limit_breach() must outlive the cgroup
            self._cgroup = None
            owner.remove(cgroup)
        if owner is not None:
            owner.sweep()  # others that were busy at their close (cheap when none are)

    def _matches(self, env: Mapping[str, str]) -> bool:
        return (
            env.get(TAG_JOB) == str(self.job_id)
            and env.get(TAG_ATTEMPT) == str(self.attempt)
            and env.get(TAG_WORKER) == self.worker
        )

    def _tagged(self) -> list[tuple[int, str]]:
        out = []
        for pid, env in _iter_tagged_env():
            identity = identity_of(pid) if self._matches(env) else None
            if identity is not None:
                out.append((pid, identity))
        return out

    def _signal_group(self, sig: int, tagged: list[tuple[int, str]] | None) -> bool:
        with self._lock:
            if self._child and self._status is None:
                # An unreaped child pins its pid, hence the group id, until poll() (which takes
                # this lock) reaps it: the group cannot have been reused.
                return _killpg(self.pgid, sig)
        # Without a pidfd for groups a tiny window remains between this check and killpg; a
        # reuse inside it needs a full PID wrap-around in microseconds.
        if same_process(self.pid, self.identity) and _getpgid(self.pid) == self.pgid:
            return _killpg(self.pgid, sig)
        if tagged is None:
            tagged = self._tagged()
        if any(_getpgid(pid) == self.pgid for pid, _ in tagged):
            return _killpg(self.pgid, sig)
        return False  # the group is gone or belongs to someone else now

    def signal_group(self, sig: int) -> bool:
        """killpg(pgid, sig), only while the group still holds a process of ours; False otherwise."""
        return self._signal_group(sig, None)

    def kill_tree(self) -> list[int]:
        """SIGKILL the group and every live process tagged with this job/attempt/worker; the pids hit."""
        tagged = self._tagged()
        members = _group_members(self.pgid)
        hit: list[int] = []
        if self._signal_group(signal.SIGKILL, tagged):
            hit.extend(members or [self.pgid])
        for pid, identity in tagged:  # setsid escapees, and stragglers the group kill missed
            if pid not in hit and signal_process(pid, identity, signal.SIGKILL):
                hit.append(pid)
        cgroup = self._cgroup
        if cgroup is not None:  # escapees that also cleared their environment
            hit.extend(_kill_cgroup(cgroup, set(hit)))
        return sorted(hit)


_CAN_POSIX_SPAWN: Final = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_CLOSE")
_FD_DIR: Final = "/proc/self/fd" if sys.platform == "linux" else "/dev/fd"


def _inheritable_fds() -> list[int]:
    """Our descriptors above 2 that an exec would pass on. Python opens everything
    close-on-exec (PEP 446), so this is empty unless the host made one inheritable."""
    found = []
    for name in os.listdir(_FD_DIR):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # listdir's own descriptor, closed by now
                if os.get_inheritable(fd):
                    found.append(fd)
    return found


def _posix_spawn(args: list[str], env: Mapping[str, str], log_fd: int) -> int:
    """``args`` in a new session, stdin /dev/null, stdout/stderr onto ``log_fd``, with the
    signals Python ignores back at their defaults (as Popen does). It takes half of Popen's
    time (no error pipe, no Python in the child): the wrapper spawn is in every job's path."""
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, log_fd, 1),
        (os.POSIX_SPAWN_DUP2, log_fd, 2),
    ]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd != log_fd]
    return os.posix_spawn(args[0], args, env, file_actions=actions, setsid=True, setsigdef=_SIGDEF)


_SIGDEF: Final = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, n))


def _resolve(argv0: str, env: Mapping[str, str], cwd: str | None) -> str:
    if "/" in argv0:
        path = os.path.join(cwd, argv0) if cwd is not None else argv0
        if not os.path.exists(path):
            raise SpawnError(errno.ENOENT, f"command not found: {argv0}")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise SpawnError(errno.EACCES, f"command not executable: {argv0}")
        return argv0  # sh resolves a relative path after the chdir, like the check above
    search = env["PATH"] if "PATH" in env else os.environ.get("PATH", os.defpath)
    found = shutil.which(argv0, path=search)
    if found is not None:
        return found
    if any(os.path.isfile(os.path.join(d or ".", argv0)) for d in search.split(os.pathsep)):
        raise SpawnError(errno.EACCES, f"command not executable: {argv0}")
    raise SpawnError(errno.ENOENT, f"command not found: {argv0}")


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    run_dir: Path,
    log_path: Path,
    cwd: str | None = None,
    job_id: int,
    attempt: int,
    worker: str,
    limits: Limits | None = None,
    cgroups: Cgroups | None = None,
    table: ProcessTable | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> AgentProcess:
    """Start ``argv`` through the exit-status wrapper in a new session, output appended to ``log_path``.

    ``env`` is the agent's whole environment; ``AGENT_SUPERVISOR_EXIT_FILE`` is added, and the
    three tags are added when absent (ValueError when present with other values).
    ``limits`` (even an empty ``Limits()``): the agent gets its own cgroup where available
    (limits, exact statistics, ``kill_tree`` reach) and its rlimits, all in place before it
    can fork; a limit that cannot be applied degrades, never fails the spawn
    (``AgentProcess.enforcement`` says what is in force).
    Raises ``SpawnError`` (errno ENOENT, EACCES, or the OS's) when the agent cannot start.
    ``cgroups``, ``table``, ``clock``: the caller's (``OsProcesses``); by default fresh ones.
    """
    if not argv:
        raise SpawnError(errno.EINVAL, "empty command")
    tags = {TAG_JOB: str(job_id), TAG_ATTEMPT: str(attempt), TAG_WORKER: worker}
    for key, value in tags.items():
        if env.get(key, value) != value:
            raise ValueError(f"env {key}={env[key]!r} contradicts {value!r}")
    if cwd is not None and not os.path.isdir(cwd):
        raise SpawnError(errno.ENOENT, f"working directory not found: {cwd}")
    exe = _resolve(argv[0], env, cwd)
    exit_file = AttemptFiles(run_dir).exit
    full_env = {**tags, **env, EXIT_FILE_ENV: str(exit_file)}
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        exit_file.unlink(missing_ok=True)  # an earlier run's status must not pass for this one's
        # O_CLOEXEC in the parent; Popen dup2()s it onto the child's 1 and 2 only.
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SpawnError(exc.errno, f"cannot prepare {run_dir}: {exc.strerror}") from exc
    if limits is not None and cgroups is None:
        cgroups = Cgroups()
    setup = Setup.prepare(limits, job_id, attempt, worker, cgroups) if limits and cgroups else None
    args = [_SH, "-c", setup.script if setup else plain_wrapper(), WRAPPER_NAME, exe, *argv[1:]]
    proc: subprocess.Popen[bytes] | None = None
    try:
        if cwd is None and not (setup and setup.handshake) and _CAN_POSIX_SPAWN:
            pid = _posix_spawn(args, full_env, log_fd)
        else:
            # Popen for cwd and the cgroup handshake's stdin pipe, which os.posix_spawn lacks
            # on 3.11; close_fds closes everything but 0-2 in the child.
            proc = subprocess.Popen(
                args,
                env=full_env,
                cwd=cwd,
                stdin=subprocess.PIPE if setup and setup.handshake else subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                close_fds=True,
                start_new_session=True,
            )
            # We reap with wait4 ourselves. A Popen whose returncode is None would waitpid()
            # our child in __del__ or later via subprocess._cleanup()/_active, stealing its
            # status; a non-None returncode makes the object inert (Popen.__del__).
            proc.returncode = 0
            pid = proc.pid
    except OSError as exc:
        if setup is not None:
            setup.abandon()
        raise SpawnError(exc.errno, f"cannot start {argv[0]}: {exc.strerror}") from exc
    finally:
        os.close(log_fd)
    started = clock.monotonic()
    if setup is not None:
        # cgroups joined before the wrapper reads its line
        setup.start(pid, proc.stdin if proc is not None else None)
    return AgentProcess(
        pid, pid, "", started, log_path, run_dir, job_id, attempt, worker,
        _child=True, _pidfd=_open_pidfd(pid), _limits=limits,
        _cgroup=setup.cgroup if setup else None, _enforced=setup.describe() if setup else "",
        _cgroups=cgroups, _table=table,
    )  # fmt: skip


# ---------------------------------------------------------------- the seam


class OsProcesses:
    """The real ``supervisor.processes.Processes``: POSIX sessions and process groups, pidfds,
    cgroups where writable. It owns what its agents share: the cgroup bookkeeping
    (``Cgroups``: detection, busy removals, sweeps) and the process-table snapshot
    (``ProcessTable``) that samplers read. ``clock`` stamps each agent's start."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, *, cgroups: Cgroups | None = None) -> None:
        self._clock = clock
        self._cgroups = cgroups
        self._table = ProcessTable()

    @property
    def cgroups(self) -> Cgroups:
        """Detected on first use: a supervisor whose agents have no limits never pays for it."""
        if self._cgroups is None:
            self._cgroups = Cgroups()
        return self._cgroups

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        run_dir: Path,
        log_path: Path,
        cwd: str | None,
        job_id: int,
        attempt: int,
        worker: str,
        limits: Limits | None,
    ) -> AgentProcess:
        return spawn(
            argv, env=env, run_dir=run_dir, log_path=log_path, cwd=cwd, job_id=job_id, attempt=attempt,
            worker=worker, limits=limits, cgroups=self.cgroups if limits is not None else None,
            table=self._table, clock=self._clock,
        )  # fmt: skip

    def attach(
        self, *, pid: int, pgid: int, identity: str, started_mono: float, log_path: Path, run_dir: Path,
        job_id: int, attempt: int, worker: str, limits: Limits | None = None,
    ) -> AgentProcess:  # fmt: skip
        return AgentProcess.attach(
            pid=pid, pgid=pgid, identity=identity, started_mono=started_mono, log_path=log_path,
            run_dir=run_dir, job_id=job_id, attempt=attempt, worker=worker, limits=limits,
            cgroups=self.cgroups, table=self._table,
        )  # fmt: skip

    def waiter(self) -> Waiter:
        return Waiter()

    def scan_tagged(self, worker: str | None) -> list[TaggedProcess]:
        return scan_tagged(worker)

    def signal_process(self, pid: int, identity: str, sig: int) -> bool:
        return signal_process(pid, identity, sig)

    def same_process(self, pid: int, identity: str) -> bool:
        return same_process(pid, identity)

    def boot_id(self) -> str:
        return boot_id()

    def memory(self) -> tuple[int, int]:
        return memory()

    def load_per_cpu(self) -> float | None:
        try:
            return os.getloadavg()[0] / (os.cpu_count() or 1)
        except OSError:  # no load average on this system
            return None

    def enforcement(self) -> str:
        return self.cgroups.describe()

    def set_child_subreaper(self, enabled: bool) -> bool:
        return set_child_subreaper(enabled)

    def reap_orphans(self, keep: Collection[int]) -> list[int]:
        """``proctable.reap_orphans``, then retry removing agent cgroups that only the reaped
        zombies kept busy (a killed agent's children re-parented to us as the subreaper)."""
        reaped = proctable.reap_orphans(keep)
        if reaped and self._cgroups is not None:
            self._cgroups.sweep()
        return reaped
