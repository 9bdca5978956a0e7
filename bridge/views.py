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

from supervisor.job import LIVE, Event, Job

if TYPE_CHECKING:
    from bridge.service import ChangeResult, JobDetail, LogChunk, Queued, Reconciliation, Stopped
    from supervisor.health import HealthReport
    from supervisor.store import PurgeResult
    from supervisor.workspaces import MirrorInfo, PruneReport

__all__ = [
    "change_json",
    "detail_json",
    "event_json",
    "health_json",
    "iso",
    "job_json",
    "logs_json",
    "mirror_json",
    "prune_report_json",
    "purge_json",
    "queued_json",
    "reconcile_json",
]


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
        "unique_key": job.unique_key,
        "repo": job.repo,
        "ref": job.ref,
        "attempt": job.attempt,
        "attempts_used": job.attempts_used,
        "max_attempts": job.max_attempts,
        "backoff_s": job.backoff_s,
        "timeout_s": job.timeout_s,
        "idle_timeout_s": job.idle_timeout_s,
        "stuck_after_s": job.stuck_after_s,
        "queue_timeout_s": job.queue_timeout_s,
        "pid": job.pid,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "error_kind": job.error_kind.value if job.error_kind else None,
        "error": job.error,
        "result": job.result,
        "output_tail": job.output_tail,
        "progress": job.progress,
        "progress_final": job.progress is not None and job.status not in LIVE,
        "stats": job.stats,
        "payload": job.payload,
        "cancel_requested": job.cancel_requested.value if job.cancel_requested else None,
        "lease_owner": job.lease_owner,
        "lease_expires_at": iso(job.lease_expires_at),
        "run_after": iso(job.run_after),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "timeout_at": iso(job.started_at + job.timeout_s)
        if job.started_at is not None and job.timeout_s is not None
        else None,
        "finished_at": iso(job.finished_at),
        "last_activity_at": iso(job.last_activity_at),
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


def queued_json(queued: Queued) -> dict[str, Any]:
    """One submitted job, as ``submit --json`` prints it (an array of them for ``--batch``)."""
    return {
        "id": queued.job_id,
        "status": queued.status.value,
        "queue_position": queued.queue_position,
        "run_after": iso(queued.run_after),
    }


def change_json(result: ChangeResult, stopped: Stopped | None = None) -> dict[str, Any]:
    """One id of ``cancel``/``kill``/``retry --json``: the status after the change (or the
    error that refused it) and, with ``--wait``, whether its agent is gone and how it ended."""
    job = stopped.job if stopped is not None and stopped.job is not None else result.job
    data: dict[str, Any] = {
        "id": result.job_id,
        "ok": result.error is None,
        "status": job.status.value if job is not None else None,
        "before": result.before.value if result.before is not None else None,
        "error": str(result.error) if result.error is not None else None,
    }
    if stopped is not None:
        data["stopped"] = stopped.stopped
        data["how"] = stopped.how
    return data


def purge_json(result: PurgeResult) -> dict[str, Any]:
    """``purge --json`` (and JSON-RPC ``purge``): the ids deleted, and the live ones that got a
    cancel request but had not stopped in time (a later purge deletes them)."""
    return {"deleted": list(result.deleted), "cancel_requested": list(result.cancel_requested)}


def reconcile_json(result: Reconciliation) -> dict[str, Any]:
    """``reconcile --json``: whether it ran, each decision about a left-behind agent, the outbox."""
    return {
        "ran": result.ran,
        "decisions": [
            {"job_id": d.job_id, "attempt": d.attempt, "action": str(d.action.value), "why": d.why}
            for d in result.decisions
        ],
        "outbox_depth": result.outbox_depth,
    }


def logs_json(chunk: LogChunk) -> dict[str, Any]:
    """One chunk of an attempt's log, as ``logs --json`` prints it (one line per chunk with
    ``--follow``) and JSON-RPC ``logs`` answers: the bytes as UTF-8 text (undecodable bytes
    become U+FFFD) and where they sit in the file."""
    return {
        "attempt": chunk.attempt,
        "data": chunk.data.decode("utf-8", errors="replace"),
        "offset": chunk.offset,
        "next_offset": chunk.next_offset,
        "eof": chunk.eof,
        "size": chunk.size,
    }


def mirror_json(mirror: MirrorInfo) -> dict[str, Any]:
    """One mirror of ``workspaces --json`` (and JSON-RPC ``workspaces``): the repository, its
    URL (no credentials: they never enter one), path, size, when last fetched and used (ISO
    8601 UTC) and the ``{job_id, attempt}`` of every worktree made from it."""
    data = mirror.to_json()
    data["fetched_at"], data["used_at"] = iso(mirror.fetched_at), iso(mirror.used_at)
    return data


def prune_report_json(report: PruneReport) -> dict[str, Any]:
    """``workspaces prune --json`` (and JSON-RPC ``workspaces.prune``): worktrees removed and
    kept as ``[job_id, attempt]``, mirrors removed, mirrors skipped as busy, bytes freed."""
    return report.to_json()
