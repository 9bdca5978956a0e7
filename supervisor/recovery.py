"""Recovery on start: gather the three views, let ``supervisor.reconcile`` decide, carry it out.

A (re)starting supervisor finds what a previous run left behind: the state file's agents, the
jobs the store still leases to its worker id, and live processes carrying its env tag.
``reconcile_on_start`` joins them, asks the pure decision table in ``supervisor.reconcile``
what to do with each job, and does it: attach to and adopt a live agent, kill one, record the
exit of one that ended while nobody watched, or record a lost attempt. Recording and taking
over an adopted agent belong to the supervisor, which passes them in as ``record`` and
``adopt``. The worker id that names our leases and tags survives here too
(``load_worker_id``), with a backup file so that a quarantined state file costs no leases.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from supervisor import reconcile
from supervisor.attempt import Attempt, limits_of, read_result
from supervisor.clock import Clock
from supervisor.datadir import DataDir, write_private
from supervisor.errors import InvalidJobError, StoreError
from supervisor.job import LIVE, DecidedBy, ErrorKind, Job, Outcome, Status
from supervisor.logcap import LogCap
from supervisor.processes import Agent, Processes, TaggedProcess
from supervisor.reconcile import Action, Decision, OrphanPolicy
from supervisor.scheduler import outcome_for
from supervisor.settings import Settings
from supervisor.statefile import AgentEntry, State
from supervisor.store import JobStore

__all__ = ["Recorder", "load_worker_id", "read_worker_id", "reconcile_on_start"]

log = logging.getLogger("agent_supervisor")


class Recorder(Protocol):
    """Writes an attempt's outcome (the supervisor's ``_record``: fenced, outbox if down)."""

    def __call__(
        self, job_id: int, worker: str, attempt: int, outcome: Outcome, *, before: Status | None
    ) -> None: ...


def reconcile_on_start(
    state: State | None,
    *,
    store: JobStore,
    settings: Settings,
    worker_id: str,
    processes: Processes,
    clock: Clock,
    adopt: Callable[[Attempt], None],
    record: Recorder,
) -> list[Decision]:
    """Make the state file, the store's leases and the live processes agree before claiming
    anything (``supervisor.reconcile`` decides; this carries it out).

    ``state`` is the state file as loaded; adopted agents go to ``adopt`` as attempts (their
    process attached, their log cap checked), outcomes to ``record``. Tagged processes that
    belong to no adopted agent are killed. Returns the decisions, in the order carried out.
    """
    entries = state.agents if state else []
    same_boot = state is not None and state.boot_id == processes.boot_id()
    # Every recorded agent is attached (and closed again unless adopted) before deciding: its
    # exit file is read first, whatever the policy (``reconcile`` module docstring).
    procs = {e.job_id: _attach(processes, e) for e in entries}
    exited = {job_id for job_id, proc in procs.items() if proc.recorded_exit() is not None}
    alive = {
        e.job_id
        for e in entries
        if same_boot and e.job_id not in exited and processes.same_process(e.pid, e.start_identity)
    }
    try:
        jobs = {j.id: j for j in store.list(statuses=LIVE, lease_owner=worker_id)}
        leased = {j.id: j.attempt for j in jobs.values()}
    except StoreError as exc:
        # Cannot see our leases: act as if we still hold those we recorded. Safe, because
        # every write is fenced; the first heartbeat tells which leases are really gone.
        log.warning("reconcile: store unreachable (%s); keeping recorded agents", exc)
        jobs, leased = {}, {e.job_id: e.attempt for e in entries}
    tagged = processes.scan_tagged(worker_id)
    found = reconcile.findings(entries, leased, alive, {t.job_id: t.attempt for t in tagged}, exited)

    def policy(f: reconcile.Finding) -> OrphanPolicy:
        job = jobs.get(f.job_id)
        kind = settings.kinds.get(job.kind) if job and job.kind else None
        return OrphanPolicy((kind.orphan_policy if kind else None) or settings.orphan_policy)

    decisions = reconcile.decide(found, policy)
    by_job = {e.job_id: e for e in entries}
    adopted: set[tuple[int, int]] = set()
    handled: set[int] = set()  # pids already stopped (and recorded) as an attempt's escapees
    carried = []
    for d in decisions:
        log.info("reconcile: job %d attempt %d: %s (%s)", d.job_id, d.attempt, d.action, d.why)
        entry, job = by_job.get(d.job_id), jobs.get(d.job_id)
        proc = procs.get(d.job_id)
        d, attempt = _carry_out(
            d, entry, proc, job, tagged, settings, worker_id, processes, clock, record, handled
        )
        carried.append(d)
        if attempt is not None:
            adopt(attempt)
            adopted.add((attempt.job.id, attempt.job.attempt))
    for t in tagged:  # tagged processes (or cgroup members) that belong to no agent we keep
        if (t.job_id, t.attempt) in adopted or t.pid in handled:
            continue
        if processes.signal_process(t.pid, t.identity, signal.SIGKILL):
            log.warning("reconcile: killed stray process %d (job %s attempt %s)", t.pid, t.job_id, t.attempt)
    return carried


def _attach(processes: Processes, entry: AgentEntry) -> Agent:
    return processes.attach(
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


def _carry_out(
    d: Decision,
    entry: AgentEntry | None,
    proc: Agent | None,
    job: Job | None,
    tagged: list[TaggedProcess],
    settings: Settings,
    worker_id: str,
    processes: Processes,
    clock: Clock,
    record: Recorder,
    handled: set[int],
) -> tuple[Decision, Attempt | None]:
    """Do what ``d`` says; the decision as carried out (``reconcile.settle``), and the attempt
    to adopt, if it says adopt. Pids stopped as escapees are added to ``handled``."""
    if d.action is Action.ADOPT and proc is not None and entry is not None:
        return d, _adoptable(proc, entry, job, settings, worker_id, clock.monotonic())
    killed: list[int] | None = None
    if d.action in (Action.KILL_AND_RECORD, Action.KILL_ONLY):
        if proc is not None:
            killed = proc.kill_tree()
            # the agent may have ended after our look: its exit file, read after the kill, says
            d = reconcile.settle(d, proc.recorded_exit() is not None)
            if d.action is Action.RECORD_EXIT:
                log.info("reconcile: job %d attempt %d: %s (%s)", d.job_id, d.attempt, d.action, d.why)
        else:
            killed = [
                t.pid
                for t in tagged
                if t.job_id == d.job_id and processes.signal_process(t.pid, t.identity, signal.SIGKILL)
            ]
        handled.update(killed)
    facts: dict[str, Any] = {"reconcile": d.action.value, "why": d.why}
    if killed is not None:
        facts["killed_pids"] = killed
    outcome: Outcome | None = None
    if d.action is Action.KILL_AND_RECORD:
        why = f"agent orphaned by a restart; killed ({d.why})"
        outcome = Outcome(error_kind=ErrorKind.LOST, error=why, decided_by=DecidedBy.RECONCILE, facts=facts)
    elif d.action is Action.RECORD_EXIT and proc is not None and entry is not None:
        outcome = _ended_while_away(proc, entry, facts, settings)
        handled.update(e["pid"] for e in facts.get("escaped", ()))
    elif d.action is Action.RECORD_LOST:
        outcome = Outcome(
            error_kind=ErrorKind.LOST,
            error=f"agent lost ({d.why})",
            decided_by=DecidedBy.RECONCILE,
            facts=facts,
        )
    if proc is not None:
        proc.close()
    if outcome is not None:
        record(
            d.job_id,
            entry.worker if entry else worker_id,
            d.attempt,
            outcome,
            before=job.status if job else None,
        )
    return d, None


def _adoptable(
    proc: Agent,
    entry: AgentEntry,
    job: Job | None,
    settings: Settings,
    worker_id: str,
    now: float,
) -> Attempt:
    if job is None:  # store unreachable at start: carry on; the first heartbeat decides
        job = Job(
            id=entry.job_id,
            status=Status.RUNNING,
            created_at=0.0,
            updated_at=0.0,
            attempt=entry.attempt,
            lease_owner=worker_id,
            pid=entry.pid,
        )
    logcap = _logcap(settings, Path(entry.log_path))
    logcap.check()
    kind = settings.kinds.get(job.kind) if job.kind else None
    return Attempt(
        job=job,
        proc=proc,
        logcap=logcap,
        entry=entry,
        last_output=now,
        adopted=True,
        limits=limits_of(kind),
    )


def _ended_while_away(proc: Agent, entry: AgentEntry, facts: dict[str, Any], settings: Settings) -> Outcome:
    """The outcome of an agent that ended while no supervisor watched: its own end as the exit
    file recorded it, its result, its log tail; what is left of its tree is stopped and listed."""
    status = proc.poll(kill_remnants=True)
    recorded = proc.recorded_exit() or status
    code = recorded.exit_code if recorded else None
    sig = recorded.signal if recorded else None
    if status is not None and status.escaped:
        facts["escaped"] = [e.fact() for e in status.escaped]
    result = None
    if code == 0:
        try:
            result = read_result(Path(entry.run_dir))
        except InvalidJobError as exc:
            facts["result_error"] = str(exc)
    kind, error, _, _ = outcome_for(
        exit_code=code,
        signal_number=sig,
        stop=None,
        timeout_s=entry.timeout_s,
        idle_timeout_s=entry.idle_timeout_s,
        limit_breach=proc.limit_breach(),  # e.g. a cgroup OOM kill while no supervisor watched
    )
    tail = _logcap(settings, Path(entry.log_path)).finish()
    facts.update({"pid": entry.pid, "exit_code": code, "signal": sig})
    return Outcome(
        error_kind=kind,
        error=error,
        exit_code=code,
        signal=sig,
        result=result,
        output_tail=tail,
        decided_by=DecidedBy.RECONCILE,
        facts=facts,
    )


def _logcap(settings: Settings, path: Path) -> LogCap:
    return LogCap(path, settings.log_cap_bytes, settings.output_tail_bytes)


# -- the worker id ---------------------------------------------------------------------------
def load_worker_id(datadir: DataDir, state: State | None) -> str:
    """The worker id from the state file, else from its backup file in the data dir (a
    quarantined state file must not cost us our leases), else a new one; the backup is kept
    in step with it."""
    backup = datadir.worker_id_file
    worker = state.worker_id if state else None
    if worker is None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            worker = backup.read_text().strip() or None
    worker = worker or _new_worker_id()
    try:
        if not backup.exists() or backup.read_text().strip() != worker:
            write_private(backup, worker.encode(), durable=True)
    except OSError as exc:
        log.warning("cannot keep the worker id backup %s: %s", backup, exc.strerror)
    return worker


def read_worker_id(settings: Settings) -> str | None:
    """The worker id of the data dir's supervisor, read without locking or repair (for
    ``health`` in another process); None when there is none yet."""
    try:
        worker = DataDir.at(settings.data_dir).worker_id_file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return worker or None


def _new_worker_id() -> str:
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{secrets.token_hex(4)}"
