"""The supervisor loop: claim jobs, run their agents, keep the store and the state file true.

One thread drives everything (the caller's, or one the host starts with ``start()``): each
tick collects exits, enforces log caps, asks ``scheduler.plan_stops`` what to stop, renews the
leases of all running jobs in one store call, replays the outbox, reaps stale leases of other
workers, claims work for free slots, and saves the state file when it changed. Between ticks
it blocks in ``procs.Waiter`` until an agent exits, another thread (or a signal) wakes it, a
deadline comes, or it is time to look at the store again — it never busy-polls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from supervisor import procs
from supervisor.admission import Gate, GateState, Machine, RunningAgent, admit, estimate_for
from supervisor.attempt import (
    UNREAD_IDENTITY,
    Attempt,
    base_env,
    exit_outcome,
    kind_config,
    prepare,
    resolve_spec,
)
from supervisor.datadir import DataDir, DataDirLock, prepare_data_dir
from supervisor.errors import (
    ConfigError,
    InvalidJobError,
    LeaseLostError,
    SpawnError,
    StateFileError,
    StoreError,
    StoreUnavailableError,
)
from supervisor.events import JobChange, Subscription
from supervisor.lifecycle import LIVE, DecidedBy, ErrorKind, Job, JobSpec, Outcome, Status
from supervisor.outbox import Outbox, OutboxEntry
from supervisor.reconcile import Decision
from supervisor.recovery import load_worker_id, read_worker_id, reconcile_on_start
from supervisor.scheduler import Kill, StopReason, StopState, Terminate, next_due, plan_stops
from supervisor.settings import Settings
from supervisor.statefile import AgentEntry, State, StateFile
from supervisor.status import StatusWriter
from supervisor.store import Beat, JobStore

if TYPE_CHECKING:
    import asyncio

__all__ = ["JobChange", "Subscription", "Supervisor", "read_worker_id", "resolve_spec"]

log = logging.getLogger("agent_supervisor")

_CHANGE_BEAT_MIN_S: Final = 0.2
"""Least gap between two heartbeats sent early because the store changed (a cancel)."""
_CHECK_S: Final = 0.1
_FAST_CHECK_S: Final = 0.01
_RACING_LOG_BYTES: Final = 1 << 20
"""Growth between two checks above which a log counts as growing fast."""
_STRAY_SCAN_S: Final = 1.0
"""How often to look for escaped descendants of finished agents (a process scan)."""
_OUTBOX_RETRY_MAX_S: Final = 10.0  # a probe is one quick call: outcomes sync <= 10 s after an outage
_SAMPLE_S: Final = 1.0
"""How often each agent tree's RSS, CPU and process count are sampled."""
_SAVE_RETRY_S: Final = 1.0


class Supervisor:
    """Runs agents for jobs from ``store`` under ``settings``; one per data dir.

    ``run()`` blocks until stopped (or until the queue is empty with ``until_idle``);
    ``start()`` runs the same loop in a background thread and ``run_async()`` awaits it from
    an asyncio loop. ``request_stop()``, ``stop()``, ``reload()``, ``submit()`` and ``wake()``
    are safe from any thread. Signal handlers are installed only by ``run()`` on the main
    thread, and restored when it returns. ``subreaper`` (Linux) makes escaped descendants of
    agents re-parent to this process so they are reaped; enable it only when this process is
    not a host with children of its own (the CLI and the stdio bridge do).
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[JobChange], None] | None = None,
        install_signal_handlers: bool = True,
        subreaper: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self._on_change = on_change
        self._install_signals = install_signal_handlers
        self._subreaper = subreaper
        self._rng = random.Random()
        self._subscriptions: set[Subscription] = set()
        self._observed: deque[tuple[int, float]] = deque(maxlen=50)
        """(peak tree RSS, mean CPU %) of recent attempts, for the recommended concurrency."""
        self._agents: dict[int, Attempt] = {}
        self._waiter: procs.Waiter | None = None
        self._lock: DataDirLock | None = None
        self._datadir: DataDir | None = None
        self._statefile: StateFile | None = None
        self._status: StatusWriter | None = None
        self._outbox: Outbox | None = None
        self._unsaved: list[OutboxEntry] = []
        self._thread: threading.Thread | None = None
        self.worker_id = ""
        self.last_reconcile: list[Decision] = []
        self._env: dict[str, str] = {}
        self._reset_timers()

    def _reset_timers(self) -> None:
        self._stopping = False
        self._leave_agents = False
        self._drain_deadline = 0.0
        self._shutdown_sent = False
        self._save_due: float | None = None
        self._next_beat = 0.0
        self._last_beat = 0.0
        self._next_claim = 0.0
        self._next_reap = 0.0
        self._next_stray_scan = 0.0
        self._ended_since_scan = False
        self._store_down_until = 0.0
        self._outbox_fails = 0
        self._next_outbox_try = 0.0
        self._logs_racing = False
        self._last_start: float | None = None
        self._next_sample = 0.0
        self._next_idle_check = 0.0
        self.gate = Gate(GateState.OPEN, None, 0)
        self._gate_since = time.time()
        self._machine = Machine(0, 0)

    # -- public API ----------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> int:
        """Enqueue a job (kind checked, defaults filled) and wake the loop to claim it."""
        [job_id] = self.store.enqueue([resolve_spec(spec, self.settings)])
        self.wake()
        return job_id

    def wake(self) -> None:
        """Make the loop look at the store now instead of at its next poll."""
        self._next_claim = 0.0
        if self._waiter is not None:
            self._waiter.wake()

    def request_stop(self, *, drain: bool = True, leave_agents: bool = False) -> None:
        """Stop claiming, then stop. Running agents get ``drain_timeout_s`` to finish (none
        with ``drain=False``) and are then stopped and recorded — or, with ``leave_agents``,
        are left running for the next start to adopt (a host reload)."""
        now = self._clock()
        deadline = now + (self.settings.drain_timeout_s if drain else 0.0)
        self._drain_deadline = min(self._drain_deadline, deadline) if self._stopping else deadline
        self._leave_agents = leave_agents
        self._stopping = True
        if self._waiter is not None:
            self._waiter.wake()

    def start(self, *, until_idle: bool = False) -> threading.Thread:
        """Run the loop in a daemon thread (for hosts); ``stop()`` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this supervisor is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                self._open()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                self._loop(until_idle)
            except Exception:
                log.exception("supervisor loop crashed")
            finally:
                self._close()

        self._thread = threading.Thread(target=main, name="agent-supervisor", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:  # e.g. DataDirLockedError: the caller learns at once, in its own thread
            self._thread.join()
            raise failure[0]
        return self._thread

    def stop(self, *, drain: bool = True, leave_agents: bool = False, timeout: float | None = None) -> None:
        """``request_stop`` and wait for the background thread to end."""
        self.request_stop(drain=drain, leave_agents=leave_agents)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, *, until_idle: bool = False) -> None:
        """Open the data dir, reconcile, and supervise until stopped (or idle)."""
        self._open()
        try:
            with self._signals():
                self._loop(until_idle)
        finally:
            self._close()

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
        self._env = base_env()  # a host that changed os.environ reloads to pass it on
        self._next_beat = self._next_claim = 0.0
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
        self._open()
        self._leave_agents = True
        self._close()
        return self.last_reconcile

    @property
    def running_jobs(self) -> list[int]:
        return sorted(self._agents)

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox or ()) + len(self._unsaved)

    # -- open / close --------------------------------------------------------------------
    def _open(self) -> None:
        self._reset_timers()
        self._env = base_env()
        self._datadir = prepare_data_dir(self.settings.data_dir)
        self._status = StatusWriter(self._datadir.root)
        self._lock = DataDirLock(self._datadir)
        self._lock.acquire()
        try:
            self._statefile = StateFile(self._datadir.state_file, self._datadir.quarantine)
            self._outbox = Outbox(self._datadir.root / "outbox.jsonl")
            self._waiter = procs.Waiter()
            if self._subreaper:
                self._subreaper = procs.set_child_subreaper(True)
            self.last_reconcile = self._reconcile_on_start()
        except BaseException:
            self._close()
            raise

    def _close(self) -> None:
        if self._statefile is not None:
            if self._save_due is not None or self._leave_agents:
                self._save_state()
            self._statefile.close()
        for attempt in list(self._agents.values()):
            if self._waiter is not None:
                self._waiter.unregister(attempt.proc)
            attempt.proc.close()
        self._agents.clear()
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        if self._subreaper:
            procs.set_child_subreaper(False)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM → graceful stop (a second one: no drain). Only when we own the
        main thread: a library must not steal its host's handlers."""
        if not self._install_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop(drain=not self._stopping)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    # -- reconciliation ------------------------------------------------------------------
    def _reconcile_on_start(self) -> list[Decision]:
        """Settle what a previous run left behind before claiming anything (``recovery``
        gathers the views and carries out the decisions; this hands it our state)."""
        assert self._statefile is not None and self._datadir is not None
        state = self._statefile.load().state  # a bad file is quarantined and logged by load()
        self.worker_id = load_worker_id(self._datadir.root, state)
        self._replay_outbox(self._clock())
        decisions = reconcile_on_start(
            state,
            store=self.store,
            settings=self.settings,
            worker_id=self.worker_id,
            clock=self._clock,
            adopt=self._adopt,
            record=self._record,
        )
        self._save_state(durable=True)  # once per start: a new worker id or boot must stick
        return decisions

    def _adopt(self, attempt: Attempt) -> None:
        assert self._waiter is not None
        self._agents[attempt.job.id] = attempt
        self._waiter.register(attempt.proc)
        self._next_beat = 0.0  # renew the lease at once: the restart may have eaten most of it
        self._emit(attempt.job, attempt.job.status, f"agent adopted (pid {attempt.entry.pid})")

    def _logcap(self, path: Path) -> procs.LogCap:
        return procs.LogCap(path, self.settings.log_cap_bytes, self.settings.output_tail_bytes)

    # -- the loop ------------------------------------------------------------------------
    def _loop(self, until_idle: bool) -> None:
        assert self._waiter is not None
        while True:
            now = self._clock()
            changed = self.store.changed()
            self._collect_exits()
            self._watch_output(now)
            self._act_on_stops(now)
            self._heartbeat_if_due(now, changed)
            self._replay_outbox(now)
            self._reap_strays(now)
            self._sample(now)
            if self._stopping:
                if not self._agents or self._leave_agents:
                    return
                if now >= self._drain_deadline and not self._shutdown_sent:
                    self._shutdown_sent = True
                    for attempt in list(self._agents.values()):
                        if attempt.stop is None:
                            self._terminate(attempt, StopReason.SHUTDOWN, now)
            else:
                self._claim_if_due(now, changed)
                if until_idle and not self._agents and not self.outbox_depth and now >= self._next_idle_check:
                    # A remote store is asked at the poll interval, not 20 times a second.
                    self._next_idle_check = now + (self.settings.poll_s if self.store.shared else 0.0)
                    if self._queue_idle():
                        return
            if self._save_due is not None and self._clock() >= self._save_due:
                self._save_state()
            self._write_status(now)
            self._waiter.wait(self._next_wake(now))

    def _next_wake(self, now: float) -> float:
        due = next_due((a.view() for a in self._agents.values()), self.settings.stop_grace_s)
        if self._agents:
            due = min(due, self._next_beat)
            # Log caps are enforced by checking: 10x a second, 100x while a log grows fast, so
            # an agent writing 1 GB/s overshoots the cap on disk by ~10 MB, not ~100 MB.
            due = min(due, now + (_FAST_CHECK_S if self._logs_racing else _CHECK_S))
        if self.outbox_depth:
            due = min(due, self._next_outbox_try)
        if self._save_due is not None:
            due = min(due, self._save_due)
        if self._stopping and not self._shutdown_sent:
            due = min(due, self._drain_deadline)
        elif not self._stopping:
            due = min(due, now + self.settings.wake_poll_s)
        return max(0.0, due - self._clock())

    def _queue_idle(self) -> bool:
        try:
            counts = self.store.counts().by_status
        except StoreError:
            return False
        return not any(counts.get(s, 0) for s in (Status.PENDING, *LIVE, Status.WAITING_RETRY))

    # -- claiming and spawning -----------------------------------------------------------
    def _claim_if_due(self, now: float, changed: bool) -> None:
        if now < self._store_down_until or self.outbox_depth:
            return  # the store is down: running agents carry on, nothing new starts
        try:
            if now >= self._next_reap:
                self._next_reap = now + self.settings.heartbeat_s
                for job in self.store.reap_stale(self.settings.reap_grace_s):
                    log.warning("reaped job %d: %s", job.id, job.error)
            if not changed and now < self._next_claim:
                return
            self._next_claim = now + self.settings.poll_s
            gate = self._admit(now)
            if gate.state is not GateState.OPEN:
                return
            jobs = self.store.claim(
                self.worker_id,
                gate.limit,
                lease_s=self.settings.lease_s,
                kinds=gate.only_kinds if gate.only_kinds is not None else self.settings.claim_kinds,
                exclude_kinds=gate.exclude_kinds,
            )
        except StoreUnavailableError as exc:
            self._store_down(exc)
            return
        if jobs:
            self._last_start = now
            if len(jobs) == gate.limit and self.settings.start_stagger_s == 0:
                self._next_claim = 0.0  # there may be more: look again on the next tick
        launched = []
        for job in jobs:
            self._emit(job, Status.PENDING, "claimed")
            if (attempt := self._launch(job)) is not None:
                launched.append(attempt)
        if launched:
            self._state_changed()
        for attempt in launched:
            self._mark_running(attempt)

    def _admit(self, now: float) -> Gate:
        """Ask the admission gate, measuring the machine only when a slot is free."""
        running = [
            RunningAgent(
                a.job.kind, estimate_for(self.settings, a.job.kind), (a.stats or {}).get("rss_bytes", 0)
            )
            for a in self._agents.values()
        ]
        machine = Machine(0, 0)
        if len(running) < self.settings.concurrency:
            machine = _measure_machine(self.settings.max_load_per_cpu is not None)
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
            self._gate_since = time.time()
        self.gate, self._machine = gate, machine
        return gate

    def _launch(self, job: Job) -> Attempt | None:
        assert self._datadir is not None and self._waiter is not None
        try:
            kind = kind_config(self.settings, job.kind)
            if kind is None and self.store.shared and not self.settings.allow_remote_commands:
                raise InvalidJobError(
                    "raw commands from a shared store are refused: register a kind for it "
                    "(or set allow_remote_commands)"
                )
            launch = prepare(job, kind, self.settings, self._datadir, self.worker_id, self._env)
            proc = procs.spawn(
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
            # ENOENT/EACCES (no such command) and invalid jobs: another attempt cannot help.
            permanent = not isinstance(exc, SpawnError) or exc.errno in (2, 13)
            self._fail_before_start(job, ErrorKind.INVALID if permanent else ErrorKind.SPAWN_ERROR, str(exc))
            return None
        except OSError as exc:  # the data dir could not take the payload file
            self._fail_before_start(job, ErrorKind.SPAWN_ERROR, f"cannot prepare the attempt: {exc}")
            return None
        entry = AgentEntry(
            job_id=job.id,
            attempt=job.attempt,
            worker=self.worker_id,
            pid=proc.pid,
            pgid=proc.pgid,
            start_identity=UNREAD_IDENTITY,
            command=list(launch.argv),
            started_at=time.time(),
            started_mono=proc.started_mono,
            timeout_s=launch.timeout_s,
            idle_timeout_s=launch.idle_timeout_s,
            log_path=str(launch.log_path),
            run_dir=str(launch.run_dir),
        )
        logcap = self._logcap(launch.log_path)
        attempt = Attempt(
            job=job,
            proc=proc,
            logcap=logcap,
            entry=entry,
            last_output=proc.started_mono,
            limits=launch.limits,
        )
        self._agents[job.id] = attempt
        self._waiter.register(proc)
        return attempt

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

    def _fail_before_start(self, job: Job, kind: ErrorKind, error: str) -> None:
        log.warning("job %d not started: %s", job.id, error)
        outcome = Outcome(error_kind=kind, error=error, decided_by=DecidedBy.SPAWN)
        self._record(job.id, self.worker_id, job.attempt, outcome, before=job.status)

    # -- watching agents -----------------------------------------------------------------
    def _watch_output(self, now: float) -> None:
        self._logs_racing = False
        for attempt in self._agents.values():
            before = attempt.logcap.size + attempt.logcap.dropped
            if attempt.logcap.check():
                attempt.last_output = now
                grown = attempt.logcap.size + attempt.logcap.dropped - before
                self._logs_racing |= grown >= _RACING_LOG_BYTES

    def _act_on_stops(self, now: float) -> None:
        views = [a.view() for a in self._agents.values()]
        for action in plan_stops(views, now, self.settings.stop_grace_s):
            attempt = self._agents[action.job_id]
            if isinstance(action, Terminate):
                self._terminate(attempt, action.reason, now)
            elif isinstance(action, Kill):
                self._kill(attempt, action.reason, now)

    def _terminate(self, attempt: Attempt, reason: StopReason, now: float) -> None:
        sent = attempt.proc.signal_group(signal.SIGTERM)
        attempt.stop = StopState(reason, term_at=now)
        attempt.signals.append(self._signal_fact("SIGTERM", reason, now, attempt, delivered=sent))
        log.info("job %d: SIGTERM (%s)", attempt.job.id, reason)

    def _kill(self, attempt: Attempt, reason: StopReason, now: float) -> None:
        pids = attempt.proc.kill_tree()
        stop = attempt.stop
        attempt.stop = StopState(
            stop.reason if stop else reason, term_at=stop.term_at if stop else None, kill_at=now
        )
        fact = self._signal_fact("SIGKILL", reason, now, attempt, delivered=bool(pids))
        fact["pids"] = pids
        attempt.signals.append(fact)
        log.info("job %d: SIGKILL (%s) to %s", attempt.job.id, reason, pids)

    def _signal_fact(
        self, name: str, reason: StopReason, now: float, attempt: Attempt, *, delivered: bool
    ) -> dict[str, Any]:
        return {
            "signal": name,
            "why": reason.value,
            "at_s": round(now - attempt.entry.started_mono, 3),
            "delivered": delivered,
        }

    def _collect_exits(self) -> None:
        assert self._waiter is not None
        for attempt in list(self._agents.values()):
            # Background children of a finished agent die with its attempt.
            status = attempt.proc.poll(kill_remnants=True)
            if status is None:
                continue
            outcome = exit_outcome(attempt, status, self._clock())  # reads its cgroup: before close()
            self._waiter.unregister(attempt.proc)
            attempt.proc.close()
            del self._agents[attempt.job.id]
            self._state_changed()
            self._ended_since_scan = True  # look for its setsid escapees at the next scan
            if attempt.peak_rss_bytes:
                self._observed.append(
                    (attempt.peak_rss_bytes, attempt.cpu_percent_sum / max(1, attempt.samples))
                )
            job = attempt.job
            self._record(job.id, self.worker_id, job.attempt, outcome, before=job.status)

    def _reap_strays(self, now: float) -> None:
        """Kill escaped descendants (setsid, double fork) of attempts that have ended, found
        by their env tag; as a subreaper, also reap those re-parented to us."""
        if self._subreaper:
            procs.reap_orphans({a.proc.pid for a in self._agents.values()})
        if not self._ended_since_scan or now < self._next_stray_scan:
            return  # a scan reads every process's environment: only after an attempt ended
        self._ended_since_scan = False
        self._next_stray_scan = now + _STRAY_SCAN_S
        live = {(a.job.id, a.job.attempt) for a in self._agents.values()}
        for t in procs.scan_tagged(self.worker_id):
            if (t.job_id, t.attempt) not in live and procs.signal_process(t.pid, t.identity, signal.SIGKILL):
                log.warning("killed escaped process %d of job %s attempt %s", t.pid, t.job_id, t.attempt)

    def _sample(self, now: float) -> None:
        """Resource use of every agent tree, once a second: stats for the store and health,
        and enforcement of memory/process limits that no cgroup enforces."""
        if not self._agents or now < self._next_sample:
            return
        self._next_sample = now + _SAMPLE_S
        for attempt in self._agents.values():
            attempt.sample()

    def _write_status(self, now: float) -> None:
        """``status.json`` for ``health`` in other processes, when due (see ``StatusWriter``)."""
        assert self._status is not None
        self._status.write_if_due(
            now,
            worker_id=self.worker_id,
            gate=self.gate,
            gate_since=self._gate_since,
            machine=self._machine,
            settings=self.settings,
            agents=self._agents.values(),
            observed=self._observed,
            outbox_depth=self.outbox_depth,
        )

    # -- recording outcomes --------------------------------------------------------------
    def _record(
        self, job_id: int, worker: str, attempt: int, outcome: Outcome, *, before: Status | None
    ) -> None:
        """Write an attempt's outcome, fenced; into the durable outbox if the store is down.

        While the store is known to be down (or older outcomes still wait in the outbox) the
        outcome goes straight to the outbox: each call to a dead store spends its whole retry
        budget, during which this thread could not enforce any other agent's deadline.
        """
        if self.outbox_depth or self._clock() < self._store_down_until:
            self._keep(OutboxEntry(job_id, worker, attempt, outcome))
            return
        try:
            new = self.store.finish(job_id, worker, attempt, outcome)
        except LeaseLostError as exc:
            log.warning("job %d: outcome not recorded, %s", job_id, exc)
            return
        except StoreUnavailableError as exc:
            log.warning("job %d: store unavailable, outcome kept in the outbox: %s", job_id, exc)
            self._store_down(exc)
            self._keep(OutboxEntry(job_id, worker, attempt, outcome))
            return
        reason = new.error or str(new.status)
        if new.status is Status.WAITING_RETRY:
            reason += (
                f"; retry in {max(0.0, new.run_after - new.updated_at):.1f} s "
                f"({new.attempts_used} of {new.max_attempts} attempts used)"
            )
        self._emit(new, before, reason)

    def _store_down(self, exc: StoreUnavailableError) -> None:
        """The store did not answer through its retries: claim nothing and send outcomes to
        the outbox for a heartbeat interval (the next heartbeat or replay probes it again)."""
        if self._clock() >= self._store_down_until:
            log.warning("store unavailable; no new work for %.0f s: %s", self.settings.heartbeat_s, exc)
        self._store_down_until = self._clock() + self.settings.heartbeat_s

    def _keep(self, entry: OutboxEntry) -> None:
        assert self._outbox is not None
        try:
            self._outbox.append(entry)
        except StateFileError as exc:  # disk full: keep it in memory, and say so loudly
            log.error("outbox not durable: %s", exc)
            self._unsaved.append(entry)
        self._next_outbox_try = min(self._next_outbox_try or float("inf"), self._clock() + 1.0)

    def _replay_outbox(self, now: float) -> None:
        """Replay kept outcomes in order once the store answers; back off while it does not.

        After a failed try, a cheap ``store.now()`` probes first: a ``finish`` to a dead
        remote store spends its whole retry budget (30 s by default), during which this
        thread enforces no deadline; the probe gives up within the quick budget (5 s)."""
        if not self.outbox_depth or now < self._next_outbox_try:
            return
        assert self._outbox is not None
        done = 0
        pending = [*self._outbox.entries, *self._unsaved]
        if self._outbox_fails:
            try:
                self.store.now()
            except StoreError as exc:
                self._outbox_backoff(now, exc, len(pending))
                return
        for entry in pending:
            try:
                new = self.store.finish(entry.job_id, entry.worker, entry.attempt, entry.outcome)
                self._emit(new, None, f"{new.error or new.status} (synced from the outbox)")
            except LeaseLostError as exc:
                log.warning("outbox: job %d: %s; dropped", entry.job_id, exc)
            except StoreError as exc:
                self._outbox_backoff(now, exc, len(pending) - done)
                break
            done += 1
        else:
            self._outbox_fails = 0
        saved = min(done, len(self._outbox))
        if saved:
            try:
                self._outbox.drop_first(saved)
            except StateFileError as exc:  # replayed again later: finish is idempotent
                log.error("outbox: %s", exc)
        del self._unsaved[: done - saved]

    def _outbox_backoff(self, now: float, exc: StoreError, waiting: int) -> None:
        self._outbox_fails += 1
        delay = min(_OUTBOX_RETRY_MAX_S, 0.5 * 2**self._outbox_fails)
        self._next_outbox_try = now + self._rng.uniform(delay / 2, delay)
        log.warning("outbox: %d outcomes wait for the store (%s)", waiting, exc)

    # -- heartbeats ----------------------------------------------------------------------
    def _heartbeat_if_due(self, now: float, changed: bool) -> None:
        if not self._agents:
            return
        if changed:  # a cancel may be waiting in the store: beat now, or as soon as allowed
            self._next_beat = min(self._next_beat, self._last_beat + _CHANGE_BEAT_MIN_S)
        if now < self._next_beat:
            return
        self._next_beat = now + self.settings.heartbeat_s
        self._last_beat = now
        beats = [Beat(a.job.id, a.job.attempt, a.read_progress(), a.stats) for a in self._agents.values()]
        for beat in beats:
            if beat.progress is not None:
                job = self._agents[beat.job_id].job
                self._emit(replace(job, progress=beat.progress), job.status, "progress")
        try:
            replies = self.store.heartbeat(self.worker_id, beats, lease_s=self.settings.lease_s)
        except StoreError as exc:
            # Agents stay under their local deadlines; the lease may lapse and another
            # supervisor may take the job, which the next successful beat reports as lost.
            log.warning("heartbeat failed: %s", exc)
            if isinstance(exc, StoreUnavailableError):
                self._store_down(exc)
            return
        if self.outbox_depth:
            self._next_outbox_try = 0.0  # the store answers again: replay now, not after the backoff
        for reply in replies:
            attempt = self._agents.get(reply.job_id)
            if attempt is None:
                continue
            attempt.cancel_requested = reply.cancel_requested
            if reply.lease_lost and not attempt.lease_lost:
                log.warning("job %d: lease lost; stopping its agent", reply.job_id)
                attempt.lease_lost = True

    # -- state file ----------------------------------------------------------------------
    def _state_changed(self) -> None:
        """An agent started or ended: save the state file within ``state_save_delay_s``.

        Not at once: a busy queue starts and ends agents every millisecond, and one save per
        batch costs a fraction of one per change (about 0.4 ms per save, and reading a new
        process's identity blocks while it starts). A supervisor that dies inside the delay
        leaves an agent unrecorded; the restart still finds it by its env tag and, its lease
        held, kills it and records the attempt as lost (retried per policy) instead of
        adopting it: never an orphan or a duplicate."""
        if self._save_due is None:
            self._save_due = self._clock() + self.settings.state_save_delay_s

    def _save_state(self, *, durable: bool = False) -> None:
        assert self._statefile is not None
        state = State(
            format="agent-supervisor/running-agents",
            version=1,
            worker_id=self.worker_id,
            boot_id=procs.boot_id(),
            updated_at=time.time(),
            agents=[a.state_entry() for a in self._agents.values()],
        )
        try:
            self._statefile.save(state, durable=durable)
            self._save_due = None
        except StateFileError as exc:  # keep running: the agents stay supervised in memory
            log.error("could not save the state file: %s", exc)
            self._save_due = self._clock() + _SAVE_RETRY_S  # a full disk: not every tick

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


def _measure_machine(with_load: bool) -> Machine:
    available, total = procs.memory()
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if with_load else None
    return Machine(available, total, load)
