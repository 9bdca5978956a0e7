"""The stores' rows as the engine's ``Job`` and ``Event``, and back.

The remote stores get the JSON rows of the SQL functions (``bridge/sql/functions.sql``) in one
encoding, PostgREST's, which ``PostgresStore`` reproduces with ``json_agg``; so one set of
conversions serves both: ``job_from_row`` and ``event_from_row`` read them; ``spec_json``,
``outcome_json`` and ``clean`` build the JSON arguments; ``check_changes`` validates an update
before its round trip.

The SQLite store keeps times as REAL seconds and JSON as text (``bridge/sql/sqlite.sql``):
``job_to_sqlite`` / ``job_from_sqlite`` and ``event_to_sqlite`` / ``event_from_sqlite``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

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

if TYPE_CHECKING:
    import sqlite3

__all__ = [
    "check_changes",
    "clean",
    "epoch",
    "event_from_row",
    "event_from_sqlite",
    "event_to_sqlite",
    "job_from_row",
    "job_from_sqlite",
    "job_to_sqlite",
    "outcome_json",
    "spec_json",
]

_JOB_FIELDS: Final = tuple(f.name for f in fields(Job))
_TIMES: Final = frozenset(
    {
        "created_at",
        "updated_at",
        "run_after",
        "lease_expires_at",
        "started_at",
        "finished_at",
        "last_activity_at",
    }
)
_FLOATS: Final = frozenset({"backoff_s", "timeout_s", "idle_timeout_s", "stuck_after_s", "queue_timeout_s"})
_ENUMS: Final = {"status": Status, "cancel_requested": CancelMode, "error_kind": ErrorKind}
_JSON_TEXT: Final = ("payload", "result", "progress", "stats")  # SQLite: JSON kept as text


# -- JSON rows of the SQL functions <-> model --------------------------------------------
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
        "repo": spec.repo,
        "ref": spec.ref,
        "run_after": spec.run_after,
        "unique_key": spec.unique_key,
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


# -- SQLite columns <-> model ------------------------------------------------------------
def _dumps(job_id: int, name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f"job {job_id}: {name!r} is not plain JSON: {exc}") from exc


def job_to_sqlite(job: Job) -> dict[str, Any]:
    """A ``Job`` as the named parameters of the SQLite store's INSERT / UPDATE of a row."""
    row = {name: getattr(job, name) for name in _JOB_FIELDS}
    for name in _JSON_TEXT:
        row[name] = _dumps(job.id, name, row[name])
    row["command"] = None if job.command is None else json.dumps(list(job.command), ensure_ascii=False)
    for name in _ENUMS:
        row[name] = None if row[name] is None else row[name].value
    return row


def job_from_sqlite(row: sqlite3.Row) -> Job:
    """A row of the SQLite ``jobs`` table → ``Job``; ``ValueError`` naming the column when a
    value cannot be read (text that is not UTF-8 arrives as bytes: ``sqlite_db._text``)."""
    values = {name: row[name] for name in _JOB_FIELDS}  # by name: column order is no contract
    for name, value in values.items():
        if isinstance(value, bytes):
            raise ValueError(f"column {name} is not UTF-8 text")  # noqa: TRY004 - bad data, not a bug
    for name in _JSON_TEXT:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    if values["command"] is not None:
        values["command"] = tuple(json.loads(values["command"]))
    for name, enum in _ENUMS.items():
        if values[name] is not None:
            values[name] = enum(values[name])
    return Job(**values)


def event_to_sqlite(event: Event) -> tuple[Any, ...]:
    """An ``Event`` as the parameters of the SQLite store's ``insert_event``."""
    # Facts are diagnostics: a value that is not JSON is kept as its str() rather than refusing
    # the transition it describes.
    facts = json.dumps(dict(event.facts), ensure_ascii=False, default=str)
    from_status = None if event.from_status is None else event.from_status.value
    return (event.job_id, event.at, from_status, event.to_status.value, event.reason,
            event.decided_by.value, event.worker, event.attempt, facts)  # fmt: skip


def event_from_sqlite(row: Sequence[Any]) -> Event:
    """A row of the SQLite store's ``events`` statement → ``Event``."""
    job_id, at, src, dst, reason, decided_by, worker, attempt, facts = row
    src = None if src is None else Status(src)
    return Event(
        job_id, at, src, Status(dst), reason, DecidedBy(decided_by), worker, attempt, json.loads(facts)
    )
