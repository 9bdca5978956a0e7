"""The seam between the supervisor loop and the operating system: ``Processes``.

Everything the loop, recovery and admission need from the OS goes through this one narrow
protocol (the httpx ``BaseTransport`` idea): start an agent, find one again, wait for exits,
signal a group, kill a tree, scan for processes carrying our tag, read the machine's memory,
load and boot id. ``supervisor.procs.OsProcesses`` is the real thing (POSIX process groups,
pidfds, cgroups); ``supervisor.testing.FakeProcesses`` runs "agents" on a ``ManualClock`` so
that every behaviour of the loop can be unit-tested without a process or a sleep.

The value types both sides share live here too: ``ExitStatus``, ``Escapee``,
``TaggedProcess``, ``Limits`` and ``TreeStats``, and the names of the env tags every agent
carries.
"""

from __future__ import annotations

import signal
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

__all__ = [
    "TAG_ATTEMPT",
    "TAG_JOB",
    "TAG_WORKER",
    "Agent",
    "Escapee",
    "ExitStatus",
    "Limits",
    "Processes",
    "TaggedProcess",
    "TreeStats",
    "Waiter",
    "describe_end",
]

TAG_JOB: Final = "AGENT_SUPERVISOR_JOB_ID"
TAG_ATTEMPT: Final = "AGENT_SUPERVISOR_ATTEMPT"
TAG_WORKER: Final = "AGENT_SUPERVISOR_WORKER"
"""Every agent's environment carries these three: they name its job, attempt and worker, and
let a later supervisor find descendants that escaped the agent's process group."""


def describe_end(exit_code: int | None, signal_number: int | None) -> str:
    """``"exit code 3"``, ``"killed by SIGKILL"`` or ``"exit status unknown"``."""
    if signal_number is not None:
        try:
            return f"killed by {signal.Signals(signal_number).name}"
        except ValueError:
            return f"killed by signal {signal_number}"
    if exit_code is not None:
        return f"exit code {exit_code}"
    return "exit status unknown"


@dataclass(frozen=True)
class Escapee:
    """A process that left an agent's tree (``setsid``, a double fork) and so escapes the group
    kill: found as the subreaper's orphan, in the agent's cgroup, or by the env tag."""

    pid: int
    identity: str
    job_id: int | None
    """The job it came from; None when nothing could name it."""
    attempt: int | None
    found_by: str
    """What tied it to the job: ``cgroup``, ``env tag``, ``session``, ``tree sample``,
    ``open file``, ``process group`` (a remnant of an adopted agent); "" when nothing did."""
    name: str
    """Its command name (``comm``), for people reading the facts."""
    stopped_with: str | None = None
    """The first signal it got (``SIGTERM``, ``SIGKILL``); None while it is kept with its
    running agent."""

    def fact(self) -> dict[str, Any]:
        """The record kept in the job's event facts (``escaped``)."""
        return {"pid": self.pid, "name": self.name, "found_by": self.found_by, "signal": self.stopped_with}


@dataclass(frozen=True)
class ExitStatus:
    """How an agent ended; all None when the outcome is unknown (e.g. no exit file)."""

    exit_code: int | None
    signal: int | None
    peak_rss_bytes: int | None
    escaped: tuple[Escapee, ...] = ()
    """Processes of its tree that escaped its group and were still alive when it ended (or
    seen earlier): stopped with it (SIGTERM, then SIGKILL after the stop grace)."""

    def describe(self) -> str:
        """``"exit code 3"``, ``"killed by SIGKILL"`` or ``"exit status unknown"``."""
        return describe_end(self.exit_code, self.signal)


@dataclass(frozen=True)
class TaggedProcess:
    """A live process of the current user whose environment carries our job tag."""

    pid: int
    identity: str
    job_id: int
    attempt: int
    worker: str
    pgid: int | None = None  # lets reconciliation tell the wrapper (pid == pgid) apart


@dataclass(frozen=True)
class Limits:
    """What one agent's tree may use; None means no limit (``supervisor.limits`` says how
    each is enforced)."""

    memory_max_bytes: int | None = None
    pids_max: int | None = None
    cpu_time_s: float | None = None
    address_space_bytes: int | None = None
    cpu_max: float | None = None
    """A CPU rate cap for the whole tree, in CPUs (``docker --cpus``)."""

    def any(self) -> bool:
        """True when at least one limit is set."""
        values = (
            self.memory_max_bytes,
            self.pids_max,
            self.cpu_time_s,
            self.address_space_bytes,
            self.cpu_max,
        )
        return any(v is not None for v in values)


@dataclass(frozen=True)
class TreeStats:
    """One sample of an agent's whole tree."""

    rss_bytes: int
    """cgroup: usage minus inactive page cache (as ``docker stats``); else the sum of RSS."""
    cpu_percent: float
    """CPU time used since the previous sample over wall time, in percent of one CPU."""
    processes: int
    """cgroup: pids.current (tasks, threads included: what pids.max limits); else processes."""


class Agent(Protocol):
    """One running agent: its wrapper (session and group leader) and everything it started."""

    pid: int
    pgid: int
    started_mono: float
    """The supervisor's monotonic clock when the agent was spawned."""

    @property
    def identity(self) -> str:
        """The kernel start identity ("" when it cannot be known)."""
        ...

    @property
    def enforcement(self) -> str:
        """How this agent's limits are enforced, in one line ("" without limits)."""
        ...

    def poll(self, *, kill_remnants: bool = False) -> ExitStatus | None:
        """The exit status once the wrapper has ended, else None; never blocks. With
        ``kill_remnants`` whatever is left of its group is killed as it is reaped, and its
        escaped descendants get SIGTERM (``ExitStatus.escaped``; ``Processes.orphans``
        escalates to SIGKILL after the grace)."""
        ...

    def recorded_exit(self) -> ExitStatus | None:
        """What the wrapper recorded of the agent's own end (its exit file); None when nothing
        is recorded: still running, or the wrapper itself was killed (SIGKILL to the group)."""
        ...

    def signal_group(self, sig: int) -> bool:
        """Signal the agent's process group while it still holds a process of ours."""
        ...

    def kill_tree(self) -> list[int]:
        """SIGKILL the group and every process carrying this attempt's tag; the pids hit."""
        ...

    def tree_stats(self) -> TreeStats | None:
        """RSS, CPU % since the previous call and process count of the tree; None once gone."""
        ...

    def limit_breach(self) -> str | None:
        """A one-line cause when the tree hit a kernel-enforced limit, else None."""
        ...

    def fileno(self) -> int | None:
        """A descriptor that turns readable when the agent exits (a pidfd), or None."""
        ...

    def close(self) -> None:
        """Release what watching it holds (a pidfd, an empty cgroup); idempotent."""
        ...


class Waiter(Protocol):
    """One place for the loop to block: until ``wake()``, a registered agent's exit, or a timeout."""

    def register(self, agent: Agent) -> None: ...

    def unregister(self, agent: Agent) -> None: ...

    def wake(self) -> None:
        """Make the current or next ``wait`` return; safe from any thread or a signal handler."""
        ...

    def wait(self, timeout: float | None) -> None: ...

    def close(self) -> None: ...


class Processes(Protocol):
    """What the supervisor needs from the operating system (see the module docstring)."""

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
    ) -> Agent:
        """Start ``argv`` as an agent in a new session, output appended to ``log_path``;
        ``SpawnError`` when it cannot start."""
        ...

    def attach(
        self,
        *,
        pid: int,
        pgid: int,
        identity: str,
        started_mono: float,
        log_path: Path,
        run_dir: Path,
        job_id: int,
        attempt: int,
        worker: str,
        limits: Limits | None = None,
    ) -> Agent:
        """Find an agent recorded earlier (a previous supervisor's) to watch it again."""
        ...

    def waiter(self) -> Waiter:
        """A new ``Waiter`` (the caller closes it)."""
        ...

    def scan_tagged(self, worker: str | None) -> list[TaggedProcess]:
        """Live processes of this user carrying our tag (of ``worker``'s agents, if given), and
        with ``worker`` those in its agents' cgroups too: a restart must find escapees that
        cleared their environment."""
        ...

    def signal_process(self, pid: int, identity: str, sig: int) -> bool:
        """Send ``sig`` to ``pid`` only if it still is ``identity``; True if sent."""
        ...

    def same_process(self, pid: int, identity: str) -> bool:
        """True when ``pid`` is alive and is the very process ``identity`` names."""
        ...

    def boot_id(self) -> str:
        """This boot's id: after a reboot every recorded agent is dead."""
        ...

    def memory(self) -> tuple[int, int]:
        """(available, total) bytes of memory."""
        ...

    def load_per_cpu(self) -> float | None:
        """The 1-minute load average per CPU, or None where unknown."""
        ...

    def enforcement(self) -> str:
        """How per-agent limits are enforced on this machine, in one line."""
        ...

    def set_child_subreaper(self, enabled: bool) -> bool:
        """Make escaped descendants re-parent to this process; False where unsupported."""
        ...

    def orphans(self, worker: str, agents: Collection[Agent], *, grace_s: float) -> list[Escapee]:
        """One pass for escaped descendants; call it every tick (cheap when nothing is due).

        As a subreaper: reap exited children that are not ``agents``' wrappers, and look at the
        live ones (orphans re-parented to us). An escapee tied to one of ``agents`` is noted on
        it (its ``ExitStatus.escaped``) and kept until it ends; any other (an ended attempt's,
        one carrying ``worker``'s tag of no running attempt, or one nothing names) gets SIGTERM
        now. Stops begun earlier (here or at an agent's end) get SIGKILL once ``grace_s`` has
        passed. ``grace_s`` 0 means the supervisor is closing: every look due is taken now.
        Returns the escapees found by this call that no running agent kept.
        """
        ...

    def escalation_due(self, grace_s: float) -> float | None:
        """When (monotonic) ``orphans`` next has work: an escapee sent SIGTERM due its SIGKILL,
        or a look for escapees an agent's end asked for; None when neither. The loop wakes for
        it (``AgentPool.next_due``)."""
        ...
