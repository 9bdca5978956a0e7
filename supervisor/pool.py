"""The running agents of one supervisor: launch, watch, stop, collect.

``AgentPool`` holds the attempts that have an agent and does everything that concerns them
alone: prepare and spawn one (``launch``), check log caps (``watch_output``), carry out what
``scheduler.plan_stops`` decides (SIGTERM, then SIGKILL), collect exits into outcomes, kill
escaped descendants of finished attempts, and sample each tree's resource use. It talks to the
operating system only through ``supervisor.processes.Processes`` and never to the store: the
loop (``supervisor.runner``) records what it returns.
"""

from __future__ import annotations

import errno
import logging
import signal
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from supervisor.admission import RunningAgent, estimate_for
from supervisor.attempt import UNREAD_IDENTITY, Attempt, exit_outcome, kind_config, prepare
from supervisor.clock import Clock
from supervisor.datadir import DataDir
from supervisor.errors import InvalidJobError, SpawnError
from supervisor.job import DecidedBy, ErrorKind, Job, Outcome
from supervisor.logcap import LogCap
from supervisor.processes import Processes, Waiter
from supervisor.scheduler import Kill, StopReason, StopState, Terminate, next_due, plan_stops
from supervisor.settings import Settings
from supervisor.statefile import AgentEntry
from supervisor.store import Beat, BeatReply

__all__ = ["AgentPool", "Ended"]

log = logging.getLogger("agent_supervisor")

CHECK_S: Final = 0.1
"""How often running agents' logs are checked against their cap."""
FAST_CHECK_S: Final = 0.01
"""... and while a log grows fast: an agent writing 1 GB/s overshoots the cap on disk by
~10 MB, not ~100 MB."""
_RACING_LOG_BYTES: Final = 1 << 20
"""Growth between two checks above which a log counts as growing fast."""
_SAMPLE_S: Final = 1.0
"""How often each agent tree's RSS, CPU and process count are sampled."""
# A command that does not exist or may not be run: another attempt cannot help.
_PERMANENT_SPAWN_ERRORS: Final = frozenset({errno.ENOENT, errno.EACCES})

Ended = tuple[Attempt, Outcome]
"""An attempt whose agent has ended, and the outcome to record for it."""


class AgentPool:
    """The attempts that have an agent, keyed by job id (see the module docstring)."""

    def __init__(
        self,
        processes: Processes,
        waiter: Waiter,
        datadir: DataDir,
        *,
        settings: Callable[[], Settings],
        clock: Clock,
        worker_id: str,
        shared_store: bool,
        subreaper: bool,
        env: dict[str, str],
    ) -> None:
        self._processes = processes
        self._waiter = waiter
        self._datadir = datadir
        self._settings = settings
        self._clock = clock
        self.worker_id = worker_id
        self._shared = shared_store
        self._subreaper = subreaper
        self.env = env
        """The environment agents inherit (taken at open and on reload)."""
        self._attempts: dict[int, Attempt] = {}
        self.observed: deque[tuple[int, float]] = deque(maxlen=50)
        """(peak tree RSS, mean CPU %) of recent attempts, for the recommended concurrency."""
        self.logs_racing = False
        self.unattributed_escapees = 0
        """Escaped processes stopped that no job could be named for (each one is logged)."""
        self._next_sample = 0.0

    def __len__(self) -> int:
        return len(self._attempts)

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self._attempts.values()))

    def get(self, job_id: int) -> Attempt | None:
        return self._attempts.get(job_id)

    @property
    def job_ids(self) -> list[int]:
        return sorted(self._attempts)

    # -- starting ------------------------------------------------------------------------
    def launch(self, job: Job) -> Attempt | Outcome:
        """Prepare the attempt's files and spawn its agent; the ``Outcome`` to record instead
        when it cannot start (an invalid job, a command that cannot run, a full disk)."""
        settings = self._settings()
        try:
            kind = kind_config(settings, job.kind)
            if kind is None and self._shared and not settings.allow_remote_commands:
                raise InvalidJobError(
                    "raw commands from a shared store are refused: register a kind for it "
                    "(or set allow_remote_commands)"
                )
            launch = prepare(job, kind, settings, self._datadir, self.worker_id, self.env)
            proc = self._processes.spawn(
                launch.argv,
                env=launch.env,
                run_dir=launch.run_dir,
                log_path=launch.log_path,
                cwd=launch.cwd,
                job_id=job.id,
                attempt=job.attempt,
                worker=self.worker_id,
                # No cgroup for an agent without limits: joining one costs up to 8 ms per spawn
                # (cgroup v1 memory), and its stats come from sampling /proc instead.
                limits=launch.limits if launch.limits.any() else None,
            )
        except (InvalidJobError, SpawnError) as exc:
            permanent = not isinstance(exc, SpawnError) or exc.errno in _PERMANENT_SPAWN_ERRORS
            return _not_started(job, ErrorKind.INVALID if permanent else ErrorKind.SPAWN_ERROR, str(exc))
        except OSError as exc:  # the data dir could not take the payload file
            return _not_started(job, ErrorKind.SPAWN_ERROR, f"cannot prepare the attempt: {exc}")
        entry = AgentEntry(
            job_id=job.id,
            attempt=job.attempt,
            worker=self.worker_id,
            pid=proc.pid,
            pgid=proc.pgid,
            start_identity=UNREAD_IDENTITY,
            command=list(launch.argv),
            started_at=self._clock.time(),
            started_mono=proc.started_mono,
            timeout_s=launch.timeout_s,
            idle_timeout_s=launch.idle_timeout_s,
            log_path=str(launch.log_path),
            run_dir=str(launch.run_dir),
        )
        attempt = Attempt(
            job=job,
            proc=proc,
            logcap=self.logcap(launch.log_path),
            entry=entry,
            last_output=proc.started_mono,
            limits=launch.limits,
        )
        self.adopt(attempt)
        return attempt

    def adopt(self, attempt: Attempt) -> None:
        """Watch ``attempt`` (a new one, or one a previous supervisor left running)."""
        self._attempts[attempt.job.id] = attempt
        self._waiter.register(attempt.proc)

    def logcap(self, path: Path) -> LogCap:
        settings = self._settings()
        return LogCap(path, settings.log_cap_bytes, settings.output_tail_bytes)

    def running(self) -> list[RunningAgent]:
        """What admission needs to know of each running agent."""
        settings = self._settings()
        return [
            RunningAgent(a.job.kind, estimate_for(settings, a.job.kind), (a.stats or {}).get("rss_bytes", 0))
            for a in self._attempts.values()
        ]

    # -- watching ------------------------------------------------------------------------
    def watch_output(self, now: float) -> None:
        """Enforce log caps; an agent that wrote something is not idle."""
        self.logs_racing = False
        for attempt in self._attempts.values():
            before = attempt.logcap.size + attempt.logcap.dropped
            if attempt.logcap.check():
                attempt.last_output = now
                grown = attempt.logcap.size + attempt.logcap.dropped - before
                self.logs_racing |= grown >= _RACING_LOG_BYTES

    def sample(self, now: float) -> None:
        """Resource use of every agent tree, once a second: stats for the store and health,
        and enforcement of memory/process limits that no cgroup enforces."""
        if not self._attempts or now < self._next_sample:
            return
        self._next_sample = now + _SAMPLE_S
        for attempt in self._attempts.values():
            attempt.sample()

    def next_due(self) -> float:
        """The earliest time a stop may become due (``scheduler.next_due``), an escaped
        process's SIGKILL included (``Processes.escalation_due``): an idle loop must wake for it."""
        grace = self._settings().stop_grace_s
        due = next_due((a.view() for a in self._attempts.values()), grace)
        escalation = self._processes.escalation_due(grace)
        return due if escalation is None else min(due, escalation)

    def check_s(self) -> float:
        return FAST_CHECK_S if self.logs_racing else CHECK_S

    # -- heartbeats ----------------------------------------------------------------------
    def beats(self) -> list[Beat]:
        """One beat per running attempt, with new progress and the latest tree sample."""
        return [Beat(a.job.id, a.job.attempt, a.read_progress(), a.stats) for a in self._attempts.values()]

    def apply(self, replies: list[BeatReply]) -> None:
        """Note cancel requests and lost leases from a heartbeat's answer (the planner acts)."""
        for reply in replies:
            attempt = self._attempts.get(reply.job_id)
            if attempt is None:
                continue
            attempt.cancel_requested = reply.cancel_requested
            if reply.lease_lost and not attempt.lease_lost:
                log.warning("job %d: lease lost; stopping its agent", reply.job_id)
                attempt.lease_lost = True

    # -- stopping ------------------------------------------------------------------------
    def act_on_stops(self, now: float) -> None:
        """Carry out ``plan_stops``: SIGTERM, or SIGKILL to the tree."""
        views = [a.view() for a in self._attempts.values()]
        for action in plan_stops(views, now, self._settings().stop_grace_s):
            attempt = self._attempts[action.job_id]
            if isinstance(action, Terminate):
                self.terminate(attempt, action.reason, now)
            elif isinstance(action, Kill):
                self.kill(attempt, action.reason, now)

    def shutdown(self, now: float) -> None:
        """SIGTERM every agent not already being stopped (the drain time is over)."""
        for attempt in self._attempts.values():
            if attempt.stop is None:
                self.terminate(attempt, StopReason.SHUTDOWN, now)

    def terminate(self, attempt: Attempt, reason: StopReason, now: float) -> None:
        sent = attempt.proc.signal_group(signal.SIGTERM)
        attempt.stop = StopState(reason, term_at=now)
        attempt.signals.append(_signal_fact("SIGTERM", reason, now, attempt, delivered=sent))
        log.info("job %d: SIGTERM (%s)", attempt.job.id, reason)

    def kill(self, attempt: Attempt, reason: StopReason, now: float) -> None:
        pids = attempt.proc.kill_tree()
        stop = attempt.stop
        attempt.stop = StopState(
            stop.reason if stop else reason, term_at=stop.term_at if stop else None, kill_at=now
        )
        fact = _signal_fact("SIGKILL", reason, now, attempt, delivered=bool(pids))
        fact["pids"] = pids
        attempt.signals.append(fact)
        log.info("job %d: SIGKILL (%s) to %s", attempt.job.id, reason, pids)

    # -- ending --------------------------------------------------------------------------
    def collect_exits(self) -> list[Ended]:
        """Attempts whose agent has ended, with their outcomes; they leave the pool."""
        ended: list[Ended] = []
        for attempt in list(self._attempts.values()):
            # Background children of a finished agent die with its attempt.
            status = attempt.proc.poll(kill_remnants=True)
            if status is None:
                continue
            outcome = exit_outcome(
                attempt, status, self._clock.monotonic()
            )  # reads its cgroup: before close()
            self._release(attempt)
            if attempt.peak_rss_bytes:
                self.observed.append(
                    (attempt.peak_rss_bytes, attempt.cpu_percent_sum / max(1, attempt.samples))
                )
            ended.append((attempt, outcome))
        return ended

    def reap_strays(self, now: float, *, grace_s: float | None = None) -> None:
        """Escaped descendants (setsid, double fork) that outlive their attempt: as a
        subreaper reap those re-parented to us, stop the ones no running attempt keeps
        (SIGTERM, SIGKILL after the stop grace), and log each; the process layer decides
        what is due (``Processes.orphans``). An escapee of a running attempt is kept with it
        and reaches the job's facts with its outcome (``ExitStatus.escaped``)."""
        grace = self._settings().stop_grace_s if grace_s is None else grace_s
        procs = [a.proc for a in self._attempts.values()]
        for e in self._processes.orphans(self.worker_id, procs, grace_s=grace):
            sent = e.stopped_with or "no signal (gone)"
            if e.job_id is None:
                self.unattributed_escapees += 1
                log.warning("escaped process %d (%s) of no job we can name: %s", e.pid, e.name, sent)
            else:
                log.warning(
                    "escaped process %d (%s) of job %d attempt %s, found by %s after its outcome: %s",
                    e.pid, e.name, e.job_id, e.attempt, e.found_by, sent,
                )  # fmt: skip

    def state_entries(self) -> list[AgentEntry]:
        """The state file's records of the running agents."""
        return [a.state_entry() for a in self._attempts.values()]

    def close(self) -> None:
        """Stop watching every agent (they keep running: the state file records them). Escapees
        still being stopped get SIGKILL now: no later tick will escalate."""
        self.reap_strays(self._clock.monotonic(), grace_s=0.0)
        for attempt in list(self._attempts.values()):
            self._release(attempt)

    def _release(self, attempt: Attempt) -> None:
        self._waiter.unregister(attempt.proc)
        attempt.proc.close()
        del self._attempts[attempt.job.id]


def _not_started(job: Job, kind: ErrorKind, error: str) -> Outcome:
    log.warning("job %d not started: %s", job.id, error)
    return Outcome(error_kind=kind, error=error, decided_by=DecidedBy.SPAWN)


def _signal_fact(
    name: str, reason: StopReason, now: float, attempt: Attempt, *, delivered: bool
) -> dict[str, Any]:
    return {
        "signal": name,
        "why": reason.value,
        "at_s": round(now - attempt.entry.started_mono, 3),
        "delivered": delivered,
    }
