"""The supervisor loop: claim jobs, run their agents, keep the store and the state file true.

One thread drives everything (the caller's, or one the host starts with ``start()``): each
tick collects exits, enforces log caps, asks ``scheduler.plan_stops`` what to stop, renews the
leases of all running jobs in one store call, reaps stale leases of other workers, claims work
for free slots, and saves the state file when it changed. Between ticks it blocks in
``procs.Waiter`` until an agent exits, another thread (or a signal) wakes it, a deadline comes,
or it is time to look at the store again — it never busy-polls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Final

from supervisor import procs
from supervisor.datadir import DataDir, DataDirLock, prepare_data_dir, write_private
from supervisor.errors import (
    InvalidJobError,
    LeaseLostError,
    SpawnError,
    StateFileError,
    StoreError,
    StoreUnavailableError,
)
from supervisor.lifecycle import CancelMode, DecidedBy, ErrorKind, Job, JobSpec, Outcome, Status
from supervisor.scheduler import (
    AgentView,
    Kill,
    StopReason,
    StopState,
    Terminate,
    next_due,
    outcome_for,
    plan_stops,
)
from supervisor.settings import KindConfig, Settings
from supervisor.statefile import AgentEntry, State, StateFile
from supervisor.store import Beat, JobStore

__all__ = ["JobChange", "Supervisor", "read_worker_id", "resolve_spec"]

log = logging.getLogger("agent_supervisor")

_CHANGE_BEAT_MIN_S: Final = 0.2
"""Least gap between two heartbeats sent early because the store changed (a cancel)."""
_CHECK_S: Final = 0.1
_FAST_CHECK_S: Final = 0.01
_RACING_LOG_BYTES: Final = 1 << 20
"""Growth between two checks above which a log counts as growing fast."""
_MAX_RESULT_BYTES: Final = 1 << 20
_MAX_PROGRESS_BYTES: Final = 64 << 10
# Our own settings and secrets must never reach an agent's environment.
_PRIVATE_ENV_PREFIXES: Final = ("AGENT_SUPERVISOR_", "SUPABASE_")


@dataclass(frozen=True, slots=True)
class JobChange:
    """A job state change this supervisor caused, for a host's UI (``on_change``)."""

    job_id: int
    from_status: Status | None
    to_status: Status
    reason: str
    attempt: int
    progress: Any = None


def resolve_spec(spec: JobSpec, settings: Settings) -> JobSpec:
    """Check a local submission against the kinds registry and fill in its defaults.

    Raises ``InvalidJobError`` for an unregistered kind, so the mistake is reported at submit
    time, not when an agent fails to start.
    """
    kind = _kind_config(settings, spec.kind)
    timeout = spec.timeout_s or (kind.timeout_s if kind else None) or settings.default_timeout_s
    idle = spec.idle_timeout_s or (kind.idle_timeout_s if kind else None)
    stuck = spec.stuck_after_s or (kind.stuck_after_s if kind else None)
    return replace(spec, timeout_s=timeout, idle_timeout_s=idle, stuck_after_s=stuck)


def _kind_config(settings: Settings, kind: str | None) -> KindConfig | None:
    if kind is None:
        return None
    try:
        return settings.kinds[kind]
    except KeyError:
        known = ", ".join(sorted(settings.kinds)) or "none"
        raise InvalidJobError(f"unknown kind {kind!r} (registered kinds: {known})") from None


@dataclass(eq=False)
class _Agent:
    """A running attempt: the job as claimed, its process, and the stop bookkeeping."""

    job: Job
    proc: procs.AgentProcess
    logcap: procs.LogCap
    entry: AgentEntry
    timeout_s: float | None
    idle_timeout_s: float | None
    last_output: float
    stop: StopState | None = None
    cancel_requested: CancelMode | None = None
    lease_lost: bool = False
    signals: list[dict[str, Any]] = field(default_factory=list)
    progress: Any = None
    progress_mtime: float = 0.0

    @property
    def run_dir(self) -> Path:
        return Path(self.entry.run_dir)

    def view(self) -> AgentView:
        return AgentView(
            job_id=self.job.id,
            started=self.proc.started_mono,
            last_output=self.last_output,
            timeout_s=self.timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            cancel_requested=self.cancel_requested,
            lease_lost=self.lease_lost,
            stop=self.stop,
        )


class Supervisor:
    """Runs agents for jobs from ``store`` under ``settings``; one per data dir.

    ``run()`` blocks until stopped (or until the queue is empty with ``until_idle``);
    ``start()`` runs the same loop in a background thread for hosts. ``request_stop()`` is
    safe from any thread and from signal handlers.
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[JobChange], None] | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self._on_change = on_change
        self._install_signals = install_signal_handlers
        self._rng = random.Random()
        self._agents: dict[int, _Agent] = {}
        self._unrecorded: list[tuple[_Agent, Outcome]] = []
        self._waiter: procs.Waiter | None = None
        self._lock: DataDirLock | None = None
        self._datadir: DataDir | None = None
        self._statefile: StateFile | None = None
        self.worker_id = ""
        self._stopping = False
        self._drain_deadline = 0.0
        self._shutdown_sent = False
        self._thread: threading.Thread | None = None
        self._state_dirty = False
        self._next_beat = 0.0
        self._last_beat = 0.0
        self._next_claim = 0.0
        self._next_reap = 0.0
        self._store_down_until = 0.0
        self._logs_racing = False

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

    def request_stop(self, *, drain: bool = True) -> None:
        """Stop claiming; let running agents finish for up to ``drain_timeout_s`` (or not at
        all with ``drain=False``), then stop them and record their outcome."""
        now = self._clock()
        deadline = now + (self.settings.drain_timeout_s if drain else 0.0)
        self._drain_deadline = min(self._drain_deadline, deadline) if self._stopping else deadline
        self._stopping = True
        if self._waiter is not None:
            self._waiter.wake()

    def start(self, *, until_idle: bool = False) -> threading.Thread:
        """Run the loop in a daemon thread (for hosts); ``stop()`` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this supervisor is already running")
        self._thread = threading.Thread(
            target=self.run, kwargs={"until_idle": until_idle}, name="agent-supervisor", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """``request_stop`` and wait for the background thread to end."""
        self.request_stop(drain=drain)
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

    def reconcile(self) -> None:
        """Only reconcile: settle what a previous run left behind, then release the data dir."""
        self._open()
        self._close()

    @property
    def running_jobs(self) -> list[int]:
        return sorted(self._agents)

    # -- open / close --------------------------------------------------------------------
    def _open(self) -> None:
        self._stopping = False
        self._shutdown_sent = False
        self._datadir = prepare_data_dir(self.settings.data_dir)
        self._lock = DataDirLock(self._datadir)
        self._lock.acquire()
        try:
            self._statefile = StateFile(self._datadir.state_file, self._datadir.quarantine)
            self._waiter = procs.Waiter()
            self._reconcile_on_start()
        except BaseException:
            self._close()
            raise

    def _close(self) -> None:
        if self._statefile is not None and self._state_dirty:
            self._save_state()
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
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
    def _reconcile_on_start(self) -> None:
        """Agree with the state file and the store before claiming anything.

        First version (the reload issue adds adoption): a recorded agent that is still alive
        is killed, one that is gone has its exit status recorded; jobs leased to us that have
        no recorded agent are settled as lost; tagged processes of ours are killed.
        """
        assert self._statefile is not None
        state = self._statefile.load().state  # a bad file is quarantined and logged by load()
        self.worker_id = state.worker_id if state else _new_worker_id()
        boot = procs.boot_id()
        for entry in state.agents if state else []:
            self._reconcile_entry(entry, same_boot=state is not None and state.boot_id == boot)
        recorded = {e.job_id for e in state.agents} if state else set()
        try:
            leased = self.store.list(statuses={Status.PREPARING, Status.RUNNING}, lease_owner=self.worker_id)
        except StoreError as exc:
            log.warning("reconcile: cannot list our leases: %s", exc)
            leased = []
        for job in leased:
            if job.id not in recorded:
                outcome = Outcome(
                    error_kind=ErrorKind.LOST,
                    error="supervisor stopped before its agent was recorded",
                    decided_by=DecidedBy.RECONCILE,
                )
                self._record(job, job.attempt, outcome, note="no agent recorded")
        for tagged in procs.scan_tagged(self.worker_id):
            if procs.signal_process(tagged.pid, tagged.identity, signal.SIGKILL):
                log.warning("reconcile: killed stray agent pid %d of job %s", tagged.pid, tagged.job_id)
        self._save_state()

    def _reconcile_entry(self, entry: AgentEntry, *, same_boot: bool) -> None:
        proc = procs.AgentProcess.attach(
            pid=entry.pid,
            pgid=entry.pgid,
            identity=entry.start_identity,
            started_mono=entry.started_mono,
            log_path=Path(entry.log_path),
            run_dir=Path(entry.run_dir),
            job_id=entry.job_id,
            attempt=entry.attempt,
            worker=entry.worker,
        )
        try:
            facts: dict[str, Any] = {"pid": entry.pid, "reconciled": True}
            if same_boot and procs.same_process(entry.pid, entry.start_identity):
                killed = proc.kill_tree()
                facts["signals"] = [{"signal": "SIGKILL", "pids": killed, "why": "orphan"}]
                outcome = Outcome(
                    error_kind=ErrorKind.LOST,
                    error="agent orphaned by a supervisor restart; killed",
                    decided_by=DecidedBy.RECONCILE,
                    facts=facts,
                )
                note = "orphan killed"
            else:
                status = proc.poll() if same_boot else None
                code = status.exit_code if status else None
                sig = status.signal if status else None
                try:
                    result = _read_result(Path(entry.run_dir)) if code == 0 else None
                except InvalidJobError as exc:
                    result, facts["result_error"] = None, str(exc)
                kind, error, _, _ = outcome_for(
                    exit_code=code,
                    signal_number=sig,
                    stop=None,
                    timeout_s=entry.timeout_s,
                    idle_timeout_s=entry.idle_timeout_s,
                )
                tail = procs.LogCap(
                    Path(entry.log_path), self.settings.log_cap_bytes, self.settings.output_tail_bytes
                ).finish()
                outcome = Outcome(
                    error_kind=kind,
                    error=error,
                    exit_code=code,
                    signal=sig,
                    result=result,
                    output_tail=tail,
                    decided_by=DecidedBy.RECONCILE,
                    facts=facts,
                )
                note = "agent had ended" if code is not None or sig is not None else "agent lost"
        finally:
            proc.close()
        try:
            job = self.store.get(entry.job_id)
        except StoreError as exc:
            log.warning("reconcile: job %d: %s", entry.job_id, exc)
            return
        self._record(job, entry.attempt, outcome, note=note, worker=entry.worker)

    # -- the loop ------------------------------------------------------------------------
    def _loop(self, until_idle: bool) -> None:
        assert self._waiter is not None
        while True:
            now = self._clock()
            changed = self.store.changed()
            self._collect_exits()
            self._retry_unrecorded()
            self._watch_output(now)
            self._act_on_stops(now)
            self._heartbeat_if_due(now, changed)
            if self._stopping:
                if not self._agents:
                    return
                if now >= self._drain_deadline and not self._shutdown_sent:
                    self._shutdown_sent = True
                    for agent in list(self._agents.values()):
                        if agent.stop is None:
                            self._terminate(agent, StopReason.SHUTDOWN, now)
            else:
                self._claim_if_due(now, changed)
                if until_idle and not self._agents and not self._unrecorded and self._queue_idle():
                    return
            if self._state_dirty:
                self._save_state()
            self._waiter.wait(self._next_wake(now))

    def _next_wake(self, now: float) -> float:
        due = min(
            next_due((a.view() for a in self._agents.values()), self.settings.stop_grace_s),
            self._next_beat if self._agents else float("inf"),
        )
        if self._stopping and not self._shutdown_sent:
            due = min(due, self._drain_deadline)
        elif not self._stopping:
            due = min(due, now + self.settings.wake_poll_s)
        if self._agents:
            # Log caps are enforced by checking: 10x a second, 100x while a log grows fast, so
            # an agent writing 1 GB/s overshoots the cap on disk by ~10 MB, not ~100 MB.
            due = min(due, now + (_FAST_CHECK_S if self._logs_racing else _CHECK_S))
        return max(0.0, due - self._clock())

    def _queue_idle(self) -> bool:
        try:
            counts = self.store.counts().by_status
        except StoreError:
            return False
        return not any(
            counts.get(s, 0) for s in (Status.PENDING, Status.PREPARING, Status.RUNNING, Status.WAITING_RETRY)
        )

    # -- claiming and spawning -----------------------------------------------------------
    def _claim_if_due(self, now: float, changed: bool) -> None:
        free = self.settings.concurrency - len(self._agents)
        if free <= 0 or now < self._store_down_until:
            return
        if not changed and now < self._next_claim:
            return
        self._next_claim = now + self.settings.poll_s
        try:
            if now >= self._next_reap:
                self._next_reap = now + self.settings.heartbeat_s
                for job in self.store.reap_stale(self.settings.reap_grace_s):
                    log.warning("reaped job %d: %s", job.id, job.error)
            saturated, limit = self._kind_limits(free)
            jobs = self.store.claim(
                self.worker_id,
                limit,
                lease_s=self.settings.lease_s,
                kinds=self.settings.claim_kinds,
                exclude_kinds=saturated,
            )
        except StoreUnavailableError as exc:
            log.warning("store unavailable, not claiming for %.0f s: %s", self.settings.heartbeat_s, exc)
            self._store_down_until = now + self.settings.heartbeat_s
            return
        if jobs and len(jobs) == limit:
            self._next_claim = 0.0  # there may be more: look again on the next tick
        for job in jobs:
            self._emit(job, Status.PENDING, "claimed")
            self._launch(job)

    def _kind_limits(self, free: int) -> tuple[set[str], int]:
        """Kinds at their ``max_concurrent`` (excluded from the claim), and a claim size that
        cannot overshoot the tightest remaining per-kind limit."""
        running: dict[str, int] = {}
        for agent in self._agents.values():
            if agent.job.kind is not None:
                running[agent.job.kind] = running.get(agent.job.kind, 0) + 1
        saturated, limit = set(), free
        for name, kind in self.settings.kinds.items():
            if kind.max_concurrent is None:
                continue
            room = kind.max_concurrent - running.get(name, 0)
            if room <= 0:
                saturated.add(name)
            else:
                limit = min(limit, room)
        return saturated, limit

    def _launch(self, job: Job) -> None:
        assert self._datadir is not None
        try:
            kind = _kind_config(self.settings, job.kind)
            if kind is None and self.store.shared and not self.settings.allow_remote_commands:
                raise InvalidJobError(
                    "raw commands from a shared store are refused: register a kind for it "
                    "(or set allow_remote_commands)"
                )
        except InvalidJobError as exc:
            self._fail_before_start(job, ErrorKind.INVALID, str(exc))
            return
        run_dir = self._datadir.attempt_dir(job.id, job.attempt)
        payload_file, result_file = run_dir / "payload.json", run_dir / "result.json"
        progress_file = run_dir / "progress.json"
        for stale in (result_file, progress_file, run_dir / "exit"):
            stale.unlink(missing_ok=True)
        write_private(payload_file, json.dumps(job.payload if job.payload is not None else {}).encode())
        argv = (
            kind.render(job.id, job.attempt, str(payload_file), str(result_file))
            if kind
            else list(job.command or ())
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
        env.update(kind.env if kind else {})
        env.update(
            {
                procs.TAG_JOB: str(job.id),
                procs.TAG_ATTEMPT: str(job.attempt),
                procs.TAG_WORKER: self.worker_id,
                "AGENT_SUPERVISOR_PAYLOAD_FILE": str(payload_file),
                "AGENT_SUPERVISOR_RESULT_FILE": str(result_file),
                "AGENT_SUPERVISOR_PROGRESS_FILE": str(progress_file),
            }
        )
        log_path = self._datadir.log_path(job.id, job.attempt)
        try:
            proc = procs.spawn(
                argv,
                env=env,
                run_dir=run_dir,
                log_path=log_path,
                cwd=kind.cwd if kind else None,
                job_id=job.id,
                attempt=job.attempt,
                worker=self.worker_id,
            )
        except SpawnError as exc:
            permanent = exc.errno in (2, 13)  # ENOENT, EACCES: retrying cannot help
            self._fail_before_start(job, ErrorKind.INVALID if permanent else ErrorKind.SPAWN_ERROR, str(exc))
            return
        timeout = job.timeout_s or (kind.timeout_s if kind else None) or self.settings.default_timeout_s
        idle = job.idle_timeout_s or (kind.idle_timeout_s if kind else None)
        entry = AgentEntry(
            job_id=job.id,
            attempt=job.attempt,
            worker=self.worker_id,
            pid=proc.pid,
            pgid=proc.pgid,
            start_identity=proc.identity,
            command=list(argv),
            started_at=time.time(),
            started_mono=proc.started_mono,
            timeout_s=timeout,
            idle_timeout_s=idle,
            log_path=str(log_path),
            run_dir=str(run_dir),
        )
        agent = _Agent(
            job=job,
            proc=proc,
            entry=entry,
            timeout_s=timeout,
            idle_timeout_s=idle,
            logcap=procs.LogCap(log_path, self.settings.log_cap_bytes, self.settings.output_tail_bytes),
            last_output=proc.started_mono,
        )
        self._agents[job.id] = agent
        assert self._waiter is not None
        self._waiter.register(proc)
        self._save_state()  # the pid is on disk before anything else can go wrong
        try:
            agent.job = self.store.mark_running(
                job.id,
                self.worker_id,
                job.attempt,
                proc.pid,
                {"pgid": proc.pgid, "command": list(argv), "log_path": str(log_path)},
            )
            self._emit(agent.job, Status.PREPARING, f"agent started (pid {proc.pid})")
        except LeaseLostError:
            agent.lease_lost = True
        except StoreError as exc:
            log.warning(
                "job %d: could not mark running (%s); it runs on and is recorded at exit", job.id, exc
            )

    def _fail_before_start(self, job: Job, kind: ErrorKind, error: str) -> None:
        log.warning("job %d not started: %s", job.id, error)
        self._record(job, job.attempt, Outcome(error_kind=kind, error=error, decided_by=DecidedBy.SPAWN))

    # -- watching agents -----------------------------------------------------------------
    def _watch_output(self, now: float) -> None:
        self._logs_racing = False
        for agent in self._agents.values():
            before = agent.logcap.size + agent.logcap.dropped
            if agent.logcap.check():
                agent.last_output = now
                grown = agent.logcap.size + agent.logcap.dropped - before
                self._logs_racing |= grown >= _RACING_LOG_BYTES

    def _act_on_stops(self, now: float) -> None:
        views = [a.view() for a in self._agents.values()]
        for action in plan_stops(views, now, self.settings.stop_grace_s):
            agent = self._agents[action.job_id]
            if isinstance(action, Terminate):
                self._terminate(agent, action.reason, now)
            elif isinstance(action, Kill):
                self._kill(agent, action.reason, now)

    def _terminate(self, agent: _Agent, reason: StopReason, now: float) -> None:
        sent = agent.proc.signal_group(signal.SIGTERM)
        agent.stop = StopState(reason, term_at=now)
        agent.signals.append(self._signal_fact("SIGTERM", reason, now, agent, delivered=sent))
        log.info("job %d: SIGTERM (%s)", agent.job.id, reason)

    def _kill(self, agent: _Agent, reason: StopReason, now: float) -> None:
        pids = agent.proc.kill_tree()
        term_at = agent.stop.term_at if agent.stop else None
        agent.stop = StopState(agent.stop.reason if agent.stop else reason, term_at=term_at, kill_at=now)
        fact = self._signal_fact("SIGKILL", reason, now, agent, delivered=bool(pids))
        fact["pids"] = pids
        agent.signals.append(fact)
        log.info("job %d: SIGKILL (%s) to %s", agent.job.id, reason, pids)

    def _signal_fact(
        self, name: str, reason: StopReason, now: float, agent: _Agent, *, delivered: bool
    ) -> dict[str, Any]:
        return {
            "signal": name,
            "why": reason.value,
            "at_s": round(now - agent.proc.started_mono, 3),
            "delivered": delivered,
        }

    def _collect_exits(self) -> None:
        for agent in list(self._agents.values()):
            # Background children of a finished agent die with its attempt.
            status = agent.proc.poll(kill_remnants=True)
            if status is not None:
                self._finish(agent, status)

    def _finish(self, agent: _Agent, status: procs.ExitStatus) -> None:
        assert self._waiter is not None
        self._waiter.unregister(agent.proc)
        agent.proc.close()
        del self._agents[agent.job.id]
        self._state_dirty = True
        tail = agent.logcap.finish()
        kind, error, decided_by, forgive = outcome_for(
            exit_code=status.exit_code,
            signal_number=status.signal,
            stop=agent.stop,
            timeout_s=agent.timeout_s,
            idle_timeout_s=agent.idle_timeout_s,
        )
        facts: dict[str, Any] = {
            "pid": agent.proc.pid,
            "exit_code": status.exit_code,
            "signal": status.signal,
            "peak_rss_bytes": status.peak_rss_bytes,
            "signals": agent.signals,
            "runtime_s": round(self._clock() - agent.proc.started_mono, 3),
            "log_bytes": agent.logcap.size,
            "log_dropped_bytes": agent.logcap.dropped,
        }
        result = None
        if kind is None:
            try:
                result = _read_result(agent.run_dir)
            except InvalidJobError as exc:
                facts["result_error"] = str(exc)
        outcome = Outcome(
            error_kind=kind,
            error=error,
            exit_code=status.exit_code,
            signal=status.signal,
            result=result,
            output_tail=tail,
            decided_by=decided_by,
            facts=facts,
            forgive=forgive,
        )
        self._record(agent.job, agent.job.attempt, outcome, agent=agent)

    def _record(
        self,
        job: Job,
        attempt: int,
        outcome: Outcome,
        *,
        note: str | None = None,
        agent: _Agent | None = None,
        worker: str | None = None,
    ) -> None:
        """Write an attempt's outcome, fenced; keep it for a later tick if the store is down."""
        try:
            new = self.store.finish(job.id, worker or self.worker_id, attempt, outcome)
        except LeaseLostError as exc:
            log.warning("job %d: outcome not recorded, %s", job.id, exc)
            return
        except StoreUnavailableError as exc:
            log.warning("job %d: store unavailable, outcome kept for retry: %s", job.id, exc)
            if agent is not None:
                self._unrecorded.append((agent, outcome))
            return
        if note:
            log.info("reconcile: job %d attempt %d: %s → %s", job.id, attempt, note, new.status)
        reason = new.error or str(new.status)
        if new.status is Status.WAITING_RETRY:
            reason += (
                f"; retry in {max(0.0, new.run_after - new.updated_at):.1f} s "
                f"({new.attempts_used} of {new.max_attempts} attempts used)"
            )
        self._emit(new, job.status, reason)

    def _retry_unrecorded(self) -> None:
        pending, self._unrecorded = self._unrecorded, []
        for agent, outcome in pending:
            self._record(agent.job, agent.job.attempt, outcome, agent=agent)

    # -- heartbeats ----------------------------------------------------------------------
    def _heartbeat_if_due(self, now: float, changed: bool) -> None:
        if not self._agents:
            return
        early = changed and now - self._last_beat >= _CHANGE_BEAT_MIN_S
        if now < self._next_beat and not early:
            return
        self._next_beat = now + self.settings.heartbeat_s
        self._last_beat = now
        beats = [Beat(a.job.id, a.job.attempt, self._read_progress(a)) for a in self._agents.values()]
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
            return
        for reply in replies:
            agent = self._agents.get(reply.job_id)
            if agent is None:
                continue
            agent.cancel_requested = reply.cancel_requested
            if reply.lease_lost and not agent.lease_lost:
                log.warning("job %d: lease lost; stopping its agent", reply.job_id)
                agent.lease_lost = True

    def _read_progress(self, agent: _Agent) -> Any:
        path = agent.run_dir / "progress.json"
        try:
            st = path.stat()
            if st.st_mtime == agent.progress_mtime or st.st_size > _MAX_PROGRESS_BYTES:
                return None
            agent.progress_mtime = st.st_mtime
            agent.progress = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return agent.progress

    # -- state file ----------------------------------------------------------------------
    def _save_state(self) -> None:
        assert self._statefile is not None
        state = State(
            format="agent-supervisor/running-agents",
            version=1,
            worker_id=self.worker_id,
            boot_id=procs.boot_id(),
            updated_at=time.time(),
            agents=[a.entry for a in self._agents.values()],
        )
        try:
            self._statefile.save(state)
            self._state_dirty = False
        except StateFileError as exc:  # keep running: the agents stay supervised in memory
            log.error("could not save the state file: %s", exc)

    # -- notifications -------------------------------------------------------------------
    def _emit(self, job: Job, before: Status | None, reason: str) -> None:
        if self._on_change is None:
            return
        change = JobChange(job.id, before, job.status, reason, job.attempt, job.progress)
        try:
            self._on_change(change)
        except Exception:
            log.exception("on_change callback failed for job %d", job.id)


def read_worker_id(settings: Settings) -> str | None:
    """The worker id recorded in the data dir's state file, read without locking or repair
    (for ``health`` in another process); None when there is no readable one."""
    try:
        data = json.loads((Path(settings.data_dir) / "running-agents.json").read_bytes())
    except (OSError, ValueError):
        return None
    worker = data.get("worker_id") if isinstance(data, dict) else None
    return worker if isinstance(worker, str) else None


def _new_worker_id() -> str:
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{secrets.token_hex(4)}"


def _read_result(run_dir: Path) -> Any:
    """The JSON the agent wrote to its result file, or None when it wrote none."""
    path = run_dir / "result.json"
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_RESULT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidJobError(f"result file unreadable: {exc.strerror}") from exc
    if len(data) > _MAX_RESULT_BYTES:
        raise InvalidJobError(f"result file is larger than {_MAX_RESULT_BYTES} bytes; not stored")
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidJobError(f"result file is not JSON: {exc}") from exc
