"""The job state machine: pure functions, no clock, no I/O (the model is ``supervisor.job``).

Every store (the in-memory one, SQLite, and the SQL functions of the Postgres stores, which
mirror this module) moves a job only through the functions here, so no store is more
permissive than another. Each function takes the job and the time *of the store's clock* and
returns the new job together with the event row to append to ``job_events``.

States and the legal moves (DESIGN.md, "Job lifecycle")::

    pending ──claim──▶ preparing ──start──▶ running ──settle──▶ completed | waiting_retry
       │                    └────────settle──────────┘          | failed | cancelled
       ├──cancel──▶ cancelled          waiting_retry ──promote──▶ pending
    waiting_retry ──cancel──▶ cancelled    failed | cancelled ──manual retry──▶ pending

The model's names are re-exported here, so that a store speaks to one module for both.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from supervisor.errors import IllegalTransitionError, InvalidJobError, LeaseLostError
from supervisor.job import (
    DEFAULT_BACKOFF_CAP_S,
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_ATTEMPTS,
    EDITABLE_FIELDS,
    LIVE,
    MAX_KEY_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    TERMINAL,
    CancelMode,
    DecidedBy,
    ErrorKind,
    Event,
    Job,
    JobSpec,
    Outcome,
    Status,
    check_payload,
)

__all__ = [
    "DEFAULT_BACKOFF_CAP_S",
    "DEFAULT_BACKOFF_S",
    "DEFAULT_MAX_ATTEMPTS",
    "EDITABLE_FIELDS",
    "LIVE",
    "MAX_KEY_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "TERMINAL",
    "CancelMode",
    "DecidedBy",
    "ErrorKind",
    "Event",
    "Job",
    "JobSpec",
    "Outcome",
    "Status",
    "apply_update",
    "backoff_delay",
    "check_payload",
    "claim",
    "expire",
    "fence",
    "heartbeat",
    "is_expired",
    "is_replayed_finish",
    "is_retryable",
    "manual_retry",
    "new_job",
    "note",
    "promote",
    "reap",
    "request_cancel",
    "settle",
    "start",
    "transition",
]

_LEGAL: Final = frozenset(
    {
        (Status.PENDING, Status.PREPARING),
        (Status.PENDING, Status.CANCELLED),
        (Status.PENDING, Status.FAILED),  # queue timeout: it never ran, so it never held a lease
        (Status.WAITING_RETRY, Status.CANCELLED),
        (Status.WAITING_RETRY, Status.PENDING),
        (Status.PREPARING, Status.RUNNING),
        *((src, dst) for src in LIVE for dst in (*TERMINAL, Status.WAITING_RETRY)),
        (Status.FAILED, Status.PENDING),
        (Status.CANCELLED, Status.PENDING),
    }
)

# Failures that a new attempt may cure. Not retried: a queue timeout (waiting longer will not
# help), a cancel (the user asked), and an invalid job (unknown kind, bad payload, command not
# found): running it again fails the same way.
_RETRYABLE: Final = frozenset(
    {
        ErrorKind.EXIT_CODE,
        ErrorKind.TIMEOUT,
        ErrorKind.IDLE_TIMEOUT,
        ErrorKind.KILLED,
        ErrorKind.LOST,
        ErrorKind.LEASE_LOST,
        ErrorKind.SPAWN_ERROR,
        ErrorKind.PREPARE_FAILED,
    }
)


def is_retryable(kind: ErrorKind) -> bool:
    """True when a failure of this kind is worth another attempt (attempts permitting)."""
    return kind in _RETRYABLE


def backoff_delay(attempts_used: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(n-1))].

    Full jitter spreads retries of jobs that failed together (AWS "Exponential Backoff And
    Jitter"); the cap keeps a job that failed many times from sleeping for days.
    """
    if base_s <= 0 or cap_s <= 0:
        return 0.0
    exponent = min(max(attempts_used - 1, 0), 60)  # 2**60 s already exceeds any cap
    return rng.uniform(0.0, min(cap_s, base_s * 2.0**exponent))


def transition(
    job: Job,
    to: Status,
    *,
    now: float,
    reason: str,
    decided_by: DecidedBy,
    worker: str | None = None,
    facts: Mapping[str, Any] | None = None,
    **changes: Any,
) -> tuple[Job, Event]:
    """Move ``job`` to ``to``, refusing illegal moves; bumps ``version`` and ``updated_at``."""
    if (job.status, to) not in _LEGAL:
        raise IllegalTransitionError(f"job {job.id} is {job.status}; it cannot become {to}")
    new = replace(job, status=to, updated_at=now, version=job.version + 1, **changes)
    event = Event(
        job_id=job.id,
        at=now,
        from_status=job.status,
        to_status=to,
        reason=reason,
        decided_by=decided_by,
        worker=worker,
        attempt=new.attempt,
        facts=dict(facts or {}),
    )
    return new, event


def note(
    job: Job,
    *,
    now: float,
    reason: str,
    decided_by: DecidedBy,
    worker: str | None = None,
    facts: Mapping[str, Any] | None = None,
) -> Event:
    """An event that records a fact without changing the status (e.g. a cancel request)."""
    return Event(
        job.id, now, job.status, job.status, reason, decided_by, worker, job.attempt, dict(facts or {})
    )


def new_job(spec: JobSpec, *, job_id: int, now: float) -> tuple[Job, Event]:
    """The row and the creation event for a submitted spec."""
    job = Job(
        id=job_id,
        status=Status.PENDING,
        created_at=now,
        updated_at=now,
        kind=spec.kind,
        command=spec.command,
        payload=spec.payload,
        priority=spec.priority,
        concurrency_key=spec.concurrency_key,
        dedup_key=spec.dedup_key,
        max_attempts=spec.max_attempts,
        backoff_s=spec.backoff_s,
        timeout_s=spec.timeout_s,
        idle_timeout_s=spec.idle_timeout_s,
        stuck_after_s=spec.stuck_after_s,
        queue_timeout_s=spec.queue_timeout_s,
        run_after=now if spec.run_after is None else max(now, spec.run_after),
        repo=spec.repo,
        ref=spec.ref,
        unique_key=spec.unique_key,
    )
    return job, Event(job_id, now, None, Status.PENDING, "submitted", DecidedBy.USER)


def fence(job: Job, worker: str, attempt: int) -> None:
    """Raise LeaseLostError unless (worker, attempt) holds the job's live lease."""
    if job.status not in LIVE or job.lease_owner != worker or job.attempt != attempt:
        holder = f"{job.lease_owner} attempt {job.attempt}" if job.lease_owner else "nobody"
        raise LeaseLostError(
            f"job {job.id}: {worker} attempt {attempt} no longer holds the lease "
            f"(job is {job.status}, held by {holder})"
        )


def claim(job: Job, *, worker: str, now: float, lease_s: float) -> tuple[Job, Event]:
    """pending → preparing: take the lease and start a new attempt (the fencing token)."""
    return transition(
        job,
        Status.PREPARING,
        now=now,
        reason="claimed",
        decided_by=DecidedBy.SCHEDULER,
        worker=worker,
        attempt=job.attempt + 1,
        lease_owner=worker,
        lease_expires_at=now + lease_s,
        cancel_requested=None,
        pid=None,
        exit_code=None,
        signal=None,
        error_kind=None,
        error=None,
        result=None,
        output_tail=None,
        progress=None,
        stats=None,
        started_at=None,
        finished_at=None,
        last_activity_at=None,
    )


def start(
    job: Job,
    *,
    worker: str,
    attempt: int,
    pid: int,
    now: float,
    facts: Mapping[str, Any] | None = None,
) -> tuple[Job, Event]:
    """preparing → running once the agent is spawned (fenced)."""
    fence(job, worker, attempt)
    return transition(
        job,
        Status.RUNNING,
        now=now,
        reason=f"agent started (pid {pid})",
        decided_by=DecidedBy.SPAWN,
        worker=worker,
        facts={"pid": pid, **(facts or {})},
        pid=pid,
        started_at=now,
    )


def heartbeat(
    job: Job,
    *,
    worker: str,
    attempt: int,
    now: float,
    lease_s: float,
    progress: Any = None,
    stats: Any = None,
    active: bool = False,
) -> Job:
    """Extend the lease (fenced). Not a transition: no event, and ``version`` stays, so a
    heartbeat never invalidates someone's optimistic update. New progress, or ``active``
    (the agent wrote output since the last beat), moves ``last_activity_at`` to ``now``."""
    fence(job, worker, attempt)
    return replace(
        job,
        lease_expires_at=now + lease_s,
        progress=job.progress if progress is None else progress,
        stats=job.stats if stats is None else stats,
        last_activity_at=now if active or progress is not None else job.last_activity_at,
    )


def settle(
    job: Job,
    outcome: Outcome,
    *,
    worker: str | None,
    attempt: int | None,
    now: float,
    rng: random.Random,
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
) -> tuple[Job, Event]:
    """Record how an attempt ended and apply the retry policy.

    Fenced by (worker, attempt) unless both are None (the reaper, which acts on expired leases
    with the store's authority). Success → completed; a cancel → cancelled; a retryable
    failure with attempts left → waiting_retry after a full-jitter backoff; else → failed.
    """
    if worker is not None or attempt is not None:
        fence(job, worker or "", attempt if attempt is not None else -1)
    elif job.status not in LIVE:
        raise IllegalTransitionError(f"job {job.id} is {job.status}; there is no attempt to settle")
    offset = job.attempt_offset + (1 if outcome.forgive else 0)
    used = job.attempt - offset
    kind = outcome.error_kind
    run_after = job.run_after
    facts = dict(outcome.facts)
    if kind is None:
        to, reason = Status.COMPLETED, outcome.error or "exit code 0"
    elif kind is ErrorKind.CANCELLED:
        to, reason = Status.CANCELLED, outcome.error or "cancelled"
    elif is_retryable(kind) and (outcome.forgive or used < job.max_attempts):
        delay = 0.0 if outcome.forgive else backoff_delay(used, job.backoff_s, backoff_cap_s, rng)
        run_after = now + delay
        to = Status.WAITING_RETRY
        reason = (
            f"{outcome.error or kind}; retry in {delay:.1f} s (attempt {used} of {job.max_attempts} used)"
        )
        facts["retry_delay_s"] = round(delay, 3)
        facts["retry_decided_by"] = DecidedBy.RETRY_POLICY.value
    else:
        to = Status.FAILED
        why = "not retryable" if not is_retryable(kind) else f"{used} of {job.max_attempts} attempts used"
        reason = f"{outcome.error or kind}; {why}"
    facts.setdefault("exit_code", outcome.exit_code)
    facts.setdefault("signal", outcome.signal)
    return transition(
        job,
        to,
        now=now,
        reason=reason,
        decided_by=outcome.decided_by,
        worker=worker,
        facts=facts,
        attempt_offset=offset,
        run_after=run_after,
        lease_owner=None,
        lease_expires_at=None,
        cancel_requested=None,
        exit_code=outcome.exit_code,
        signal=outcome.signal,
        error_kind=kind,
        error=outcome.error,
        result=outcome.result,
        output_tail=outcome.output_tail,
        finished_at=now,
        finished_by=worker if worker is not None else "reaper",
    )


def is_replayed_finish(job: Job, worker: str, attempt: int) -> bool:
    """True when (worker, attempt) already settled this job and nothing has moved it since:
    a finish retried after its first response was lost then succeeds without writing twice."""
    return (
        job.attempt == attempt
        and job.finished_by == worker
        and job.status in (*TERMINAL, Status.WAITING_RETRY)
    )


def expire(job: Job, *, now: float) -> tuple[Job, Event]:
    """pending → failed: it waited longer than its ``queue_timeout_s`` (since it last became
    runnable); starting it now would do stale work. Not retried."""
    waited = now - job.run_after
    error = f"waited {waited:.0f} s in the queue, past its queue timeout of {job.queue_timeout_s:g} s"
    return transition(
        job,
        Status.FAILED,
        now=now,
        reason=f"{error}; not retryable",
        decided_by=DecidedBy.REAPER,
        error_kind=ErrorKind.QUEUE_TIMEOUT,
        error=error,
        finished_at=now,
        finished_by="reaper",
    )


def is_expired(job: Job, now: float) -> bool:
    """A pending job past its queue timeout."""
    return (
        job.status is Status.PENDING
        and job.queue_timeout_s is not None
        and now - job.run_after > job.queue_timeout_s
    )


def reap(
    job: Job, *, now: float, rng: random.Random, backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S
) -> tuple[Job, Event]:
    """A live job whose lease expired (its supervisor vanished): settle it as ``lost``."""
    holder = job.lease_owner or "?"
    outcome = Outcome(
        error_kind=ErrorKind.LOST,
        error=f"lease of {holder} expired; its supervisor stopped heartbeating",
        decided_by=DecidedBy.REAPER,
        facts={"lease_owner": holder, "lease_expires_at": job.lease_expires_at},
    )
    return settle(job, outcome, worker=None, attempt=None, now=now, rng=rng, backoff_cap_s=backoff_cap_s)


def request_cancel(
    job: Job,
    *,
    now: float,
    mode: CancelMode = CancelMode.CANCEL,
) -> tuple[Job, Event]:
    """Cancel a job that has not started (at once), or flag a live one for its supervisor."""
    if job.status in (Status.PENDING, Status.WAITING_RETRY):
        return transition(
            job,
            Status.CANCELLED,
            now=now,
            reason=f"{mode.value} requested before it ran",
            decided_by=DecidedBy.USER,
            cancel_requested=None,
            error_kind=ErrorKind.CANCELLED,
            error="cancelled before it ran",
            finished_at=now,
        )
    if job.status in LIVE:
        if job.cancel_requested is CancelMode.KILL:
            mode = CancelMode.KILL  # a kill request is never softened by a later cancel
        new = replace(job, cancel_requested=mode, updated_at=now, version=job.version + 1)
        return new, note(job, now=now, reason=f"{mode.value} requested", decided_by=DecidedBy.USER)
    raise IllegalTransitionError(f"job {job.id} is already {job.status}; nothing to cancel")


def promote(job: Job, *, now: float) -> tuple[Job, Event]:
    """waiting_retry → pending once ``run_after`` has come (store time)."""
    return transition(job, Status.PENDING, now=now, reason="backoff over", decided_by=DecidedBy.RETRY_POLICY)


def manual_retry(job: Job, *, now: float) -> tuple[Job, Event]:
    """failed | cancelled → pending with a fresh attempt budget (``attempt`` keeps growing)."""
    return transition(
        job,
        Status.PENDING,
        now=now,
        reason="manual retry",
        decided_by=DecidedBy.USER,
        attempt_offset=job.attempt,
        run_after=now,
        cancel_requested=None,
        error_kind=None,
        error=None,
        finished_at=None,
    )


def apply_update(job: Job, changes: Mapping[str, Any], *, now: float) -> tuple[Job, Event]:
    """An optimistic update's new row (version + 1) and its note. The caller has already
    compared versions; this validates the changes exactly as a new spec would be."""
    bad = sorted(set(changes) - EDITABLE_FIELDS)
    if bad:
        raise InvalidJobError(f"field {bad[0]!r} cannot be updated")
    merged = replace(job, **changes, version=job.version + 1, updated_at=now)
    JobSpec(  # re-validate: an update must not store what a submit would refuse
        kind=merged.kind,
        command=merged.command,
        payload=merged.payload,
        priority=merged.priority,
        max_attempts=merged.max_attempts,
        backoff_s=merged.backoff_s,
        timeout_s=merged.timeout_s,
        idle_timeout_s=merged.idle_timeout_s,
        stuck_after_s=merged.stuck_after_s,
        queue_timeout_s=merged.queue_timeout_s,
    )
    event = note(
        job,
        now=now,
        reason="updated " + ", ".join(sorted(changes)),
        decided_by=DecidedBy.USER,
        facts=dict(changes),
    )
    return merged, event
