"""One agent: its wrapper (session and group leader) and everything it started.

``AgentProcess`` is what ``supervisor.procs.spawn`` returns and ``attach`` re-adopts: the
``supervisor.processes.Agent`` of the real process layer. It reaps its wrapper exactly once
(``poll``), signals its group only while the group still holds a process of its own (an
unreaped child pins the group id; otherwise an identity check or a tagged member), kills its
whole tree (group, tag, cgroup, noted escapees), samples the tree, and names the limit it broke.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from supervisor.agentcgroup import AgentCgroup, Counters
from supervisor.clock import SYSTEM_CLOCK, Clock
from supervisor.datadir import AttemptFiles
from supervisor.escapees import Clues, Escapes, comm, holders
from supervisor.limits import Cgroups, breach_of, describe
from supervisor.processes import TAG_ATTEMPT, TAG_JOB, TAG_WORKER, Escapee, ExitStatus, Limits, TreeStats
from supervisor.proctable import (
    ProcessTable,
    TreeSampler,
    _getpgid,
    _group_members,
    _identity_and_zombie,
    _iter_tagged_env,
    _killpg,
    _open_pidfd,
    _read_stat,
    identity_of,
    same_process,
    signal_process,
)
from supervisor.spawn import UNKNOWN, from_wait, read_exit_file

__all__ = ["AgentProcess"]

_TAIL_BYTES: Final = 4096
"""How much of the log's end ``limit_breach`` reads for an allocation failure."""


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
            return f.read(_TAIL_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""


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
    _escapes: Escapes | None = field(default=None, repr=False)
    """The escapee bookkeeping shared with the other agents (``OsProcesses``)."""
    clues: Clues = field(init=False, repr=False)
    """What tells this agent's escapees from others' (``escapees.attribute``)."""
    _escaped: dict[int, Escapee] = field(default_factory=dict, init=False, repr=False)
    _status: ExitStatus | None = field(default=None, init=False, repr=False)
    # Held while reaping and while signalling an unreaped child, so that the pid (and with it
    # the pgid) cannot be freed and reused between our check and killpg.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stats_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _sampler: TreeSampler | None = field(default=None, init=False, repr=False)
    _cpu_mark: tuple[float, int] | None = field(default=None, init=False, repr=False)
    _final_events: dict[str, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        log_path, run_dir = str(self.log_path), str(self.run_dir)
        self.clues = Clues(self.job_id, self.attempt, self.worker, self.pgid, log_path, run_dir)
        if self._escapes is not None:
            self._escapes.register(self)

    @classmethod
    def attach(
        cls, *, pid: int, pgid: int, identity: str, started_mono: float, log_path: Path, run_dir: Path,
        job_id: int, attempt: int, worker: str, limits: Limits | None = None,
        cgroups: Cgroups | None = None, table: ProcessTable | None = None,
        escapes: Escapes | None = None, clock: Clock = SYSTEM_CLOCK,
    ) -> AgentProcess:  # fmt: skip
        """Re-adopt an agent recorded earlier (e.g. by a supervisor that has since died).

        Its cgroup, if it has one of ours, is found again (stats, breach, escapees, removal on
        ``close``): by the wrapper's membership while it lives, else by the agent's name, so
        that escapees of an agent that ended while no supervisor watched are still found.
        Without ``limits`` the memory, pids and CPU rate limits are read back from it.
        ``cgroups``, ``table``, ``escapes``: the caller's (``OsProcesses``), else fresh ones.
        """
        pidfd = _open_pidfd(pid)
        live = identity_of(pid) == identity
        if pidfd is not None and not live:
            os.close(pidfd)  # the pid now names another process: never watch it
            pidfd = None
        cgroups = cgroups if cgroups is not None else Cgroups()
        cgroup = None
        if sys.platform == "linux":  # a zombie wrapper has left its cgroup: then by name
            cgroup = (cgroups.find(pid) if live else None) or cgroups.named(job_id, attempt, worker)
        if cgroup is not None and limits is None:
            limits = Limits(
                memory_max_bytes=cgroup.memory_max, pids_max=cgroup.pids_max, cpu_max=cgroup.cpu_max
            )
        enforced = describe(limits, cgroup, cgroups.enforcement) if limits is not None else ""
        table = table if table is not None else ProcessTable()
        return cls(
            pid, pgid, identity, started_mono, log_path, run_dir, job_id, attempt, worker,
            _pidfd=pidfd, _limits=limits, _cgroup=cgroup, _enforced=enforced, _cgroups=cgroups,
            _table=table, _escapes=escapes if escapes is not None else Escapes(table, clock),
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
        """A one-line cause when the tree hit a limit (cgroup OOM kill, refused forks, SIGXCPU,
        an allocation failure under RLIMIT_AS reported in the last 4 KiB of the log).

        Any time; after ``close`` from the counters read just before the cgroup was removed.
        A limit that only the supervisor's sampling enforces is the caller's to report.
        """
        limits = self._limits
        if limits is None:
            return None
        events = self._final_events
        if events is None:
            cgroup = self._cgroup
            events = cgroup.events() if cgroup is not None else {}
        status = self._status or UNKNOWN
        failed = status.signal is not None or status.exit_code not in (0, None)
        tail = _log_tail(self.log_path) if limits.address_space_bytes is not None and failed else ""
        return breach_of(limits, events, status.signal, status.exit_code, tail)

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
                    self._sampler = TreeSampler(
                        self.pid, self.pgid, start, tag, self.started_mono, table, self.clues.seen
                    )
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
        reused yet — and it costs one killpg instead of a scan of every process. Escaped
        descendants (outside the group: its cgroup's other members, the escapees noted during
        its run, orphans of ours the clues tie to it, and for an adopted agent, which is no
        longer our child, its tagged processes and those holding its log open) get SIGTERM
        and are listed in ``ExitStatus.escaped``.
        """
        with self._lock:
            if self._status is None:
                status = self._poll_child() if self._child else self._poll_adopted()
                if status is not None and kill_remnants:
                    if self._child:
                        _killpg(self.pgid, signal.SIGKILL)
                    escapes = self._escapes or Escapes(self._table or ProcessTable(), SYSTEM_CLOCK)
                    escaped = escapes.at_end(self, self._remnants())
                    status = replace(status, escaped=escaped) if escaped else status
                self._status = status
            return self._status

    def recorded_exit(self) -> ExitStatus | None:
        """The agent's own end as the wrapper recorded it in its exit file; None when nothing is
        recorded (still running, or the wrapper was killed with its group)."""
        recorded = read_exit_file(self.exit_file)
        return None if recorded == UNKNOWN else recorded

    def _remnants(self) -> list[tuple[int, str, str]]:
        """(pid, identity, found by) of the processes of its cgroup, and of those its tree
        samples saw, outside the group just killed (no subreaper needed: a sample saw them
        before they left); for an adopted agent (no group kill, and no longer our child: its
        orphans went to init), its tagged processes and those still holding its log open."""
        out: list[tuple[int, str, str]] = []
        cgroup = self._cgroup
        if cgroup is not None:
            for pid in sorted(cgroup.members() - {self.pid, os.getpid()}):
                if not (self._child and _getpgid(pid) == self.pgid) and (ident := identity_of(pid)):
                    out.append((pid, ident, "cgroup"))
        known = {pid for pid, _, _ in out}
        for pid, start in sorted(self.clues.seen):  # seen in its tree by a sample, alive still
            stat = _read_stat(pid) if pid not in known and pid != self.pid else None
            if stat is None or stat.starttime != start or stat.state in ("Z", "X"):
                continue
            if not (self._child and stat.pgrp == self.pgid) and (ident := identity_of(pid)):
                known.add(pid)
                out.append((pid, ident, "tree sample"))
        if not self._child:
            for pid, ident in self._tagged():
                if pid not in known:
                    known.add(pid)
                    out.append((pid, ident, "env tag"))
            for pid, ident in holders(self.clues.real_paths[0]):
                if pid not in known:
                    out.append((pid, ident, "open file"))
        return out

    # -- escapees noted on this agent (``supervisor.escapees``) --------------------------
    def note(self, escapee: Escapee, *, update: bool = False) -> None:
        """Count ``escapee`` as this agent's (kept until it ends; reported at its end)."""
        if update or escapee.pid not in self._escaped:
            self._escaped[escapee.pid] = escapee
            with contextlib.suppress(OSError):  # ESRCH: gone already
                if os.getsid(escapee.pid) == escapee.pid:  # a setsid escapee: its children keep it
                    self.clues.sessions.add(escapee.pid)

    def escapees(self) -> list[Escapee]:
        """The escapees noted so far, oldest first."""
        return list(self._escaped.values())

    def escaped_pids(self) -> set[int]:
        return set(self._escaped)

    def _poll_child(self) -> ExitStatus | None:
        try:
            # WNOHANG never blocks; PEP 475 retries EINTR for us anyway.
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            # ECHILD: reaped behind our back (the host set SIGCHLD to SIG_IGN, or called
            # waitpid(-1)); the wrapper's exit file still tells the outcome.
            return read_exit_file(self.exit_file)
        return None if pid == 0 else from_wait(status, usage)

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
                return from_wait(status, usage)
        return read_exit_file(self.exit_file)

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
        if self._escapes is not None:
            self._escapes.forget(self)
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
        """SIGKILL the group, every live process tagged with this job/attempt/worker, its
        cgroup and its noted escapees; the pids hit. Those outside the group are noted as
        escapees (``ExitStatus.escaped``)."""
        tagged = self._tagged()
        members = _group_members(self.pgid)
        hit: list[int] = []
        if self._signal_group(signal.SIGKILL, tagged):
            hit.extend(members or [self.pgid])
        outside: list[tuple[int, str, str]] = []
        for pid, identity in tagged:  # setsid escapees, and stragglers the group kill missed
            if pid not in hit and signal_process(pid, identity, signal.SIGKILL):
                hit.append(pid)
                outside.append((pid, identity, "env tag"))
        for escapee in self.escapees():  # orphans the clues tied to us, env-cleared or not
            if escapee.pid not in hit and signal_process(escapee.pid, escapee.identity, signal.SIGKILL):
                hit.append(escapee.pid)
                self.note(replace(escapee, stopped_with="SIGKILL"), update=True)
        cgroup = self._cgroup
        if cgroup is not None:  # escapees that also cleared their environment
            killed = _kill_cgroup(cgroup, set(hit))
            hit.extend(killed)
            outside += [(pid, identity_of(pid) or "", "cgroup") for pid in killed]
        for pid, identity, found_by in outside:
            if pid not in members and pid not in self._escaped:
                name = comm(pid)
                self.note(Escapee(pid, identity, self.job_id, self.attempt, found_by, name, "SIGKILL"))
        return sorted(hit)
