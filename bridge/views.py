"""The stable JSON shapes of jobs, events and health, shared by every front end: the CLI's
``--json`` output, the JSON-RPC answers, the web dashboard. The rules behind them are
bridge/service.py's; this module only turns its domain objects into JSON.

Times are ISO 8601 in UTC with milliseconds (``2026-11-22T14:00:00.123+00:00``); durations
are seconds. Fields are only ever added, never renamed or removed (README, "JSON output").
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from supervisor.health import HealthReport
from supervisor.lifecycle import Event, Job

if TYPE_CHECKING:
    from bridge.service import JobDetail

__all__ = ["detail_json", "event_json", "health_json", "iso", "job_json"]


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch → ISO 8601 UTC with milliseconds; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def job_json(job: Job) -> dict[str, Any]:
    """One job as the object printed by ``show --json`` (and each item of ``list --json``)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "command": list(job.command) if job.command is not None else None,
        "status": job.status.value,
        "priority": job.priority,
        "concurrency_key": job.concurrency_key,
        "dedup_key": job.dedup_key,
        "attempt": job.attempt,
        "attempts_used": job.attempts_used,
        "max_attempts": job.max_attempts,
        "backoff_s": job.backoff_s,
        "timeout_s": job.timeout_s,
        "idle_timeout_s": job.idle_timeout_s,
        "stuck_after_s": job.stuck_after_s,
        "pid": job.pid,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "error_kind": job.error_kind.value if job.error_kind else None,
        "error": job.error,
        "result": job.result,
        "output_tail": job.output_tail,
        "progress": job.progress,
        "payload": job.payload,
        "cancel_requested": job.cancel_requested.value if job.cancel_requested else None,
        "lease_owner": job.lease_owner,
        "lease_expires_at": iso(job.lease_expires_at),
        "run_after": iso(job.run_after),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "updated_at": iso(job.updated_at),
        "version": job.version,
    }


def event_json(event: Event) -> dict[str, Any]:
    """One event of a job's log, as each item of ``show --json``'s ``events``."""
    return {
        "at": iso(event.at),
        "from": event.from_status.value if event.from_status else None,
        "to": event.to_status.value,
        "reason": event.reason,
        "decided_by": event.decided_by.value,
        "worker": event.worker,
        "attempt": event.attempt,
        "facts": dict(event.facts),
    }


def detail_json(detail: JobDetail) -> dict[str, Any]:
    """One job with its event log, as ``show --json`` prints it (JSON-RPC ``get``)."""
    data = job_json(detail.job)
    data["events"] = [event_json(e) for e in detail.events]
    return data


def health_json(report: HealthReport) -> dict[str, Any]:
    """The health report as ``health --json`` prints it: the dataclass as a dict."""
    data = asdict(report)
    data["alerts"] = [asdict(a) for a in report.alerts]
    return data
