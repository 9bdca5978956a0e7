"""The driver: one run of the supervisor loop, from opening the data dir to closing it.

Each tick (``Loop.tick``) collects exits and records their outcomes, checks log caps, carries
out the stops ``scheduler.plan_stops`` decides, then does the store duties ``timers.plan``
says are due: one heartbeat for all running jobs, outbox replay, reaping other workers' stale
leases, claiming work for free slots, saving the state file. Between ticks it blocks in the
``Waiter`` until an agent exits, another thread (or a signal) wakes it, or the next deadline
(``timers.next_wake``) comes: it never busy-polls.

Who does what: ``session`` opens and closes the data dir's resources; ``pool`` owns the
running agents; ``sync`` gets outcomes into the store (or the outbox); ``recovery`` settles
what a previous run left behind; the OS is reached only through ``processes.Processes``.
``supervisor.runner.Supervisor`` is the public face (threads, subscriptions, reload).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from supervisor.admission import Gate, GateState, Machine, admit
from supervisor.attempt import Attempt, base_env
from supervisor.clock import Clock
from supervisor.errors import (
    InvalidJobError,
    LeaseLostError,
    StateFileError,
    StoreError,
    StoreUnavailableError,
)
from supervisor.job import LIVE, Job, Outcome, Status
from supervisor.pool import AgentPool
from supervisor.processes import Processes
from supervisor.reconcile import Decision
from supervisor.recovery import reconcile_on_start
from supervisor.retention import Retention, RetentionReport
from supervisor.schedules import ScheduleFeed
from supervisor.session import Session
from supervisor.settings import Settings
from supervisor.statefile import State
from supervisor.status import build_status, previous_write_time
from supervisor.store import JobStore, Watch
from supervisor.submission import resolve_spec
from supervisor.sync import OutcomeSync
from supervisor.timers import Timers, next_wake, plan

__all__ = ["Control", "Emit", "Loop"]

log = logging.getLogger("agent_supervisor")

_DUE_MARGIN_S: Final = 0.005
IDLE_STORE_DOWN_S: Final = 300.0  # outlives the fault matrix's one-minute outage
"""``run(until_idle=True)`` with nothing running here gives up (``StoreUnavailableError``)
once the store has not answered for this long: whether the queue is empty cannot be known,
and a script waiting on ``run --until-idle`` must not hang. Outcomes wait in the outbox."""
_SAVE_RETRY_S: Final = 1.0  # a state file that cannot be saved (a full disk): not every tick

Emit = Callable[[Job, Status | None, str], None]
"""How the loop announces a job change: (the job as it is now, its status before, why)."""


@dataclass
class Control:
    """What other threads ask of the loop: written by ``Supervisor``, read by each tick."""

    stopping: bool = False
    leave_agents: bool = False
    drain_at: float = 0.0


class Loop:
    """One run: build it with ``open`` (takes the data dir, reconciles), drive it with ``run``,
    release it with ``close``. ``settings`` is read anew each tick (``Supervisor.reload``)."""

    def __init__(
        self,
        session: Session,
        *,
        settings: Callable[[], Settings],
        store: JobStore,
        processes: Processes,
        clock: Clock,
        control: Control,
        emit: Emit,
        rng: random.Random,
    ) -> None:
        self.session = session
        self._settings = settings
        self._store = store
        self._processes = processes
        self._clock = clock
        self._control = control
        self._emit_change = emit
        self.worker_id = session.worker_id
        self.timers = Timers()
        self.pool = AgentPool(
            processes,
            session.waiter,
            session.datadir,
            settings=settings,
            clock=clock,
            worker_id=session.worker_id,
            shared_store=store.shared,
            env=base_env(),
        )
        self.sync = OutcomeSync(
            store,
            session.outbox,
            self.timers,
            clock=clock,
            emit=self._emit,
            down_for_s=settings().heartbeat_s,
            rng=rng,
        )
        self.gate = Gate(GateState.OPEN, None, 0)
        self.gate_since = clock.time()
        self.machine = Machine(0, 0)
        self.decisions: list[Decision] = []
        self._last_start: float | None = None
        self._shutdown_sent = False
        self._idle_check_at = 0.0
        self._closed = False
        self._hint_lock = threading.Lock()
        self._hint_now = True  # what happened before we watched is unknown: look once
        self._hint_due = math.inf
        self.watch: Watch | None = None
        """The store's push channel (None: the store cannot push, so the loop polls)."""
        self.write_error: str | None = None
        """Why the last state-file save failed (a full disk), while that lasts."""
        self.retention_report: RetentionReport | None = None
        first = settings()
        self.schedules = ScheduleFeed(previous_write_time(session.datadir) or clock.time())
        """Since the last time the previous run reported in: slots missed while no supervisor
        ran follow their schedule's missed policy."""
        self.schedules.load(first.schedules)
        self.retention = Retention(
            session.datadir,
            store,
            clock=clock,
            retention_s=first.retention_s,
            files_max_bytes=first.files_max_bytes,
            every_s=first.retention_every_s,
            retain_jobs_s=first.retain_jobs_s,
            live=self._live,
            on_report=self._retained,
            also=self.pool.prune_workspaces,
        )

    @classmethod
    def open(
        cls,
        *,
        settings: Callable[[], Settings],
        store: JobStore,
        processes: Processes,
        clock: Clock,
        control: Control,
        emit: Emit,
        rng: random.Random,
        subreaper: bool,
    ) -> Loop:
        """Take the data dir, replay the outbox, settle what a previous run left behind."""
        session = Session.open(settings(), processes, store, subreaper=subreaper)
        loop = cls(
            session,
            settings=settings,
            store=store,
            processes=processes,
            clock=clock,
            control=control,
            emit=emit,
            rng=rng,
        )
        try:
            loop.watch = store.watch(loop._hinted)
            loop.retention.start()
            loop.sync.replay(clock.monotonic())
            loop.decisions = reconcile_on_start(
                session.state,
                store=store,
                settings=settings(),
                worker_id=session.worker_id,
                processes=processes,
                clock=clock,
                adopt=loop._adopt,
                record=loop.sync.record,
            )
            loop._save_state(durable=True)  # once per start: a new worker id or boot must stick
        except BaseException:
            loop.close()
            raise
        return loop

    def close(self) -> None:
        """Save the state file if needed and release the data dir; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.retention.close()
        if self.watch is not None:
            self.watch.close()
        if self.timers.save_at is not None or self._control.leave_agents:
            self._save_state()
        self.pool.close()
        self.session.close()

    def wake(self) -> None:
        """Look at the store now, not at the next poll (any thread)."""
        self.timers.claim_at = 0.0
        self.session.waiter.wake()

    def reloaded(self) -> None:
        """Settings changed: take the environment and the intervals anew."""
        settings = self._settings()
        self.pool.env = base_env()  # a host that changed os.environ reloads to pass it on
        self.pool.reset_workspaces()
        self.sync.down_for_s = settings.heartbeat_s
        self.retention.retention_s = settings.retention_s
        self.retention.files_max_bytes = settings.files_max_bytes
        self.retention.every_s = settings.retention_every_s
        self.retention.retain_jobs_s = settings.retain_jobs_s
        self.retention.wake()
        self.schedules.load(settings.schedules)
        self.timers.beat_at = 0.0
        self.wake()

    def _enqueue_schedules(self, wall: float) -> None:
        """Enqueue the schedules' slots that came due (``ScheduleFeed``)."""
        specs = [resolve_spec(spec, self._settings()) for spec in self.schedules.due(wall)]
        if specs:
            try:
                self._store.enqueue(specs)
            except StoreUnavailableError as exc:
                self.sync.store_down(exc)  # since stays: the next look enqueues them
                return
            except (StoreError, InvalidJobError) as exc:
                log.error("schedules: slots not enqueued: %s", exc)
            else:
                log.info("schedules: %s enqueued", ", ".join(s.unique_key or "?" for s in specs))
                self.timers.claim_at = min(self.timers.claim_at, self._clock.monotonic())
        self.schedules.done(wall)

    def _live(self) -> set[tuple[int, int]]:
        """The attempts that run or prepare now (the retention thread asks; any thread)."""
        return self.pool.live()

    def _retained(self, report: RetentionReport) -> None:
        self.retention_report = report  # one assignment: read by the loop thread at its leisure

    def _hinted(self, due_at: float | None) -> None:
        """The store's change hint (any thread): look now, or when ``due_at`` comes."""
        with self._hint_lock:
            if due_at is None:
                self._hint_now = True
            else:
                self._hint_due = min(self._hint_due, due_at)
        self.session.waiter.wake()

    def _take_hints(self, now: float) -> bool:
        """Hints since the last tick: True for "look now"; a due time becomes a claim time."""
        with self._hint_lock:
            look, due = self._hint_now, self._hint_due
            self._hint_now, self._hint_due = False, math.inf
        if due < math.inf:
            self._claim_by(now, due)
        return look

    def _claim_by(self, now: float, due_at: float) -> None:
        """Claim when the store-clock time ``due_at`` comes (a job's ``run_after``). A few
        milliseconds late rather than early: a claim a moment before ``run_after`` finds
        nothing (it would then ask ``next_due`` and come back, one round trip wasted)."""
        wait = max(0.0, due_at - self._clock.time()) + _DUE_MARGIN_S
        self.timers.claim_at = min(self.timers.claim_at, now + wait)

    @property
    def pushed(self) -> bool:
        """The store pushes change hints now (no polling needed)."""
        return self.watch is not None and self.watch.live

    def _emit(self, job: Job, before: Status | None, reason: str) -> None:
        if job.status is Status.WAITING_RETRY:  # ours to claim again when its backoff ends
            self._claim_by(self._clock.monotonic(), job.run_after)
        self._emit_change(job, before, reason)

    def _adopt(self, attempt: Attempt) -> None:
        self.pool.adopt(attempt)
        self.timers.beat_at = 0.0  # renew the lease at once: the restart may have eaten most of it
        self._emit(attempt.job, attempt.job.status, f"agent adopted (pid {attempt.entry.pid})")

    # -- driving -------------------------------------------------------------------------
    def run(self, until_idle: bool) -> None:
        """Tick until stopped (or, with ``until_idle``, until nothing is left to do)."""
        while not self.tick(until_idle):
            now = self._clock.monotonic()
            self.session.waiter.wait(
                next_wake(
                    self.timers,
                    now,
                    agents_due=self.pool.next_due(),
                    agents=len(self.pool),
                    check_s=self.pool.check_s(),
                    outbox=self.sync.depth,
                    stopping=self._control.stopping,
                    drain_at=None if self._shutdown_sent else self._control.drain_at,
                    poll_s=None if self.pushed else self._settings().poll_s,
                    status_at=min(
                        self.session.status.next_due(), now + self.schedules.at - self._clock.time()
                    ),
                )
            )

    def tick(self, until_idle: bool = False) -> bool:
        """One pass of the loop; True when the loop should end."""
        now = self._clock.monotonic()
        pool, control = self.pool, self._control
        changed = self._take_hints(now)
        for attempt, outcome in pool.collect_exits():
            self._state_changed()
            self._record(attempt.job, outcome)
            self.timers.claim_at = min(self.timers.claim_at, now)  # a slot is free
        self._started(pool.collect_prepared())
        pool.watch_output(now)
        pool.act_on_stops(now)
        due = plan(
            self.timers,
            now,
            agents=len(pool),
            outbox=self.sync.depth,
            changed=changed,
            stopping=control.stopping,
        )
        if due.beat:
            self._heartbeat(now)
        if due.replay:
            self.sync.replay(now)
        pool.reap_strays(now)
        pool.sample(now)
        if control.stopping:
            if not len(pool) or control.leave_agents:
                return True
            if now >= control.drain_at and not self._shutdown_sent:
                self._shutdown_sent = True
                for job, outcome in pool.shutdown(now):
                    self._record(job, outcome)
        else:
            if due.reap:
                self._reap(now)
            if self._clock.time() >= self.schedules.at and now >= self.timers.store_down_until:
                self._enqueue_schedules(self._clock.time())
            if due.claim:
                self._claim(now)
            if until_idle and self._idle(now):
                return True
        if self.timers.save_at is not None and self._clock.monotonic() >= self.timers.save_at:
            self._save_state()
        self._write_status(now)
        return False

    def _idle(self, now: float) -> bool:
        """Nothing runs here, nothing waits to be synced, and the store has nothing to do:
        asked at the poll interval on a remote store, not on every tick. Raises
        ``StoreUnavailableError`` when only an unreachable store stands between this and idle
        for ``IDLE_STORE_DOWN_S``."""
        if len(self.pool) or now < self._idle_check_at:
            return False
        if self.sync.depth:
            self._give_up_when_down()
            return False
        self._idle_check_at = now + (self._settings().poll_s if self._store.shared else 0.0)
        try:
            counts = self._store.counts().by_status
        except StoreError:
            self._give_up_when_down()
            return False
        return not any(counts.get(s, 0) for s in (Status.PENDING, *LIVE, Status.WAITING_RETRY))

    def _give_up_when_down(self) -> None:
        down_since = self.sync.down_since
        if down_since is None or self._clock.time() - down_since < IDLE_STORE_DOWN_S:
            return
        kept = (
            f"; {self.sync.depth} outcome(s) wait in the outbox for the next run" if self.sync.depth else ""
        )
        raise StoreUnavailableError(
            f"the store has not answered for {self._clock.time() - down_since:.0f} s, so whether "
            f"the queue is idle cannot be known{kept}"
        )

    # -- the store duties ----------------------------------------------------------------
    def _heartbeat(self, now: float) -> None:
        settings = self._settings()
        self.timers.beat_at = now + settings.heartbeat_s
        self.timers.last_beat = now
        beats = self.pool.beats()
        for beat in beats:
            attempt = self.pool.get(beat.job_id)
            if beat.progress is not None and attempt is not None:
                self._emit(replace(attempt.job, progress=beat.progress), attempt.job.status, "progress")
        try:
            replies = self._store.heartbeat(self.worker_id, beats, lease_s=settings.lease_s)
        except StoreError as exc:
            # Agents stay under their local deadlines; the lease may lapse and another
            # supervisor may take the job, which the next successful beat reports as lost.
            if self.sync.down_since is None or not isinstance(exc, StoreUnavailableError):
                log.warning("heartbeat failed: %s", exc)
            if isinstance(exc, StoreUnavailableError):
                self.sync.store_down(exc)
            return
        self.sync.store_answered()
        self.pool.apply(replies)

    def _reap(self, now: float) -> None:
        settings = self._settings()
        self.timers.reap_at = now + settings.reap_s if settings.reap_s > 0 else math.inf
        try:
            changed = self._store.reap_stale(settings.reap_grace_s)
        except StoreUnavailableError as exc:
            self.sync.store_down(exc)
            return
        self.sync.store_answered()
        for job in changed:
            if job.status is Status.PENDING:  # a retry whose backoff ended: claimable now
                self.timers.claim_at = min(self.timers.claim_at, now)
            else:
                log.warning("reaped job %d: %s", job.id, job.error)
                if job.status is Status.WAITING_RETRY:
                    self._claim_by(now, job.run_after)

    def _claim(self, now: float) -> None:
        settings = self._settings()
        # With a live push channel nothing needs asking until a hint or a known due time;
        # without one, poll. A closed gate is a fact of this machine: look again at poll_s.
        self.timers.claim_at = math.inf if self.pushed else now + settings.poll_s
        gate = self._admit(now)
        if gate.state is not GateState.OPEN:
            wait = gate.retry_in_s if gate.retry_in_s is not None else settings.poll_s
            self.timers.claim_at = min(self.timers.claim_at, now + wait)
            return
        try:
            jobs = self._store.claim(
                self.worker_id,
                gate.limit,
                lease_s=settings.lease_s,
                kinds=gate.only_kinds if gate.only_kinds is not None else settings.claim_kinds,
                exclude_kinds=gate.exclude_kinds,
            )
        except StoreUnavailableError as exc:
            self.sync.store_down(exc)
            self.timers.claim_at = now  # claim again as soon as the store may be asked
            return
        self.sync.store_answered()
        if jobs:
            self._last_start = now
        if len(jobs) == gate.limit:  # there may be more: look again as soon as the gate allows
            self.timers.claim_at = now + settings.start_stagger_s
        else:  # nothing more now: the next delayed job or retry may need no write to become due
            with contextlib.suppress(StoreError):
                due = self._store.next_due()
                if due is not None:
                    self._claim_by(now, due)
        started: list[Attempt | tuple[Job, Outcome]] = []
        for job in jobs:
            self._emit(job, Status.PENDING, "claimed")
            result = self.pool.launch(job)
            if isinstance(result, Outcome):
                started.append((job, result))
            elif result is not None:  # None: its workspace is being prepared
                started.append(result)
        self._started(started)

    def _started(self, results: list[Attempt | tuple[Job, Outcome]]) -> None:
        """Record what a launch gave: agents running, or outcomes of starts that failed."""
        attempts = [r for r in results if isinstance(r, Attempt)]
        if attempts:
            self._state_changed()
        for result in results:
            if isinstance(result, Attempt):
                self._mark_running(result)
            else:
                job, outcome = result
                self._record(job, outcome)
                self.timers.claim_at = min(self.timers.claim_at, self._clock.monotonic())

    def _admit(self, now: float) -> Gate:
        """Ask the admission gate, measuring the machine only when a slot is free."""
        settings = self._settings()
        running = self.pool.running()
        machine = Machine(0, 0)
        if len(running) < settings.concurrency:
            available, total = self._processes.memory()
            load = self._processes.load_per_cpu() if settings.max_load_per_cpu is not None else None
            machine = Machine(available, total, load)
        gate = admit(
            settings, running, machine, now=now, last_start=self._last_start, claim_kinds=settings.claim_kinds
        )
        if gate.state is not self.gate.state or gate.reason_key != self.gate.reason_key:
            if gate.state is GateState.BLOCKED:
                log.info("admission blocked: %s", gate.reason)
            self.gate_since = self._clock.time()
        self.gate, self.machine = gate, machine
        return gate

    def _mark_running(self, attempt: Attempt) -> None:
        job, proc, entry = attempt.job, attempt.proc, attempt.entry
        facts: dict[str, Any] = {"pgid": proc.pgid, "command": entry.command, "log_path": entry.log_path}
        if attempt.workspace is not None:
            facts["workspace"] = attempt.workspace.facts()
        try:
            attempt.job = self._store.mark_running(job.id, self.worker_id, job.attempt, proc.pid, facts)
            self._emit(attempt.job, Status.PREPARING, f"agent started (pid {proc.pid})")
        except LeaseLostError:
            attempt.lease_lost = True
        except StoreError as exc:
            log.warning("job %d: not marked running (%s); it runs on, recorded at exit", job.id, exc)

    def _record(self, job: Job, outcome: Outcome) -> None:
        self.sync.record(job.id, self.worker_id, job.attempt, outcome, before=job.status)

    # -- state file and status -----------------------------------------------------------
    def _state_changed(self) -> None:
        """An agent started or ended: save the state file within ``state_save_delay_s``.

        Not at once: a busy queue starts and ends agents every millisecond, and one save per
        batch costs a fraction of one per change (about 0.4 ms per save, and reading a new
        process's identity blocks while it starts). A supervisor that dies inside the delay
        leaves an agent unrecorded; the restart still finds it by its env tag and, its lease
        held, kills it and records the attempt as lost (retried per policy) instead of
        adopting it: never an orphan or a duplicate."""
        if self.timers.save_at is None:
            self.timers.save_at = self._clock.monotonic() + self._settings().state_save_delay_s

    def _save_state(self, *, durable: bool = False) -> None:
        state = State(
            format="agent-supervisor/running-agents",
            version=1,
            worker_id=self.worker_id,
            boot_id=self._processes.boot_id(),
            updated_at=self._clock.time(),
            agents=self.pool.state_entries(),
        )
        try:
            self.session.statefile.save(state, durable=durable)
            self.timers.save_at = None
            self.write_error = None
        except StateFileError as exc:  # keep running: the agents stay supervised in memory
            log.error("could not save the state file: %s", exc)
            self.write_error = str(exc)
            self.timers.save_at = self._clock.monotonic() + _SAVE_RETRY_S

    def _write_status(self, now: float) -> None:
        """``status.json`` for ``health`` in other processes, when due (``supervisor.status``)."""
        self.session.status.write_if_due(
            now, lambda: build_status(self, self._settings(), self._clock, self._processes.enforcement())
        )
