"""The running agents of one supervisor: prepare, launch, watch, stop, collect.

``AgentPool`` holds the attempts that have an agent and does everything that concerns them
alone: prepare and spawn one (``launch``), check log caps (``watch_output``), carry out what
``scheduler.plan_stops`` decides (SIGTERM, then SIGKILL), collect exits into outcomes, kill
escaped descendants of finished attempts, and sample each tree's resource use. It talks to the
operating system only through ``supervisor.processes.Processes`` and never to the store: the
loop (``supervisor.loop``) records what it returns.

A job that names a repository is *preparing* first: its worktree is made by
``supervisor.workspaces`` in a thread of its own (a first clone can take minutes, which the
loop must never wait for); the thread wakes the loop when it is done, and ``collect_prepared``
then spawns the agent in the worktree, or turns the failure into ``prepare_failed``. While a
job prepares it counts as running: it holds a slot, its lease is renewed, and a cancel or a
lost lease is honoured when the preparation returns (git is not interrupted mid-fetch).
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from supervisor.admission import RunningAgent, estimate_for
from supervisor.attempt import UNREAD_IDENTITY, Attempt, exit_outcome, prepare
from supervisor.clock import Clock
from supervisor.datadir import DataDir
from supervisor.errors import InvalidJobError, SpawnError
from supervisor.job import CancelMode, DecidedBy, ErrorKind, Job, Outcome
from supervisor.logcap import LogCap
from supervisor.processes import Processes, Waiter
from supervisor.scheduler import Kill, StopReason, StopState, Terminate, next_due, plan_stops
from supervisor.settings import Settings
from supervisor.statefile import AgentEntry
from supervisor.store import Beat, BeatReply
from supervisor.submission import kind_config

if TYPE_CHECKING:
    from supervisor.keys import RepoSource
    from supervisor.workspaces import Workspace, Workspaces

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


@dataclass(eq=False)
class _Preparing:
    """A job whose worktree a thread is making."""

    job: Job
    source: RepoSource
    ref: str | None
    done: threading.Event = field(default_factory=threading.Event)
    workspace: Workspace | None = None
    error: BaseException | None = None
    cancel_requested: CancelMode | None = None
    lease_lost: bool = False
    abandoned: bool = False
    """The supervisor stopped meanwhile: the thread releases the worktree when it returns."""


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
        env: dict[str, str],
    ) -> None:
        self._processes = processes
        self._waiter = waiter
        self._datadir = datadir
        self._settings = settings
        self._clock = clock
        self.worker_id = worker_id
        self._shared = shared_store
        self.env = env
        """The environment agents inherit (taken at open and on reload)."""
        self._attempts: dict[int, Attempt] = {}
        self._preparing: dict[int, _Preparing] = {}
        self._workspaces: Workspaces | None = None
        self.observed: deque[tuple[int, float]] = deque(maxlen=50)
        """(peak tree RSS, mean CPU %) of recent attempts, for the recommended concurrency."""
        self.logs_racing = False
        self.unattributed_escapees = 0
        """Escaped processes stopped that no job could be named for (each one is logged)."""
        self._next_sample = 0.0

    def __len__(self) -> int:
        """Attempts that hold a slot: running agents and jobs still preparing."""
        return len(self._attempts) + len(self._preparing)

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self._attempts.values()))

    def get(self, job_id: int) -> Attempt | None:
        return self._attempts.get(job_id)

    @property
    def job_ids(self) -> list[int]:
        return sorted(self._attempts)

    # -- starting ------------------------------------------------------------------------
    def launch(self, job: Job) -> Attempt | Outcome | None:
        """Start ``job``'s attempt: spawn its agent (the ``Attempt``), or begin preparing its
        worktree in a thread (None: ``collect_prepared`` finishes the start), or the
        ``Outcome`` to record when it cannot start (an invalid job, a command that cannot
        run, a full disk)."""
        settings = self._settings()
        try:
            kind = kind_config(settings, job.kind)
            if kind is None and self._shared and not settings.allow_remote_commands:
                raise InvalidJobError(
                    "raw commands from a shared store are refused: register a kind for it "
                    "(or set allow_remote_commands)"
                )
            repo = job.repo or (kind.repo if kind else None)
            if repo is not None:
                ref = job.ref if job.repo else (kind.ref if kind else None)
                self._begin_prepare(job, repo, ref)
                return None
        except InvalidJobError as exc:
            return _not_started(job, ErrorKind.INVALID, str(exc))
        return self._spawn(job, None)

    def _begin_prepare(self, job: Job, repo: str, ref: str | None) -> None:
        from supervisor.keys import parse_repo

        settings = self._settings()
        source = parse_repo(repo, default_owner=settings.default_owner)
        if source.local and self._shared and not settings.allow_remote_commands:
            # A path on this machine named by a row anyone with access to the store can write.
            raise InvalidJobError(
                "a local repository from a shared store is refused (set allow_remote_commands)"
            )
        item = _Preparing(job, source, ref)
        self._preparing[job.id] = item
        workspaces = self.workspaces()
        waiter = self._waiter

        def run() -> None:
            try:
                item.workspace = workspaces.prepare(source, ref, job_id=job.id, attempt=job.attempt)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which records it
                item.error = exc
            finally:
                item.done.set()
                if item.abandoned and item.workspace is not None:
                    workspaces.release(job.id, job.attempt, failed=False)
                else:
                    waiter.wake()

        threading.Thread(target=run, name=f"agent-supervisor-prepare-{job.id}", daemon=True).start()

    def collect_prepared(self) -> list[Attempt | tuple[Job, Outcome]]:
        """Jobs whose preparation returned: their spawned attempts, or (job, outcome) to
        record (``prepare_failed``, ``invalid``, a cancel that came meanwhile). A job whose
        lease was lost meanwhile is dropped: someone else may run it now."""
        out: list[Attempt | tuple[Job, Outcome]] = []
        for job_id, item in list(self._preparing.items()):
            if not item.done.is_set():
                continue
            del self._preparing[job_id]
            job, ws = item.job, item.workspace
            if item.lease_lost or item.cancel_requested is not None:
                if ws is not None:
                    self.release_workspace(job.id, job.attempt, failed=False)
                if not item.lease_lost:
                    out.append((job, _cancelled_while_preparing(item.cancel_requested)))
                continue
            if ws is None:
                out.append((job, _prepare_failure(job, item.error)))
                continue
            started = self._spawn(job, ws)
            if isinstance(started, Outcome):
                self.release_workspace(job.id, job.attempt, failed=True)
                out.append((job, started))
            else:
                out.append(started)
        return out

    def _spawn(self, job: Job, workspace: Workspace | None) -> Attempt | Outcome:
        settings = self._settings()
        try:
            kind = kind_config(settings, job.kind)
            launch = prepare(job, kind, settings, self._datadir, self.worker_id, self.env, workspace)
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
            workspace=workspace,
        )
        self.adopt(attempt)
        return attempt

    # -- workspaces ----------------------------------------------------------------------
    def workspaces(self) -> Workspaces:
        """The data dir's workspaces (made on first use: most supervisors never need git)."""
        if self._workspaces is None:
            from supervisor.workspaces import Workspaces, WorkspaceSettings

            settings = self._settings()
            self._workspaces = Workspaces(
                self._datadir.workspaces,
                settings=WorkspaceSettings.from_settings(settings),
                clock=self._clock,
                env=self.env,
            )
        return self._workspaces

    def reset_workspaces(self) -> None:
        """Settings or the environment changed: the next use builds them anew."""
        self._workspaces = None

    def release_workspace(self, job_id: int, attempt: int, *, failed: bool) -> None:
        """Remove an attempt's worktree (or keep a failed one for a while), off the loop's
        thread: a big checkout takes a while to delete."""
        workspaces = self.workspaces()
        threading.Thread(
            target=workspaces.release, args=(job_id, attempt), kwargs={"failed": failed},
            name="agent-supervisor-release", daemon=True,
        ).start()  # fmt: skip

    def prune_workspaces(self) -> None:
        """The workspace policy (old worktrees and mirrors) with the live attempts kept; for
        the retention thread. Nothing to do before the data dir has workspaces."""
        if not self._datadir.workspaces.exists():
            return
        live = self.live()
        self.workspaces().prune(live=live)

    def live(self) -> set[tuple[int, int]]:
        """(job, attempt) of every attempt that runs or prepares (any thread)."""
        for _ in range(3):
            try:
                running = [(a.job.id, a.job.attempt) for a in list(self._attempts.values())]
                preparing = [(p.job.id, p.job.attempt) for p in list(self._preparing.values())]
                return {*running, *preparing}
            except RuntimeError:  # changed size while copied (another thread's view): again
                continue
        return set()

    def adopt(self, attempt: Attempt) -> None:
        """Watch ``attempt`` (a new one, or one a previous supervisor left running)."""
        self._attempts[attempt.job.id] = attempt
        self._waiter.register(attempt.proc)

    def logcap(self, path: Path) -> LogCap:
        settings = self._settings()
        return LogCap(path, settings.log_cap_bytes, settings.output_tail_bytes)

    def running(self) -> list[RunningAgent]:
        """What admission needs to know of each running (or preparing) agent."""
        settings = self._settings()
        return [
            RunningAgent(a.job.kind, estimate_for(settings, a.job.kind), (a.stats or {}).get("rss_bytes", 0))
            for a in self._attempts.values()
        ] + [
            RunningAgent(p.job.kind, estimate_for(settings, p.job.kind), 0) for p in self._preparing.values()
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
        """One beat per running attempt, with new progress and the latest tree sample, and
        one per preparing job (its lease must hold while git works)."""
        beats = [
            Beat(a.job.id, a.job.attempt, a.read_progress(), a.stats, a.active())
            for a in self._attempts.values()
        ]
        return beats + [Beat(p.job.id, p.job.attempt) for p in self._preparing.values()]

    def apply(self, replies: list[BeatReply]) -> None:
        """Note cancel requests and lost leases from a heartbeat's answer (the planner acts)."""
        for reply in replies:
            preparing = self._preparing.get(reply.job_id)
            if preparing is not None:
                preparing.cancel_requested = reply.cancel_requested
                preparing.lease_lost |= reply.lease_lost
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

    def shutdown(self, now: float) -> list[tuple[Job, Outcome]]:
        """SIGTERM every agent not already being stopped (the drain time is over); jobs still
        preparing are given up (their threads release the worktree when git returns) and
        returned with the outcome to record: interrupted, retried at once, not counted."""
        for attempt in self._attempts.values():
            if attempt.stop is None:
                self.terminate(attempt, StopReason.SHUTDOWN, now)
        return self._abandon_preparing()

    def _abandon_preparing(self) -> list[tuple[Job, Outcome]]:
        given_up = []
        for item in list(self._preparing.values()):
            item.abandoned = True
            if item.done.is_set() and item.workspace is not None:
                self.release_workspace(item.job.id, item.job.attempt, failed=False)
            given_up.append((item.job, _interrupted()))
        self._preparing.clear()
        return given_up

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
        """Stop watching every agent (they keep running: the state file records them); give
        up jobs still preparing (their leases lapse, and they are retried). Escapees still
        being stopped get SIGKILL now: no later tick will escalate."""
        self.reap_strays(self._clock.monotonic(), grace_s=0.0)
        for attempt in list(self._attempts.values()):
            self._release(attempt)
        self._abandon_preparing()

    def _release(self, attempt: Attempt) -> None:
        self._waiter.unregister(attempt.proc)
        attempt.proc.close()
        del self._attempts[attempt.job.id]


def _prepare_failure(job: Job, error: BaseException | None) -> Outcome:
    from supervisor.errors import PrepareError

    if isinstance(error, InvalidJobError):
        return _not_started(job, ErrorKind.INVALID, str(error))
    if isinstance(error, PrepareError | OSError):
        why = str(error) if isinstance(error, PrepareError) else f"cannot make the workspace: {error}"
        log.warning("job %d: workspace not ready: %s", job.id, why)
        facts = {"repo": job.repo, "ref": job.ref}
        return Outcome(
            error_kind=ErrorKind.PREPARE_FAILED, error=why, decided_by=DecidedBy.SPAWN, facts=facts
        )
    log.error("job %d: preparing its workspace failed", job.id, exc_info=error)
    return Outcome(
        error_kind=ErrorKind.PREPARE_FAILED, error=f"internal error: {error!r}", decided_by=DecidedBy.SPAWN
    )


def _cancelled_while_preparing(mode: CancelMode | None) -> Outcome:
    what = "killed" if mode is CancelMode.KILL else "cancelled"
    return Outcome(
        error_kind=ErrorKind.CANCELLED,
        error=f"{what} while its workspace was prepared",
        decided_by=DecidedBy.CANCEL,
    )


def _interrupted() -> Outcome:
    return Outcome(
        error_kind=ErrorKind.KILLED,
        error="stopped by supervisor shutdown while its workspace was prepared",
        decided_by=DecidedBy.SHUTDOWN,
        forgive=True,
    )


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
