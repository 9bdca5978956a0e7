"""The supervisor: claim jobs, run their agents, keep the store and the state file true.

One thread drives everything (the caller's, or one the host starts with ``start()``). Each
tick (``_tick``) it collects exits and records their outcomes, checks log caps, carries out
the stops ``scheduler.plan_stops`` decides, and then does the store duties that
``timers.plan`` says are due: one heartbeat for all running jobs, outbox replay, reaping other
workers' stale leases, claiming work for free slots, saving the state file. Between ticks it
blocks in the ``Waiter`` until an agent exits, another thread (or a signal) wakes it, or the
next deadline (``timers.next_wake``) comes: it never busy-polls.

Who does what: ``session`` opens and closes the data dir's resources; ``pool`` owns the
running agents; ``sync`` gets outcomes into the store (or the outbox); ``recovery`` settles
what a previous run left behind; the OS is reached only through ``processes.Processes``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.admission import Gate, GateState, Machine, admit
from supervisor.attempt import Attempt, base_env, resolve_spec
from supervisor.clock import SYSTEM_CLOCK, Clock
from supervisor.errors import ConfigError, LeaseLostError, StateFileError, StoreError, StoreUnavailableError
from supervisor.events import JobChange, Subscription
from supervisor.job import LIVE, Job, JobSpec, Outcome, Status
from supervisor.pool import AgentPool
from supervisor.processes import Processes
from supervisor.reconcile import Decision
from supervisor.recovery import read_worker_id, reconcile_on_start
from supervisor.session import Session
from supervisor.settings import Settings
from supervisor.signals import on_stop_signals
from supervisor.statefile import State
from supervisor.store import JobStore
from supervisor.sync import OutcomeSync
from supervisor.timers import Timers, next_wake, plan

if TYPE_CHECKING:
    import asyncio

__all__ = ["JobChange", "Subscription", "Supervisor", "read_worker_id", "resolve_spec"]

log = logging.getLogger("agent_supervisor")

_SAVE_RETRY_S = 1.0  # a state file that cannot be saved (a full disk) is retried, not every tick


class _Run:
    """What exists only while the supervisor runs: the session and the loop's parts."""

    def __init__(self, session: Session, pool: AgentPool, sync: OutcomeSync, timers: Timers) -> None:
        self.session = session
        self.pool = pool
        self.sync = sync
        self.timers = timers


class Supervisor:
    """Runs agents for jobs from ``store`` under ``settings``; one per data dir.

    ``run()`` blocks until stopped (or until the queue is empty with ``until_idle``);
    ``start()`` runs the same loop in a background thread and ``run_async()`` awaits it from
    an asyncio loop. ``request_stop()``, ``stop()``, ``reload()``, ``submit()`` and ``wake()``
    are safe from any thread. Signal handlers are installed only by ``run()`` on the main
    thread, and restored when it returns. ``subreaper`` (Linux) makes escaped descendants of
    agents re-parent to this process so they are reaped; enable it only when this process is
    not a host with children of its own (the CLI and the stdio bridge do). ``clock`` and
    ``processes`` are the seams tests replace (``supervisor.testing``).
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        processes: Processes | None = None,
        on_change: Callable[[JobChange], None] | None = None,
        install_signal_handlers: bool = True,
        subreaper: bool = False,
    ) -> None:
        if processes is None:
            from supervisor.procs import OsProcesses  # the OS layer, only for a real run

            processes = OsProcesses(clock)
        self.settings = settings
        self.store = store
        self.processes = processes
        self._clock = clock
        self._on_change = on_change
        self._install_signals = install_signal_handlers
        self._subreaper = subreaper
        self._rng = random.Random()
        self._subscriptions: set[Subscription] = set()
        self._run: _Run | None = None
        self._thread: threading.Thread | None = None
        self.worker_id = ""
        self.last_reconcile: list[Decision] = []
        self.gate = Gate(GateState.OPEN, None, 0)
        self._gate_since = 0.0
        self._machine = Machine(0, 0)
        self._last_start: float | None = None
        self._stopping = False
        self._leave_agents = False
        self._drain_at = 0.0
        self._shutdown_sent = False
        self._idle_check_at = 0.0

    # -- public API ----------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> int:
        """Enqueue a job (kind checked, defaults filled) and wake the loop to claim it."""
        [job_id] = self.store.enqueue([resolve_spec(spec, self.settings)])
        self.wake()
        return job_id

    def wake(self) -> None:
        """Make the loop look at the store now instead of at its next poll."""
        run = self._run
        if run is not None:
            run.timers.claim_at = 0.0
            run.session.waiter.wake()

    def request_stop(self, *, drain: bool = True, leave_agents: bool = False) -> None:
        """Stop claiming, then stop. Running agents get ``drain_timeout_s`` to finish (none
        with ``drain=False``) and are then stopped and recorded — or, with ``leave_agents``,
        are left running for the next start to adopt (a host reload)."""
        deadline = self._clock.monotonic() + (self.settings.drain_timeout_s if drain else 0.0)
        self._drain_at = min(self._drain_at, deadline) if self._stopping else deadline
        self._leave_agents = leave_agents
        self._stopping = True
        run = self._run
        if run is not None:
            run.session.waiter.wake()

    def start(self, *, until_idle: bool = False) -> threading.Thread:
        """Run the loop in a daemon thread (for hosts); ``stop()`` ends it. Errors of opening
        (e.g. ``DataDirLockedError``) are raised here, in the caller's thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this supervisor is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                run = self._open()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                self._loop(run, until_idle)
            except Exception:
                log.exception("supervisor loop crashed")
            finally:
                self._close(run)

        self._thread = threading.Thread(target=main, name="agent-supervisor", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self._thread

    def stop(self, *, drain: bool = True, leave_agents: bool = False, timeout: float | None = None) -> None:
        """``request_stop`` and wait for the background thread to end."""
        self.request_stop(drain=drain, leave_agents=leave_agents)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, *, until_idle: bool = False) -> None:
        """Open the data dir, reconcile, and supervise until stopped (or idle). SIGINT/SIGTERM
        stop it gracefully (a second one: no drain) when it owns the main thread."""
        run = self._open()
        try:
            if self._install_signals:
                with on_stop_signals(lambda _sig: self.request_stop(drain=not self._stopping)):
                    self._loop(run, until_idle)
            else:
                self._loop(run, until_idle)
        finally:
            self._close(run)

    async def run_async(self, *, until_idle: bool = False) -> None:
        """``run`` for an asyncio host: the loop runs in its own thread; cancelling this
        coroutine stops the supervisor gracefully and waits for it."""
        import asyncio

        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        thread = self.start(until_idle=until_idle)

        def join() -> None:
            thread.join()
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=join, name="agent-supervisor-join", daemon=True).start()
        try:
            await done.wait()
        except asyncio.CancelledError:
            self.request_stop()
            await asyncio.shield(done.wait())
            raise

    def reload(self, settings: Settings) -> None:
        """Apply new settings (intervals, concurrency, kinds, limits) to the running loop.

        The data dir and the store cannot change while running: stop, then start anew.
        """
        if (
            Path(settings.data_dir) != Path(self.settings.data_dir)
            or settings.store_url != self.settings.store_url
        ):
            raise ConfigError("data_dir and store cannot change on reload; stop and start a new supervisor")
        self.settings = settings
        run = self._run
        if run is not None:
            run.pool.env = base_env()  # a host that changed os.environ reloads to pass it on
            run.sync.down_for_s = settings.heartbeat_s
            run.timers.beat_at = 0.0
        self.wake()

    def subscribe(
        self, *, maxsize: int = 1000, loop: asyncio.AbstractEventLoop | None = None
    ) -> Subscription:
        """A stream of the job changes this supervisor causes (see ``Subscription``)."""
        sub = Subscription(self._subscriptions.discard, maxsize, loop)
        self._subscriptions.add(sub)
        return sub

    def reconcile(self) -> list[Decision]:
        """Only reconcile: settle what a previous run left behind, then release the data dir.
        Agents that would be adopted keep running and stay in the state file."""
        run = self._open()
        self._leave_agents = True
        self._close(run)
        return self.last_reconcile

    @property
    def running_jobs(self) -> list[int]:
        run = self._run
        return run.pool.job_ids if run is not None else []

    @property
    def outbox_depth(self) -> int:
        run = self._run
        return run.sync.depth if run is not None else 0

    # -- open / close --------------------------------------------------------------------
    def _open(self) -> _Run:
        self._stopping = self._leave_agents = self._shutdown_sent = False
        self._last_start = None
        self._idle_check_at = 0.0
        self._gate_since = self._clock.time()
        session = Session.open(self.settings, self.processes, subreaper=self._subreaper)
        try:
            self.worker_id = session.worker_id
            timers = Timers()
            pool = AgentPool(
                self.processes,
                session.waiter,
                session.datadir,
                settings=lambda: self.settings,
                clock=self._clock,
                worker_id=session.worker_id,
                shared_store=self.store.shared,
                subreaper=session.subreaper,
                env=base_env(),
            )
            sync = OutcomeSync(
                self.store,
                session.outbox,
                timers,
                clock=self._clock,
                emit=self._emit,
                down_for_s=self.settings.heartbeat_s,
                rng=self._rng,
            )
            run = _Run(session, pool, sync, timers)
            self._run = run
            sync.replay(self._clock.monotonic())
            self.last_reconcile = reconcile_on_start(
                session.state,
                store=self.store,
                settings=self.settings,
                worker_id=session.worker_id,
                processes=self.processes,
                clock=self._clock,
                adopt=lambda attempt: self._adopt(run, attempt),
                record=sync.record,
            )
            self._save_state(run, durable=True)  # once per start: a new worker id or boot must stick
        except BaseException:
            self._run = None
            session.close()
            raise
        return run

    def _close(self, run: _Run) -> None:
        if run.timers.save_at is not None or self._leave_agents:
            self._save_state(run)
        run.pool.close()
        self._run = None
        run.session.close()

    def _adopt(self, run: _Run, attempt: Attempt) -> None:
        run.pool.adopt(attempt)
        run.timers.beat_at = 0.0  # renew the lease at once: the restart may have eaten most of it
        self._emit(attempt.job, attempt.job.status, f"agent adopted (pid {attempt.entry.pid})")

    # -- the loop ------------------------------------------------------------------------
    def _loop(self, run: _Run, until_idle: bool) -> None:
        while not self._tick(run, until_idle):
            now = self._clock.monotonic()
            run.session.waiter.wait(
                next_wake(
                    run.timers,
                    now,
                    agents_due=run.pool.next_due(),
                    agents=len(run.pool),
                    check_s=run.pool.check_s(),
                    outbox=run.sync.depth,
                    stopping=self._stopping,
                    drain_at=None if self._shutdown_sent else self._drain_at,
                    poll_s=self.settings.wake_poll_s,
                )
            )

    def _tick(self, run: _Run, until_idle: bool) -> bool:
        """One pass of the loop; True when the loop should end."""
        now = self._clock.monotonic()
        pool, timers = run.pool, run.timers
        changed = self.store.changed()
        for attempt, outcome in pool.collect_exits():
            self._state_changed(run)
            self._record(run, attempt.job, outcome)
        pool.watch_output(now)
        pool.act_on_stops(now)
        due = plan(
            timers, now, agents=len(pool), outbox=run.sync.depth, changed=changed, stopping=self._stopping
        )
        if due.beat:
            self._heartbeat(run, now)
        if due.replay:
            run.sync.replay(now)
        pool.reap_strays(now)
        pool.sample(now)
        if self._stopping:
            if not len(pool) or self._leave_agents:
                return True
            if now >= self._drain_at and not self._shutdown_sent:
                self._shutdown_sent = True
                pool.shutdown(now)
        else:
            if due.reap:
                self._reap(run, now)
            if due.claim:
                self._claim(run, now)
            if until_idle and self._idle(run, now):
                return True
        if run.timers.save_at is not None and self._clock.monotonic() >= run.timers.save_at:
            self._save_state(run)
        self._write_status(run, now)
        return False

    def _idle(self, run: _Run, now: float) -> bool:
        """Nothing runs here, nothing waits to be synced, and the store has nothing to do:
        asked at the poll interval on a remote store, not on every tick."""
        if len(run.pool) or run.sync.depth or now < self._idle_check_at:
            return False
        self._idle_check_at = now + (self.settings.poll_s if self.store.shared else 0.0)
        try:
            counts = self.store.counts().by_status
        except StoreError:
            return False
        return not any(counts.get(s, 0) for s in (Status.PENDING, *LIVE, Status.WAITING_RETRY))

    # -- the store duties ----------------------------------------------------------------
    def _heartbeat(self, run: _Run, now: float) -> None:
        timers = run.timers
        timers.beat_at = now + self.settings.heartbeat_s
        timers.last_beat = now
        beats = run.pool.beats()
        for beat in beats:
            attempt = run.pool.get(beat.job_id)
            if beat.progress is not None and attempt is not None:
                self._emit(replace(attempt.job, progress=beat.progress), attempt.job.status, "progress")
        try:
            replies = self.store.heartbeat(self.worker_id, beats, lease_s=self.settings.lease_s)
        except StoreError as exc:
            # Agents stay under their local deadlines; the lease may lapse and another
            # supervisor may take the job, which the next successful beat reports as lost.
            log.warning("heartbeat failed: %s", exc)
            if isinstance(exc, StoreUnavailableError):
                run.sync.store_down(exc)
            return
        run.sync.store_answered()
        run.pool.apply(replies)

    def _reap(self, run: _Run, now: float) -> None:
        run.timers.reap_at = now + self.settings.heartbeat_s
        try:
            for job in self.store.reap_stale(self.settings.reap_grace_s):
                log.warning("reaped job %d: %s", job.id, job.error)
        except StoreUnavailableError as exc:
            run.sync.store_down(exc)

    def _claim(self, run: _Run, now: float) -> None:
        run.timers.claim_at = now + self.settings.poll_s
        gate = self._admit(run, now)
        if gate.state is not GateState.OPEN:
            return
        try:
            jobs = self.store.claim(
                self.worker_id,
                gate.limit,
                lease_s=self.settings.lease_s,
                kinds=gate.only_kinds if gate.only_kinds is not None else self.settings.claim_kinds,
                exclude_kinds=gate.exclude_kinds,
            )
        except StoreUnavailableError as exc:
            run.sync.store_down(exc)
            return
        if jobs:
            self._last_start = now
            if len(jobs) == gate.limit and self.settings.start_stagger_s == 0:
                run.timers.claim_at = 0.0  # there may be more: look again on the next tick
        launched: list[Attempt] = []
        for job in jobs:
            self._emit(job, Status.PENDING, "claimed")
            started = run.pool.launch(job)
            if isinstance(started, Outcome):
                self._record(run, job, started)
            else:
                launched.append(started)
        if launched:
            self._state_changed(run)
        for attempt in launched:
            self._mark_running(attempt)

    def _admit(self, run: _Run, now: float) -> Gate:
        """Ask the admission gate, measuring the machine only when a slot is free."""
        running = run.pool.running()
        machine = Machine(0, 0)
        if len(running) < self.settings.concurrency:
            available, total = self.processes.memory()
            load = self.processes.load_per_cpu() if self.settings.max_load_per_cpu is not None else None
            machine = Machine(available, total, load)
        gate = admit(
            self.settings,
            running,
            machine,
            now=now,
            last_start=self._last_start,
            claim_kinds=self.settings.claim_kinds,
        )
        if gate.state is not self.gate.state or gate.reason != self.gate.reason:
            if gate.state is GateState.BLOCKED:
                log.info("admission blocked: %s", gate.reason)
            self._gate_since = self._clock.time()
        self.gate, self._machine = gate, machine
        return gate

    def _mark_running(self, attempt: Attempt) -> None:
        job, proc, entry = attempt.job, attempt.proc, attempt.entry
        facts = {"pgid": proc.pgid, "command": entry.command, "log_path": entry.log_path}
        try:
            attempt.job = self.store.mark_running(job.id, self.worker_id, job.attempt, proc.pid, facts)
            self._emit(attempt.job, Status.PREPARING, f"agent started (pid {proc.pid})")
        except LeaseLostError:
            attempt.lease_lost = True
        except StoreError as exc:
            log.warning("job %d: not marked running (%s); it runs on, recorded at exit", job.id, exc)

    def _record(self, run: _Run, job: Job, outcome: Outcome) -> None:
        run.sync.record(job.id, self.worker_id, job.attempt, outcome, before=job.status)

    # -- state file and status -----------------------------------------------------------
    def _state_changed(self, run: _Run) -> None:
        """An agent started or ended: save the state file within ``state_save_delay_s``.

        Not at once: a busy queue starts and ends agents every millisecond, and one save per
        batch costs a fraction of one per change (about 0.4 ms per save, and reading a new
        process's identity blocks while it starts). A supervisor that dies inside the delay
        leaves an agent unrecorded; the restart still finds it by its env tag and, its lease
        held, kills it and records the attempt as lost (retried per policy) instead of
        adopting it: never an orphan or a duplicate."""
        if run.timers.save_at is None:
            run.timers.save_at = self._clock.monotonic() + self.settings.state_save_delay_s

    def _save_state(self, run: _Run, *, durable: bool = False) -> None:
        state = State(
            format="agent-supervisor/running-agents",
            version=1,
            worker_id=self.worker_id,
            boot_id=self.processes.boot_id(),
            updated_at=self._clock.time(),
            agents=run.pool.state_entries(),
        )
        try:
            run.session.statefile.save(state, durable=durable)
            run.timers.save_at = None
        except StateFileError as exc:  # keep running: the agents stay supervised in memory
            log.error("could not save the state file: %s", exc)
            run.timers.save_at = self._clock.monotonic() + _SAVE_RETRY_S

    def _write_status(self, run: _Run, now: float) -> None:
        """``status.json`` for ``health`` in other processes, when due (see ``StatusWriter``)."""
        run.session.status.write_if_due(
            now,
            worker_id=self.worker_id,
            gate=self.gate,
            gate_since=self._gate_since,
            machine=self._machine,
            settings=self.settings,
            agents=list(run.pool),
            observed=run.pool.observed,
            outbox_depth=run.sync.depth,
            enforcement=self.processes.enforcement,
            wall_now=self._clock.time(),
        )

    # -- notifications -------------------------------------------------------------------
    def _emit(self, job: Job, before: Status | None, reason: str) -> None:
        change = JobChange(job.id, before, job.status, reason, job.attempt, job.progress)
        for sub in list(self._subscriptions):
            sub.put(change)
        if self._on_change is None:
            return
        try:
            self._on_change(change)
        except Exception:
            log.exception("on_change callback failed for job %d", job.id)
