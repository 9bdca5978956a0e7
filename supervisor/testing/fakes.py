"""``FakeProcesses``: the ``supervisor.processes.Processes`` seam without an operating system.

Agents are ``FakeAgent`` objects on a ``ManualClock``. Each follows a ``Behaviour``: it exits
by itself after ``runtime_s`` with ``exit_code`` (or runs until stopped), obeys or ignores
SIGTERM, dies on SIGKILL, reports a resource sample, and writes its exit file and result file
where the real wrapper and agent would (no exit file when its whole group is SIGKILLed, as the
real wrapper dies too), so that recovery and outcome code read them as usual. An agent may
leave an escaped descendant (``Behaviour.escapes``), and ``FakeProcesses.stray`` makes an
orphan that ``orphans`` reports once.
``FakeWaiter.wait`` does not sleep: it moves the clock to the earlier of its timeout and the
next agent exit, so ``Supervisor.run`` advances simulated time as fast as the loop can tick.
Everything is recorded for assertions: ``spawned``, each agent's ``signals``, the waiter's
``waits``.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import signal
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.datadir import AttemptFiles
from supervisor.errors import SpawnError
from supervisor.processes import Agent, Escapee, ExitStatus, Limits, TaggedProcess, TreeStats
from supervisor.testing.memory import ManualClock

__all__ = ["Behaviour", "FakeAgent", "FakeProcesses", "FakeWaiter"]

_NO_RESULT: Any = object()


@dataclass(frozen=True)
class Behaviour:
    """What a fake agent does."""

    runtime_s: float | None = None
    """It exits by itself this long after its start (None: it runs until it is stopped)."""
    exit_code: int = 0
    ignores_term: bool = False
    """SIGTERM does nothing; only SIGKILL ends it."""
    result: Any = _NO_RESULT
    """JSON written to its result file when it exits 0."""
    output: str = ""
    """Written to its log file when it starts."""
    rss_bytes: int = 10 << 20
    breach: str | None = None
    """A kernel-enforced limit it hits (``Agent.limit_breach``)."""
    spawn_errno: int | None = None
    """The spawn fails with ``SpawnError`` of this errno (ENOENT: no such command)."""
    escapes: bool = False
    """It leaves a descendant that escaped its group; the real layer reports it in
    ``ExitStatus.escaped`` (stopped with SIGTERM), and so does the fake."""


class FakeAgent:
    """One fake agent (the ``supervisor.processes.Agent`` protocol)."""

    def __init__(
        self,
        fake: FakeProcesses,
        *,
        pid: int,
        job_id: int,
        attempt: int,
        worker: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        run_dir: Path,
        cwd: str | None,
        limits: Limits | None,
        behaviour: Behaviour,
        started_mono: float,
    ) -> None:
        self._fake = fake
        self.pid = self.pgid = pid
        self.job_id, self.attempt, self.worker = job_id, attempt, worker
        self.argv, self.env, self.cwd, self.limits = list(argv), dict(env), cwd, limits
        self.log_path, self.run_dir = log_path, run_dir
        self.behaviour = behaviour
        self.started_mono = started_mono
        self.signals: list[tuple[str, float]] = []
        """(signal name, clock time) of every signal sent to it, in order."""
        self.status: ExitStatus | None = None
        self.closed = False
        self.adopted = False
        """Attached by a later supervisor (not its child): a killed wrapper's status is unknown."""

    @property
    def identity(self) -> str:
        return f"fake:{self.pid}"

    @property
    def enforcement(self) -> str:
        return ""

    @property
    def exits_at(self) -> float:
        """When it will exit by itself (infinite: only a signal ends it)."""
        if self.status is not None:
            return -math.inf
        runtime = self.behaviour.runtime_s
        return math.inf if runtime is None else self.started_mono + runtime

    @property
    def alive(self) -> bool:
        self.poll()
        return self.status is None

    def poll(self, *, kill_remnants: bool = False) -> ExitStatus | None:
        if self.status is None and self._fake.clock.monotonic() >= self.exits_at:
            self.exit(self.behaviour.exit_code)
        return self.status

    def exit(self, code: int | None = None, sig: int | None = None, *, wrapper_killed: bool = False) -> None:
        """End it now, as the wrapper would record it (exit file, result file); with
        ``wrapper_killed`` (SIGKILL to the whole group) the wrapper records nothing, and an
        adopted agent's status is then unknown, as the real one's is."""
        if self.status is not None:
            return
        escaped: tuple[Escapee, ...] = ()
        if self.behaviour.escapes:
            pid = self.pid + 500_000
            escaped = (Escapee(pid, f"fake:{pid}", self.job_id, self.attempt, "session", "sleep", "SIGTERM"),)
        known = not (wrapper_killed and self.adopted)
        self.status = ExitStatus(code if known else None, sig if known else None, None, escaped)
        if self._fake.on_exit is not None:
            self._fake.on_exit(self)
        files = AttemptFiles(self.run_dir)
        if code == 0 and self.behaviour.result is not _NO_RESULT:
            files.result.write_text(json.dumps(self.behaviour.result))
        if not wrapper_killed:
            rc = code if code is not None else 128 + (sig or 0)
            files.exit.write_text(str(rc))

    def recorded_exit(self) -> ExitStatus | None:
        try:
            rc = int(AttemptFiles(self.run_dir).exit.read_text())
        except (OSError, ValueError):
            return None
        return ExitStatus(rc, None, None) if rc < 128 else ExitStatus(None, rc - 128, None)

    def signal_group(self, sig: int) -> bool:
        self.signals.append((signal.Signals(sig).name, self._fake.clock.monotonic()))
        if self.poll() is not None:
            return False
        if sig == signal.SIGKILL:
            self.exit(sig=sig, wrapper_killed=True)
        elif sig == signal.SIGTERM and not self.behaviour.ignores_term:
            self.exit(sig=sig)
        return True

    def kill_tree(self) -> list[int]:
        self.signals.append(("SIGKILL", self._fake.clock.monotonic()))
        if self.poll() is not None:
            return []
        self.exit(sig=signal.SIGKILL, wrapper_killed=True)
        return [self.pid]

    def tree_stats(self) -> TreeStats | None:
        return None if self.poll() is not None else TreeStats(self.behaviour.rss_bytes, 0.0, 1)

    def limit_breach(self) -> str | None:
        return self.behaviour.breach

    def write(self, text: str) -> None:
        """Append output to its log (an agent that is not idle)."""
        with self.log_path.open("a") as f:
            f.write(text)

    def fileno(self) -> int | None:
        return None

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"FakeAgent(job {self.job_id} attempt {self.attempt}, pid {self.pid}, {self.status})"


class FakeWaiter:
    """The ``Waiter`` protocol on the manual clock: ``wait`` moves time instead of sleeping."""

    def __init__(self, fake: FakeProcesses) -> None:
        self._fake = fake
        self._agents: set[FakeAgent] = set()
        self._woken = False
        self.waits: list[float | None] = []
        """Every timeout the loop asked to wait (None: without a limit)."""
        self.closed = False

    def register(self, agent: Any) -> None:
        self._agents.add(agent)

    def unregister(self, agent: Any) -> None:
        self._agents.discard(agent)

    def wake(self) -> None:
        self._woken = True

    def wait(self, timeout: float | None) -> None:
        self.waits.append(timeout)
        if self._woken:
            self._woken = False
            return
        clock = self._fake.clock
        now = clock.monotonic()
        target = math.inf if timeout is None else now + timeout
        target = min(target, *(max(now, a.exits_at) for a in self._agents), self._fake.next_event(), math.inf)
        if math.isinf(target):
            raise RuntimeError("the loop would sleep forever: nothing can wake it")
        if target > self._fake.horizon:
            raise RuntimeError(
                f"simulated time ran {target - self._fake.started:.0f} s: a loop that never ends?"
            )
        clock.advance(target - now)
        self._fake.fire_due()

    def close(self) -> None:
        self.closed = True


class FakeProcesses:
    """The ``Processes`` seam for unit tests (see the module docstring).

    ``default`` is every agent's behaviour unless ``behave(job_id, ...)`` says otherwise for a
    job (one behaviour per attempt; the last one repeats). ``available_bytes``,
    ``total_bytes`` and ``load`` are what the machine reports to admission. A waiter that
    would move the clock more than ``horizon_s`` past its start raises instead: a test whose
    loop never ends fails at once rather than at its timeout.
    """

    def __init__(
        self, clock: ManualClock, *, default: Behaviour | None = None, horizon_s: float = 3600.0
    ) -> None:
        self.clock = clock
        self.started = clock.monotonic()
        self.horizon = self.started + horizon_s
        self.default = default or Behaviour()
        self.available_bytes = 16 << 30
        self.total_bytes = 32 << 30
        self.load: float | None = None
        self.spawned: list[FakeAgent] = []
        self.waiters: list[FakeWaiter] = []
        self._events: list[tuple[float, Callable[[], None]]] = []
        self.on_exit: Callable[[FakeAgent], None] | None = None
        """Called as each agent ends (e.g. to stop the supervisor at that moment)."""
        self._plans: dict[int, list[Behaviour]] = {}
        self._pids = itertools.count(1000)
        self._strays: list[Escapee] = []
        self.orphan_calls: list[tuple[str, list[int], float]] = []
        """(worker, wrapper pids, grace) of every ``orphans`` call."""

    def at(self, seconds: float, action: Callable[[], None]) -> None:
        """Run ``action`` when the clock reaches ``seconds`` after this fake was made (the
        waiter wakes for it: "at 3 s, the user cancels")."""
        self._events.append((self.started + seconds, action))
        self._events.sort(key=lambda e: e[0])

    def next_event(self) -> float:
        return self._events[0][0] if self._events else math.inf

    def fire_due(self) -> None:
        """Run the scheduled actions whose time has come (the waiter calls this)."""
        while self._events and self._events[0][0] <= self.clock.monotonic():
            _, action = self._events.pop(0)
            action()

    def stray(self, job_id: int | None = None, attempt: int | None = None, found_by: str = "") -> Escapee:
        """An escaped orphan that the next ``orphans`` call reports, stopped with SIGTERM (of
        ``job_id``'s ended attempt, or of no job we can name)."""
        pid = next(self._pids) + 900_000
        escapee = Escapee(pid, f"fake:{pid}", job_id, attempt, found_by, "sleep", "SIGTERM")
        self._strays.append(escapee)
        return escapee

    def behave(self, job_id: int, *behaviours: Behaviour) -> None:
        """The behaviour of ``job_id``'s attempts 1, 2, … (the last one repeats)."""
        self._plans[job_id] = list(behaviours)

    def agents(self, job_id: int) -> list[FakeAgent]:
        """Every agent spawned for ``job_id``, oldest first."""
        return [a for a in self.spawned if a.job_id == job_id]

    def live(self) -> list[FakeAgent]:
        return [a for a in self.spawned if a.alive]

    def _behaviour(self, job_id: int, attempt: int) -> Behaviour:
        plan = self._plans.get(job_id)
        if not plan:
            return self.default
        return plan[min(max(attempt, 1), len(plan)) - 1]

    # -- the Processes protocol ----------------------------------------------------------
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
    ) -> FakeAgent:
        behaviour = self._behaviour(job_id, attempt)
        if not argv:
            raise SpawnError(errno.EINVAL, "empty command")
        if behaviour.spawn_errno is not None:
            raise SpawnError(
                behaviour.spawn_errno, f"cannot start {argv[0]}: {errno.errorcode[behaviour.spawn_errno]}"
            )
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        AttemptFiles(run_dir).exit.unlink(missing_ok=True)
        log_path.write_text(behaviour.output)
        agent = FakeAgent(
            self,
            pid=next(self._pids),
            job_id=job_id,
            attempt=attempt,
            worker=worker,
            argv=argv,
            env=env,
            log_path=log_path,
            run_dir=run_dir,
            cwd=cwd,
            limits=limits,
            behaviour=behaviour,
            started_mono=self.clock.monotonic(),
        )
        self.spawned.append(agent)
        return agent

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
    ) -> FakeAgent:
        for agent in self.spawned:
            if agent.pid == pid and agent.identity == identity:
                agent.closed = False
                agent.adopted = True
                return agent
        ghost = FakeAgent(
            self, pid=pid, job_id=job_id, attempt=attempt, worker=worker, argv=["?"], env={},
            log_path=log_path, run_dir=run_dir, cwd=None, limits=limits, behaviour=Behaviour(),
            started_mono=started_mono,
        )  # fmt: skip
        # gone before we came back: what the exit file says, as the real attach reads it
        ghost.adopted = True
        ghost.status = ghost.recorded_exit() or ExitStatus(None, None, None)
        return ghost

    def waiter(self) -> FakeWaiter:
        waiter = FakeWaiter(self)
        self.waiters.append(waiter)
        return waiter

    def scan_tagged(self, worker: str | None) -> list[TaggedProcess]:
        return [
            TaggedProcess(a.pid, a.identity, a.job_id, a.attempt, a.worker, a.pgid)
            for a in self.live()
            if worker is None or a.worker == worker
        ]

    def signal_process(self, pid: int, identity: str, sig: int) -> bool:
        for agent in self.live():
            if agent.pid == pid and agent.identity == identity:
                return agent.signal_group(sig)
        return False

    def same_process(self, pid: int, identity: str) -> bool:
        return any(a.pid == pid and a.identity == identity for a in self.live())

    def boot_id(self) -> str:
        return "fake-boot"

    def memory(self) -> tuple[int, int]:
        return self.available_bytes, self.total_bytes

    def load_per_cpu(self) -> float | None:
        return self.load

    def enforcement(self) -> str:
        return "fake processes"

    def set_child_subreaper(self, enabled: bool) -> bool:
        return False

    def escalation_due(self, grace_s: float) -> float | None:
        return None  # fake escapees are reported stopped; nothing escalates

    def orphans(self, worker: str, agents: Collection[Agent], *, grace_s: float) -> list[Escapee]:
        self.orphan_calls.append((worker, [a.pid for a in agents], grace_s))
        found, self._strays = self._strays, []
        return found
