"""Escaped descendants: processes that left an agent's tree, tied back to their job and stopped.

A grandchild that calls ``setsid`` (or a double fork into a new group) escapes the group kill,
and one that also clears its environment escapes the env-tag scan: it outlived its job every
time before this module (issue 11, fault F4). Three things still find it:

- **the subreaper**: with ``PR_SET_CHILD_SUBREAPER`` (the CLI's ``run`` and the stdio bridge
  set it) an orphaned descendant is re-parented to the supervisor (prctl(2)), so every live
  child of ours that is none of our wrappers, and not in our own session (processes we start
  ourselves for other work never leave it), is an escapee;
- **the agent's cgroup** (agents with limits): membership survives setsid, a double fork and
  a cleared environment, and a restart after a crash finds the cgroup by its name;
- **the env tag**, for escapees that kept their environment.

Each is tied to a job by the strongest clue at hand (``attribute``): its cgroup, its env tag, its
session (a double fork keeps the agent's session; a setsid escapee's children keep the
escapee's), the agent's tree samples that saw it before it left, or a descriptor it still holds
on the agent's log or run dir. An escapee of a running agent is noted on it and kept until the
agent ends (a daemon it started may be in use); at the agent's end it gets SIGTERM, and SIGKILL
once the stop grace has passed (``Escapes.escalate``, on later ticks: the loop never waits). An
escapee no running agent claims is stopped at once; when nothing names its job it is logged
and counted by the caller.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

from supervisor.agentcgroup import agent_name
from supervisor.clock import Clock
from supervisor.processes import Escapee
from supervisor.proctable import (
    OWN_CHILDREN,
    ProcessTable,
    _parse_row,
    identity_of,
    own_pids,
    same_process,
    signal_process,
)
from supervisor.spawn import WRAPPER_NAME

if TYPE_CHECKING:
    from supervisor.agentprocess import AgentProcess

__all__ = [
    "Candidate",
    "Clues",
    "Escapes",
    "attribute",
    "comm",
    "describe_candidate",
    "holders",
    "new_children",
]

_SCAN_EVERY_S: Final = 1.0
"""How often running agents' orphans are looked for (a pass over the process table)."""
_RECENT: Final = 64
"""Ended agents remembered to name escapees that appear after their outcome was recorded."""
_DIRECT_PIDS: Final = 256
"""Up to this many pids born since an agent started are read one by one at its end."""
_RECENT_S: Final = 30.0
"""How long after an agent's end its late escapees are still looked for."""
_KERNEL_LISTS_CHILDREN: Final = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
"""CONFIG_PROC_CHILDREN: the kernel lists each thread's children (not on this project's CI)."""


@dataclass(frozen=True)
class Candidate:
    """What /proc says about one process that may have escaped an agent."""

    pid: int
    starttime: int
    session: int
    name: str = ""
    tag: tuple[str, str, str] | None = None
    """(job, attempt, worker) from its environment, if it kept it."""
    cgroups: frozenset[str] = frozenset()
    """Names of the agent cgroups (``<job>-<attempt>-<worker>``) it is a member of."""
    files: tuple[str, ...] = ()
    """What its open descriptors point to."""


@dataclass
class Clues:
    """What is known of one agent, to recognise what came from it."""

    job_id: int
    attempt: int
    worker: str
    session: int
    """The wrapper's pid: the agent's session id (a pid is never reused while a session of
    that id exists)."""
    log_path: str
    run_dir: str
    sessions: set[int] = field(default_factory=set)
    """Sessions of its escapees that made their own (setsid: session == their pid)."""
    seen: set[tuple[int, int]] = field(default_factory=set)
    """(pid, starttime) of every process its tree samples saw."""
    ended_at: float | None = None
    """When its wrapper was reaped (the supervisor's monotonic clock); None while it runs."""

    @property
    def cgroup(self) -> str:
        """Its cgroup's name (``agentcgroup.agent_name``)."""
        return agent_name(self.job_id, self.attempt, self.worker)

    @functools.cached_property
    def real_paths(self) -> tuple[str, str]:
        """(log, run dir) resolved as /proc/<pid>/fd links show files; resolved only when an
        escapee needs it (realpath costs ~0.1 ms: not in every spawn)."""
        return os.path.realpath(self.log_path), os.path.realpath(self.run_dir)

    def holds(self, path: str) -> bool:
        """True when ``path`` (a descriptor's target) is its log or lies in its run dir."""
        log, run = self.real_paths
        return path == log or path.startswith(run + os.sep)


def attribute(c: Candidate, clues: Iterable[Clues]) -> tuple[Clues | None, str]:
    """The agent ``c`` came from and the clue that says so (``Escapee.found_by``), strongest
    clue first: the kernel's cgroup membership, the env tag, the session, a tree sample, an
    open descriptor on the agent's log or run dir. (None, "") when nothing names one."""
    clues = list(clues)

    def matches(found_by: str, k: Clues) -> bool:
        if found_by == "cgroup":
            return k.cgroup in c.cgroups
        if found_by == "env tag":
            return c.tag == (str(k.job_id), str(k.attempt), k.worker)
        if found_by == "session":
            return c.session == k.session or c.session in k.sessions
        if found_by == "tree sample":
            return (c.pid, c.starttime) in k.seen
        return any(k.holds(f) for f in c.files)

    for found_by in ("cgroup", "env tag", "session", "tree sample", "open file"):
        for k in clues:
            if matches(found_by, k):
                return k, found_by
    return None, ""


def describe_candidate(pid: int, starttime: int, session: int, table: ProcessTable) -> Candidate:
    """Read the rest of a candidate's clues from /proc (name, tag, cgroups, descriptors)."""
    name, cgroups, files = "", set(), []
    with contextlib.suppress(OSError), open(f"/proc/{pid}/comm", "rb") as f:
        name = f.read().decode("utf-8", "replace").strip()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cgroup", "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            _, _, path = line.partition(":")[2].partition(":")
            head, _, leaf = path.rpartition("/")
            if head.endswith("/agent-supervisor"):
                cgroups.add(leaf.rsplit(".", 1)[0] if leaf[-2:-1] == "." else leaf)
                cgroups.add(leaf)
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                files.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    tag = table.tag_of(pid, starttime)
    return Candidate(pid, starttime, session, name, tag, frozenset(cgroups), tuple(files))


# ---------------------------------------------------------------- /proc readers


def _last_pid() -> int | None:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def comm(pid: int) -> str:
    """The process's command name (``/proc/<pid>/comm``); "" when unknown."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:  # gone, or not Linux
        return ""


def holders(path: str) -> list[tuple[int, str]]:
    """(pid, identity) of this user's processes (but us) with a descriptor open on ``path``
    (Linux; one readlink per descriptor: a few ms for a few hundred processes, so only for
    rare events, such as an adopted agent's end)."""
    if sys.platform != "linux":
        return []
    found = []
    for pid in own_pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # ENOENT/ESRCH: gone; EACCES: not ours
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != path:
                    continue
            except OSError:
                continue
            if (identity := identity_of(pid)) is not None:
                found.append((pid, identity))
            break
    return found


def _is_wrapper(pid: int) -> bool:
    """True for an agent wrapper (``sh -c ... agent-supervisor-wrapper``), even another
    supervisor's in this process: never an escapee, even when no agent of ours names it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"\0" + WRAPPER_NAME.encode() + b"\0" in f.read()
    except OSError:
        return False


def _leader(pid: int) -> bool:
    """True when ``pid`` is a process, not another thread of one: /proc/<tid>/stat answers
    for any thread id, though /proc lists only processes."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1]) == pid
    except (OSError, ValueError, IndexError):
        pass
    return False


def _children_listed() -> list[int] | None:
    """Our children as the kernel lists them per thread (``/proc/self/task/<tid>/children``,
    CONFIG_PROC_CHILDREN: most distribution kernels), re-parented orphans included: a few
    small reads. None where the kernel lacks the file."""
    if not _KERNEL_LISTS_CHILDREN:
        return None
    pids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/self/task/{tid}/children", "rb") as f:
            pids.extend(int(p) for p in f.read().split())  # OSError: a thread ended meanwhile
    return pids


def new_children(after: int) -> list[tuple[int, int, int]]:
    """(pid, starttime, session) of our live children, at least those created after process
    ``after`` (cheaply; more may be returned).

    Where the kernel lists children (``_children_listed``) those are read. Elsewhere: Linux
    hands out pids in increasing order, wrapping at pid_max (kernel/pid.c), so a process born
    after ``after`` has a pid in the cyclic interval (after, ns_last_pid]. A short interval (an
    agent's end at a busy supervisor) is read pid by pid, ~3 us for a pid not in use, without
    listing /proc (40-140 us measured); a long or wrapped one filters the listing (~1 ms on a
    loaded machine). A full wrap-around during the agent's life hides some: the periodic pass
    over the whole table finds them.
    """
    last, me = _last_pid(), os.getpid()
    listed = _children_listed()
    pids: Iterable[int]
    if listed is not None:
        pids = listed
    elif last is not None and 0 <= last - after <= _DIRECT_PIDS:
        pids = range(after + 1, last + 1)
    else:
        every = (int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
        if last is None:
            pids = every
        else:
            pids = (p for p in every if (after < p <= last if after <= last else p > after or p <= last))
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                row = _parse_row(f.read())
        except (OSError, ValueError, IndexError):  # ENOENT: no such pid; ESRCH: gone meanwhile
            continue
        if row.ppid == me and not row.zombie and (listed is not None or _leader(pid)):
            found.append((pid, row.starttime, row.session))
    return found


# ---------------------------------------------------------------- bookkeeping


class Escapes:
    """The escapee bookkeeping of one ``OsProcesses``: the agents that may leave escapees, the
    stops under way, and the clues of recently ended agents. ``subreaper``: set when this
    process asked to be the subreaper (``OsProcesses.set_child_subreaper``); only then are its
    children taken for escapees (a host's own children in a new session must never be)."""

    def __init__(self, table: ProcessTable, clock: Clock) -> None:
        self.table = table
        self._clock = clock
        self.subreaper = False
        self._lock = threading.Lock()
        self._agents: weakref.WeakSet[AgentProcess] = weakref.WeakSet()
        self._stopping: dict[tuple[int, str], float] = {}  # (pid, identity) -> SIGTERM sent at
        self._reported: set[tuple[int, str]] = set()
        self._recent: deque[Clues] = deque(maxlen=_RECENT)
        self._next_scan = self._next_tags = 0.0
        self._ended = False

    # -- agents come and go --------------------------------------------------------------
    def register(self, agent: AgentProcess) -> None:
        """Watch for ``agent``'s escapees until it ends (spawn and attach call this)."""
        with self._lock:
            self._agents.add(agent)

    def forget(self, agent: AgentProcess) -> None:
        """``agent`` is closed: no longer a source of escapees."""
        with self._lock:
            self._agents.discard(agent)

    def _ended_now(self, agent: AgentProcess) -> None:
        agent.clues.ended_at = self._clock.monotonic()
        with self._lock:
            self._agents.discard(agent)
            self._recent.append(agent.clues)
            self._ended = True

    def _live(self) -> list[AgentProcess]:
        with self._lock:
            return list(self._agents)

    # -- stopping ------------------------------------------------------------------------
    def stop(self, escapee: Escapee) -> Escapee:
        """SIGTERM it (identity-checked), to be escalated by ``escalate``; its record with the
        signal sent (unchanged when it is gone already or not ours to signal)."""
        key = (escapee.pid, escapee.identity)
        with self._lock:
            if key in self._stopping:
                return escapee
        if not signal_process(escapee.pid, escapee.identity, signal.SIGTERM):
            return escapee
        with self._lock:
            self._stopping[key] = self._clock.monotonic()
        return replace(escapee, stopped_with="SIGTERM")

    def escalate(self, grace_s: float) -> list[int]:
        """SIGKILL the stopped escapees still alive ``grace_s`` after their SIGTERM, and forget
        the ones that are gone; the pids killed."""
        now = self._clock.monotonic()
        with self._lock:
            stopping = list(self._stopping.items())
        killed, done = [], []
        for (pid, identity), term_at in stopping:
            if not same_process(pid, identity):
                done.append((pid, identity))
            elif now - term_at >= grace_s:
                done.append((pid, identity))
                if signal_process(pid, identity, signal.SIGKILL):
                    killed.append(pid)
        with self._lock:
            for key in done:
                self._stopping.pop(key, None)
        return killed

    def next_due(self, grace_s: float) -> float | None:
        """When the earliest SIGTERM sent becomes due its SIGKILL (``escalate``), or a tag scan
        an agent's end asked for becomes due (``due``); None if neither."""
        with self._lock:
            times = [min(self._stopping.values()) + grace_s] if self._stopping else []
            if self._ended:
                times.append(self._next_tags)
            return min(times) if times else None

    @property
    def stopping(self) -> int:
        """Escapees sent SIGTERM and not yet seen gone."""
        with self._lock:
            return len(self._stopping)

    # -- finding -------------------------------------------------------------------------
    def _candidates(self, rows: Iterable[tuple[int, int, int]]) -> list[tuple[Candidate, str]]:
        """(candidate, identity) for each (pid, starttime, session) of a live child of ours
        that is none of our wrappers, not in our own session, not one this process started for
        its own work (``OWN_CHILDREN``: git runs in a new session), and not already noted,
        stopped or reported."""
        live = self._live()
        wrappers = {a.pid for a in live}
        noted = {pid for a in live for pid in a.escaped_pids()}
        own = os.getsid(0)
        rows = list(rows)  # read before ``held``: a child being started meanwhile is marked by then
        with OWN_CHILDREN.held() as helpers:
            wrappers |= helpers
        out = []
        for pid, starttime, session in rows:
            if pid in wrappers or pid in noted or session == own or _is_wrapper(pid):
                continue
            identity = identity_of(pid)
            with self._lock:
                known = (pid, identity) in self._stopping or (pid, identity) in self._reported
            if identity is not None and not known:
                out.append((describe_candidate(pid, starttime, session, self.table), identity))
        return out

    def at_end(self, agent: AgentProcess, members: Iterable[tuple[int, str, str]]) -> tuple[Escapee, ...]:
        """All of ``agent``'s escapees as its wrapper is reaped: ``members`` (pid, identity,
        found_by) from its cgroup or tag, the escapees noted during its run, and (as a
        subreaper) orphans of ours born since it started that the clues tie to it. Each one
        still alive gets SIGTERM now; the escalation comes from later ``escalate`` calls."""
        for pid, identity, found_by in members:
            agent.note(Escapee(pid, identity, agent.job_id, agent.attempt, found_by, comm(pid)))
        if self.subreaper:
            live = [agent, *(a for a in self._live() if a is not agent)]
            owners = {id(a.clues): a for a in live}
            for c, identity in self._candidates(new_children(agent.pid)):
                clues, found_by = attribute(c, [a.clues for a in live])
                if clues is not None:
                    owners[id(clues)].note(
                        Escapee(c.pid, identity, clues.job_id, clues.attempt, found_by, c.name)
                    )
        out = []
        for escapee in agent.escapees():
            if escapee.stopped_with is None and same_process(escapee.pid, escapee.identity):
                escapee = self.stop(escapee)
                agent.note(escapee, update=True)
            out.append(escapee)
        self._ended_now(agent)
        return tuple(out)

    def sweep(self, children: bool, tagged: Iterable[tuple[int, str, int, int]]) -> list[Escapee]:
        """The periodic pass (``OsProcesses.orphans``): a child of ours (as a subreaper) that the
        clues tie to a running agent is noted on it; any other, and every ``tagged`` process
        (pid, identity, job, attempt) of no running agent, gets SIGTERM. The escapees stopped."""
        now = self._clock.monotonic()
        live = self._live()
        owners = {id(a.clues): a for a in live}
        with self._lock:
            recent = [k for k in self._recent if k.ended_at is not None and now - k.ended_at < _RECENT_S]
        found: list[Escapee] = []
        if children and self.subreaper:
            for c, identity in self._candidates(self._children()):
                clues, found_by = attribute(c, [*(a.clues for a in live), *recent])
                job_id, attempt = (clues.job_id, clues.attempt) if clues is not None else (None, None)
                escapee = Escapee(c.pid, identity, job_id, attempt, found_by, c.name)
                if clues is not None and id(clues) in owners:
                    owners[id(clues)].note(escapee)
                else:
                    found.append(self._report(self.stop(escapee)))
        running = {(a.job_id, a.attempt) for a in live}
        for pid, identity, job_id, attempt in tagged:
            with self._lock:
                known = (pid, identity) in self._stopping or (pid, identity) in self._reported
            if (job_id, attempt) not in running and not known:
                escapee = Escapee(pid, identity, job_id, attempt, "env tag", comm(pid))
                found.append(self._report(self.stop(escapee)))
        return found

    def _children(self) -> list[tuple[int, int, int]]:
        """(pid, starttime, session) of all our live children: listed by the kernel where it
        can, else from the shared process table (one pass over /proc, at most 0.25 s old)."""
        if _KERNEL_LISTS_CHILDREN:
            return new_children(0)
        _, rows = self.table.rows()
        me = os.getpid()
        return [(p, r.starttime, r.session) for p, r in rows.items() if r.ppid == me and not r.zombie]

    def _report(self, escapee: Escapee) -> Escapee:
        with self._lock:
            self._reported.add((escapee.pid, escapee.identity))
            reported = list(self._reported) if len(self._reported) > 4 * _RECENT else None
        if reported is not None:  # forget the dead: bounded memory
            alive = {k for k in reported if same_process(*k)}
            with self._lock:
                self._reported &= alive
        return escapee

    def due(self, running: bool, *, final: bool = False) -> tuple[bool, bool]:
        """(look at our children, look for tags) now? Children at most once a second, while
        agents run or one ended in the last ``_RECENT_S``; tags when an agent ended since the
        last tag scan, at most once a second (a tag scan reads every process's environment:
        ~5 ms for 470 processes). ``final`` (the supervisor is closing: no later call): both
        now, if there is anything to look for."""
        now = self._clock.monotonic()
        with self._lock:
            recent = any(k.ended_at is not None and now - k.ended_at < _RECENT_S for k in self._recent)
            children = (running or recent) and (final or now >= self._next_scan)
            tags = self._ended and (final or now >= self._next_tags)
            if children:
                self._next_scan = now + _SCAN_EVERY_S
            if tags:
                self._next_tags, self._ended = now + _SCAN_EVERY_S, False
            return children, tags
