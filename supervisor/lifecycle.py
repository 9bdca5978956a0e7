"""The job model and its state machine: pure functions, no clock, no I/O.

Every store (the in-memory one, SQLite, and the SQL functions of the Postgres stores, which
mirror this module) moves a job only through the functions here, so no store is more
permissive than another. Each function takes the job and the time *of the store's clock* and
returns the new job together with the event row to append to ``job_events``.

States and the legal moves (DESIGN.md, "Job lifecycle")::

    pending ──claim──▶ preparing ──start──▶ running ──settle──▶ completed | waiting_retry
       │                    └────────settle──────────┘          | failed | cancelled
       ├──cancel──▶ cancelled          waiting_retry ──promote──▶ pending
    waiting_retry ──cancel──▶ cancelled    failed | cancelled ──manual retry──▶ pending
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from supervisor.errors import IllegalTransitionError, InvalidJobError, LeaseLostError

__all__ = [
    "EDITABLE_FIELDS",
    "LIVE",
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


class Status(StrEnum):
    PENDING = "pending"
    PREPARING = "preparing"
    RUNNING = "running"
    WAITING_RETRY = "waiting_retry"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ErrorKind(StrEnum):
    EXIT_CODE = "exit_code"
    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle_timeout"
    KILLED = "killed"
    LOST = "lost"
    LEASE_LOST = "lease_lost"
    QUEUE_TIMEOUT = "queue_timeout"
    SPAWN_ERROR = "spawn_error"
    CANCELLED = "cancelled"
    INVALID = "invalid"
    RESOURCE_LIMIT = "resource_limit"
    """The agent broke a memory, process-count or CPU-time limit of its kind."""


class CancelMode(StrEnum):
    """How a cancel request stops a running agent: with the grace period, or without."""

    CANCEL = "cancel"
    KILL = "kill"


class DecidedBy(StrEnum):
    """Which part of the system decided a transition (kept with every event)."""

    USER = "user"
    SCHEDULER = "scheduler"
    EXIT = "exit"
    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle_timeout"
    CANCEL = "cancel"
    LEASE = "lease"
    RECONCILE = "reconcile"
    REAPER = "reaper"
    RETRY_POLICY = "retry_policy"
    SHUTDOWN = "shutdown"
    SPAWN = "spawn"
    VALIDATION = "validation"
    LIMIT = "limit"


TERMINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
LIVE: Final = frozenset({Status.PREPARING, Status.RUNNING})
"""Statuses in which a job holds a lease and may have an agent."""

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
    }
)

MAX_PAYLOAD_BYTES: Final = 1 << 20
MAX_PAYLOAD_DEPTH: Final = 64
MAX_KEY_CHARS: Final = 200
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_BACKOFF_S: Final = 10.0
DEFAULT_BACKOFF_CAP_S: Final = 3600.0


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


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a submitter asks for. Exactly one of ``kind`` (a registered agent type) and
    ``command`` (a raw argv, local submissions only) is set."""

    kind: str | None = None
    command: tuple[str, ...] | None = None
    payload: Any = field(default_factory=dict)
    priority: int = 0
    concurrency_key: str | None = None
    dedup_key: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_s: float = DEFAULT_BACKOFF_S
    timeout_s: float | None = None
    idle_timeout_s: float | None = None
    stuck_after_s: float | None = None
    queue_timeout_s: float | None = None

    def __post_init__(self) -> None:
        _validate_spec(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Build a spec from a JSON object (a ``submit --batch`` line, a JSON-RPC param).

        Unknown fields and wrong types are refused with the field's name.
        """
        if not isinstance(data, Mapping):
            raise InvalidJobError(f"a job spec must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - _SPEC_FIELDS)
        if unknown:
            raise InvalidJobError(f"unknown job field {unknown[0]!r}")
        values: dict[str, Any] = dict(data)
        if "key" in values:  # the CLI's --key
            if "concurrency_key" in values:
                raise InvalidJobError("give either 'key' or 'concurrency_key', not both")
            values["concurrency_key"] = values.pop("key")
        if "repo" in values or "owner" in values:  # one running job per repository
            from supervisor.keys import repo_key

            repo, owner = values.pop("repo", None), values.pop("owner", None)
            if not isinstance(repo, str) or not (owner is None or isinstance(owner, str)):
                raise InvalidJobError("'repo' (and 'owner') must be strings; 'owner' needs 'repo'")
            if values.get("concurrency_key") is not None:
                raise InvalidJobError("give either a repo or a concurrency key, not both")
            values["concurrency_key"] = repo_key(repo, owner)
        if "command" in values and values["command"] is not None:
            cmd = values["command"]
            if not isinstance(cmd, list | tuple) or not all(isinstance(a, str) for a in cmd):
                raise InvalidJobError("'command' must be a list of strings")
            values["command"] = tuple(cmd)
        for name in ("priority", "max_attempts"):
            if name in values and (type(values[name]) is not int):
                raise InvalidJobError(f"{name!r} must be an integer")
        for name in ("backoff_s", "timeout_s", "idle_timeout_s", "stuck_after_s", "queue_timeout_s"):
            value = values.get(name)
            if value is not None and (type(value) not in (int, float)):
                raise InvalidJobError(f"{name!r} must be a number of seconds")
            if value is not None:
                values[name] = float(value)
        for name in ("kind", "concurrency_key", "dedup_key"):
            value = values.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidJobError(f"{name!r} must be a string")
        return cls(**values)


_SPEC_FIELDS: Final = frozenset(JobSpec.__dataclass_fields__) | {"key", "repo", "owner"}


def _validate_spec(spec: JobSpec) -> None:
    if (spec.kind is None) == (spec.command is None):
        raise InvalidJobError("a job needs exactly one of 'kind' and 'command'")
    if spec.kind is not None:
        _check_name("kind", spec.kind)
    if spec.command is not None:
        if not spec.command or not spec.command[0]:
            raise InvalidJobError("'command' must not be empty")
        if any("\0" in arg for arg in spec.command):
            raise InvalidJobError("'command' must not contain NUL characters")
    for name in ("concurrency_key", "dedup_key"):
        value = getattr(spec, name)
        if value is not None:
            _check_name(name, value)
    if not -(2**31) <= spec.priority < 2**31:
        raise InvalidJobError("'priority' must fit in 32 bits")
    if not 1 <= spec.max_attempts <= 1000:
        raise InvalidJobError("'max_attempts' must be between 1 and 1000")
    if not (math.isfinite(spec.backoff_s) and 0 <= spec.backoff_s <= 86400 * 7):
        raise InvalidJobError("'backoff_s' must be between 0 and 604800 seconds")
    for name in ("timeout_s", "idle_timeout_s", "stuck_after_s", "queue_timeout_s"):
        value = getattr(spec, name)
        if value is not None and not (math.isfinite(value) and 0 < value <= 86400 * 365):
            raise InvalidJobError(f"{name!r} must be a positive number of seconds")
    check_payload(spec.payload)


def _check_name(name: str, value: str) -> None:
    if not value or len(value) > MAX_KEY_CHARS or not value.isprintable():
        raise InvalidJobError(
            f"{name!r} must be 1 to {MAX_KEY_CHARS} printable characters, got {value!r:.60}"
        )


def check_payload(payload: Any) -> None:
    """Refuse a payload that is not plain JSON, deeper than 64 or larger than 1 MiB."""
    _check_depth(payload, 0)
    try:
        size = len(json.dumps(payload, allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f"'payload' is not plain JSON: {exc}") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidJobError(f"'payload' is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_PAYLOAD_DEPTH:
        raise InvalidJobError(f"'payload' is nested deeper than {MAX_PAYLOAD_DEPTH}")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the store. Times are seconds since the epoch on the store's clock."""

    id: int
    status: Status
    created_at: float
    updated_at: float
    kind: str | None = None
    command: tuple[str, ...] | None = None
    payload: Any = None
    priority: int = 0
    concurrency_key: str | None = None
    dedup_key: str | None = None
    attempt: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    attempt_offset: int = 0
    """Attempts given back (a manual retry, a shutdown): the budget used is attempt - offset.
    ``attempt`` itself only grows, because it is the lease's fencing token."""
    backoff_s: float = DEFAULT_BACKOFF_S
    timeout_s: float | None = None
    idle_timeout_s: float | None = None
    stuck_after_s: float | None = None
    queue_timeout_s: float | None = None
    run_after: float = 0.0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: CancelMode | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    error_kind: ErrorKind | None = None
    error: str | None = None
    result: Any = None
    output_tail: str | None = None
    progress: Any = None
    stats: Any = None
    """Resource use of the running attempt's process tree (rss_bytes, cpu_percent, processes),
    sampled by the supervisor at each heartbeat."""
    started_at: float | None = None
    finished_at: float | None = None
    finished_by: str | None = None
    """Who settled the last attempt: a worker id, or ``reaper``. Makes a replayed finish
    (its first response lost) recognisable as already done."""
    version: int = 1

    @property
    def attempts_used(self) -> int:
        return self.attempt - self.attempt_offset

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class Event:
    """One row of ``job_events``: a transition (or a note, when ``from_status == to_status``)."""

    job_id: int
    at: float
    from_status: Status | None
    to_status: Status
    reason: str
    decided_by: DecidedBy
    worker: str | None = None
    attempt: int = 0
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as the supervisor observed it."""

    error_kind: ErrorKind | None = None
    """None means success (exit code 0)."""
    error: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    result: Any = None
    output_tail: str | None = None
    decided_by: DecidedBy = DecidedBy.EXIT
    facts: Mapping[str, Any] = field(default_factory=dict)
    forgive: bool = False
    """The attempt was interrupted through no fault of the job (supervisor shutdown): it does
    not count against ``max_attempts`` and is retried at once."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (the outbox's lines, the remote stores' finish argument)."""
        return {
            "error_kind": self.error_kind.value if self.error_kind else None,
            "error": self.error,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "result": self.result,
            "output_tail": self.output_tail,
            "decided_by": self.decided_by.value,
            "facts": dict(self.facts),
            "forgive": self.forgive,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        kind = data.get("error_kind")
        return cls(
            error_kind=ErrorKind(kind) if kind else None,
            error=data.get("error"),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            result=data.get("result"),
            output_tail=data.get("output_tail"),
            decided_by=DecidedBy(data.get("decided_by", DecidedBy.EXIT.value)),
            facts=dict(data.get("facts") or {}),
            forgive=bool(data.get("forgive")),
        )


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
        run_after=now,
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
) -> Job:
    """Extend the lease (fenced). Not a transition: no event, and ``version`` stays, so a
    heartbeat never invalidates someone's optimistic update."""
    fence(job, worker, attempt)
    return replace(
        job,
        lease_expires_at=now + lease_s,
        progress=job.progress if progress is None else progress,
        stats=job.stats if stats is None else stats,
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


EDITABLE_FIELDS: Final = frozenset(
    {
        "priority",
        "max_attempts",
        "timeout_s",
        "idle_timeout_s",
        "backoff_s",
        "stuck_after_s",
        "queue_timeout_s",
    }
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
