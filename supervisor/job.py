"""The job model: statuses, failure kinds, the submitted ``JobSpec`` with its validation, the
stored ``Job``, its ``Event`` rows and an attempt's ``Outcome``. Frozen dataclasses, no I/O.

How a job moves between statuses is ``supervisor.lifecycle``'s business; this module only says
what a job *is* and what a valid one looks like, so that every store and front end checks a
submission the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from supervisor.errors import InvalidJobError

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
    "check_payload",
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
    PREPARE_FAILED = "prepare_failed"
    """Its workspace could not be made ready (a fetch or checkout failed); retried."""


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

MAX_PAYLOAD_BYTES: Final = 1 << 20
MAX_PAYLOAD_DEPTH: Final = 64
MAX_KEY_CHARS: Final = 200
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_BACKOFF_S: Final = 10.0
DEFAULT_BACKOFF_CAP_S: Final = 3600.0


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
    repo: str | None = None
    """The repository the agent works on (a git URL, a local path, or ``owner/repo``): the
    agent gets a checkout of it, and one job per repository runs at a time (unless
    ``concurrency_key`` says otherwise)."""
    ref: str | None = None
    """The branch, tag or commit of ``repo`` to check out (default: its default branch)."""
    run_after: float | None = None
    """Not before this time (seconds since the epoch, the store's clock): a delayed job."""
    unique_key: str | None = None
    """At most one job with this key ever exists (until purged): submitting another returns
    the existing id, whatever its status (recurring schedules key each slot so)."""

    def __post_init__(self) -> None:
        _validate_spec(self)
        if self.repo is not None and self.concurrency_key is None:
            from supervisor.keys import repo_key

            bare = "/" not in self.repo and ":" not in self.repo
            try:
                object.__setattr__(self, "concurrency_key", repo_key(self.repo))
            except InvalidJobError:
                if not bare:
                    raise
                # A bare name: the default_owner setting completes it (submission.resolve_spec).

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
            if owner is not None:
                repo_key(repo, owner)  # a typo is caught here, with the owner's name in the message
            values["repo"] = repo.strip() if owner is None else f"{owner.strip()}/{repo.strip()}"
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
        run_after = values.get("run_after")
        if run_after is not None:
            if type(run_after) not in (int, float):
                raise InvalidJobError("'run_after' must be a time in seconds since the epoch")
            values["run_after"] = float(run_after)
        for name in ("kind", "concurrency_key", "dedup_key", "ref", "unique_key"):
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
    for name in ("concurrency_key", "dedup_key", "unique_key", "repo", "ref"):
        value = getattr(spec, name)
        if value is not None:
            _check_name(name, value)
    if spec.run_after is not None and not (math.isfinite(spec.run_after) and spec.run_after >= 0):
        raise InvalidJobError("'run_after' must be a time in seconds since the epoch")
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
    repo: str | None = None
    ref: str | None = None
    unique_key: str | None = None
    last_activity_at: float | None = None
    """When the running attempt last showed life beyond its heartbeat: new output or
    progress (store clock; None until it does)."""
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
