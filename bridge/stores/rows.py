"""Rows of the SQL functions (``bridge/sql/functions.sql``) as the engine's model, and back.

Both remote stores get the same JSON rows (PostgREST's encoding, which ``PostgresStore``
reproduces with ``json_agg``), so one set of conversions serves both: ``job_from_row`` and
``event_from_row`` read them; ``spec_json``, ``outcome_json`` and ``clean`` build the JSON
arguments; ``check_changes`` validates an update before its round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any, Final

from supervisor.errors import InvalidJobError
from supervisor.lifecycle import (
    EDITABLE_FIELDS,
    CancelMode,
    DecidedBy,
    ErrorKind,
    Event,
    Job,
    JobSpec,
    Outcome,
    Status,
)

__all__ = [
    "check_changes",
    "clean",
    "epoch",
    "event_from_row",
    "job_from_row",
    "outcome_json",
    "spec_json",
]

_JOB_FIELDS: Final = tuple(f.name for f in fields(Job))
_TIMES: Final = frozenset(
    {"created_at", "updated_at", "run_after", "lease_expires_at", "started_at", "finished_at"}
)
_FLOATS: Final = frozenset({"backoff_s", "timeout_s", "idle_timeout_s", "stuck_after_s", "queue_timeout_s"})
_ENUMS: Final = {"status": Status, "cancel_requested": CancelMode, "error_kind": ErrorKind}


def epoch(value: Any) -> float:
    """A timestamptz as JSON (ISO 8601 with offset) → epoch seconds. ``timestamp()`` divides
    exact microseconds, so a time the store got as a float comes back as the same float."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value)


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A ``public.jobs`` row (as JSON) → ``Job``."""
    values: dict[str, Any] = {}
    for name in _JOB_FIELDS:
        value = row.get(name)
        if value is not None:
            if name in _TIMES:
                value = epoch(value)
            elif name in _FLOATS:
                value = float(value)
            elif name == "command":
                value = tuple(value)
            elif name in _ENUMS:
                value = _ENUMS[name](value)
        values[name] = value
    return Job(**values)


def event_from_row(row: Mapping[str, Any]) -> Event:
    src = row["from_status"]
    return Event(
        job_id=int(row["job_id"]),
        at=epoch(row["at"]),
        from_status=None if src is None else Status(src),
        to_status=Status(row["to_status"]),
        reason=row["reason"],
        decided_by=DecidedBy(row["decided_by"]),
        worker=row["worker"],
        attempt=int(row["attempt"]),
        facts=row["facts"] or {},
    )


def clean(value: Any) -> Any:
    """JSON for Postgres: text and jsonb refuse NUL characters and lone surrogates, which an
    agent's output or result file may well contain; an outcome must never be refused for them."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, Mapping):
        return {str(clean(k)): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return clean(str(value))  # facts are diagnostics: keep what is not JSON as its str()


def spec_json(spec: JobSpec) -> dict[str, Any]:
    """One element of the ``p_specs`` argument of jobs_enqueue (a validated spec)."""
    return {
        "kind": spec.kind,
        "command": None if spec.command is None else list(spec.command),
        "payload": spec.payload,
        "priority": spec.priority,
        "concurrency_key": spec.concurrency_key,
        "dedup_key": spec.dedup_key,
        "max_attempts": spec.max_attempts,
        "backoff_s": spec.backoff_s,
        "timeout_s": spec.timeout_s,
        "idle_timeout_s": spec.idle_timeout_s,
        "stuck_after_s": spec.stuck_after_s,
        "queue_timeout_s": spec.queue_timeout_s,
    }


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """The ``p_outcome`` argument of jobs_finish, cleaned for Postgres."""
    cleaned: dict[str, Any] = clean(outcome.to_json())
    return cleaned


def check_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """lifecycle.apply_update's validation, before the round trip: editable fields only, each
    value valid as in a new spec (the editable fields have no rule that spans two of them)."""
    bad = sorted(set(changes) - EDITABLE_FIELDS)
    if bad:
        raise InvalidJobError(f"field {bad[0]!r} cannot be updated")
    try:
        spec = JobSpec.from_dict({"kind": "x", **changes})
    except (TypeError, ValueError) as exc:  # InvalidJobError is a ValueError
        raise InvalidJobError(str(exc) or f"invalid change {dict(changes)!r:.80}") from exc
    return {name: getattr(spec, name) for name in changes}
