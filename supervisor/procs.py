"""The OS process layer: ``OsProcesses`` (the ``Processes`` seam) and ``spawn``.

An agent runs as ``/bin/sh -c WRAPPER agent-supervisor-wrapper argv...`` in a new session, its
output appended straight to a log file (``supervisor.spawn`` starts it and documents why). The
wrapper (builtins only, so it works whatever PATH the agent gets) waits for the agent and
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

One agent is an ``AgentProcess`` (``supervisor.agentprocess``); starting its wrapper is
``supervisor.spawn``; identity, the env-tag scan and tree sampling live in
``supervisor.proctable``; ``Waiter`` in ``supervisor.waiting``; descendants that escape the
group in ``supervisor.escapees``. The names tests and callers use are re-exported here.

Windows is not supported: it has no process groups, sessions, ``killpg``, ``fork``/``wait4``
or POSIX signals, so nothing here could keep its promises; importing this module there raises
``ImportError`` with that message.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from supervisor import proctable
from supervisor import spawn as _spawn
from supervisor.agentprocess import AgentProcess
from supervisor.clock import SYSTEM_CLOCK, Clock
from supervisor.escapees import Escapes
from supervisor.limits import Cgroups
from supervisor.logcap import LogCap
from supervisor.processes import (
    TAG_ATTEMPT,
    TAG_JOB,
    TAG_WORKER,
    Agent,
    Escapee,
    ExitStatus,
    Limits,
    TaggedProcess,
    TreeStats,
)
from supervisor.proctable import (
    ProcessTable,
    _getpgid,
    _open_pidfd,
    boot_id,
    identity_of,
    memory,
    same_process,
    scan_tagged,
    set_child_subreaper,
    signal_process,
)
from supervisor.proctable import _group_members as _group_members  # tests reach it here
from supervisor.spawn import EXIT_FILE_ENV, WRAPPER_NAME
from supervisor.spawn import read_exit_file as _read_exit_file  # noqa: F401 - tests reach it here
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
    escapes: Escapes | None = None,
) -> AgentProcess:
    """Start ``argv`` through the exit-status wrapper in a new session, output appended to ``log_path``.

    ``env`` is the agent's whole environment; ``AGENT_SUPERVISOR_EXIT_FILE`` is added, and the
    three tags are added when absent (ValueError when present with other values).
    ``limits`` (even an empty ``Limits()``): the agent gets its own cgroup where available
    (limits, exact statistics, ``kill_tree`` reach) and its rlimits, all in place before it
    can fork; a limit that cannot be applied degrades, never fails the spawn
    (``AgentProcess.enforcement`` says what is in force).
    Raises ``SpawnError`` (errno ENOENT, EACCES, or the OS's) when the agent cannot start.
    ``cgroups``, ``table``, ``clock``, ``escapes``: the caller's (``OsProcesses``); by default
    fresh ones.
    """
    if limits is not None and cgroups is None:
        cgroups = Cgroups()
    table = table if table is not None else ProcessTable()
    started = _spawn.start(
        argv, env=env, run_dir=run_dir, log_path=log_path, cwd=cwd, job_id=job_id, attempt=attempt,
        worker=worker, limits=limits, cgroups=cgroups, clock=clock,
    )  # fmt: skip
    setup, pid = started.setup, started.pid
    return AgentProcess(
        pid, pid, "", started.started_mono, log_path, run_dir, job_id, attempt, worker,
        _child=True, _pidfd=_open_pidfd(pid), _limits=limits,
        _cgroup=setup.cgroup if setup else None, _enforced=setup.describe() if setup else "",
        _cgroups=cgroups, _table=table,
        _escapes=escapes if escapes is not None else Escapes(table, clock),
    )  # fmt: skip


# ---------------------------------------------------------------- the seam


class OsProcesses:
    """The real ``supervisor.processes.Processes``: POSIX sessions and process groups, pidfds,
    cgroups where writable. It owns what its agents share: the cgroup bookkeeping
    (``Cgroups``: detection, busy removals, sweeps), the process-table snapshot
    (``ProcessTable``) that samplers read, and the escapee bookkeeping (``Escapes``).
    ``clock`` stamps each agent's start and each escapee's SIGTERM."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, *, cgroups: Cgroups | None = None) -> None:
        self._clock = clock
        self._cgroups = cgroups
        self._table = ProcessTable()
        self.escapes = Escapes(self._table, clock)

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
            table=self._table, clock=self._clock, escapes=self.escapes,
        )  # fmt: skip

    def attach(
        self, *, pid: int, pgid: int, identity: str, started_mono: float, log_path: Path, run_dir: Path,
        job_id: int, attempt: int, worker: str, limits: Limits | None = None,
    ) -> AgentProcess:  # fmt: skip
        return AgentProcess.attach(
            pid=pid, pgid=pgid, identity=identity, started_mono=started_mono, log_path=log_path,
            run_dir=run_dir, job_id=job_id, attempt=attempt, worker=worker, limits=limits,
            cgroups=self.cgroups, table=self._table, escapes=self.escapes, clock=self._clock,
        )  # fmt: skip

    def waiter(self) -> Waiter:
        return Waiter()

    def scan_tagged(self, worker: str | None) -> list[TaggedProcess]:
        """Tagged processes, and (with ``worker``) the members of ``worker``'s agent cgroups,
        which a restart must find even when they cleared their environment."""
        return self._scan(worker, detect=True)

    def _scan(self, worker: str | None, *, detect: bool) -> list[TaggedProcess]:
        found = scan_tagged(worker)
        if worker is None or sys.platform != "linux" or (self._cgroups is None and not detect):
            return found
        known = {t.pid for t in found} | {os.getpid()}
        for (job_id, attempt), cgroup in sorted(self.cgroups.of_worker(worker).items()):
            for pid in sorted(cgroup.members() - known):
                if (identity := identity_of(pid)) is not None:
                    found.append(TaggedProcess(pid, identity, job_id, attempt, worker, _getpgid(pid)))
        return found

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
        """Also decides whether our live children count as escapees (``Escapes.subreaper``):
        only while this supervisor asked to be their subreaper."""
        done = set_child_subreaper(enabled)
        self.escapes.subreaper = enabled and done
        return done

    def escalation_due(self, grace_s: float) -> float | None:
        return self.escapes.next_due(grace_s)

    def orphans(self, worker: str, agents: Collection[Agent], *, grace_s: float) -> list[Escapee]:
        """See ``Processes.orphans``. As a subreaper, ``proctable.reap_orphans`` first, then a
        retry of agent cgroups that only the reaped zombies kept busy."""
        escapes = self.escapes
        reaped = proctable.reap_orphans({a.pid for a in agents}) if escapes.subreaper else []
        if reaped and self._cgroups is not None:
            self._cgroups.sweep()
        escapes.escalate(grace_s)
        children, tags = escapes.due(running=bool(agents), final=grace_s <= 0)
        if not (children or tags):
            return []
        scanned = self._scan(worker, detect=False) if tags else []
        return escapes.sweep(children, [(t.pid, t.identity, t.job_id, t.attempt) for t in scanned])
