"""Queue health: counts, ages and alerts that a person (or a plugin's status bar) can act on.

Computed from the store alone, so ``agent-supervisor health`` in another process sees the same
picture as the running supervisor. Two store calls: ``counts()`` and the list of live jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.lifecycle import LIVE, Status
from supervisor.settings import Settings
from supervisor.store import JobStore

__all__ = ["Alert", "HealthReport", "check_health"]


@dataclass(frozen=True, slots=True)
class Alert:
    """Something wrong with the queue, in one sentence."""

    kind: str
    """``stuck`` | ``lease_expired`` | ``queue_backlog`` | ``unsynced_outbox``"""
    message: str
    job_id: int | None = None


@dataclass(frozen=True, slots=True)
class HealthReport:
    running: int
    """Jobs preparing or running, on any supervisor sharing the store."""
    pending: int
    waiting_retry: int
    completed: int
    failed: int
    cancelled: int
    max_concurrent: int
    """This supervisor's concurrency setting."""
    running_here: int
    """Live jobs leased to this data dir's worker id."""
    utilization: float
    """running_here / max_concurrent, 0..1."""
    oldest_running_age_s: float | None
    oldest_pending_age_s: float | None
    worker_id: str | None
    outbox_depth: int = 0
    """Outcomes this data dir's supervisor holds until the store answers again."""
    alerts: list[Alert] = field(default_factory=list)


def check_health(
    store: JobStore, settings: Settings, *, worker_id: str | None, outbox_depth: int = 0
) -> HealthReport:
    """The health of the queue as seen from the store, for ``worker_id``'s supervisor."""
    counts = store.counts()
    now = counts.now
    by = counts.by_status
    live = store.list(statuses=LIVE)
    alerts: list[Alert] = []
    for job in sorted(live, key=lambda j: j.id):
        stuck_after = job.stuck_after_s or settings.stuck_after_s
        started = job.started_at or job.updated_at
        if now - started > stuck_after:
            alerts.append(
                Alert(
                    "stuck",
                    f"job {job.id} has run for {_age(now - started)}, past its stuck threshold of "
                    f"{_age(stuck_after)}",
                    job.id,
                )
            )
        if job.lease_expires_at is not None and now > job.lease_expires_at + settings.reap_grace_s:
            alerts.append(
                Alert(
                    "lease_expired",
                    f"job {job.id}: supervisor {job.lease_owner} stopped heartbeating "
                    f"{_age(now - job.lease_expires_at)} ago",
                    job.id,
                )
            )
    oldest_pending = now - counts.oldest_pending_created_at if counts.oldest_pending_created_at else None
    if oldest_pending is not None and oldest_pending > settings.stuck_after_s:
        alerts.append(
            Alert(
                "queue_backlog",
                f"{by.get(Status.PENDING, 0)} jobs pending; the oldest has waited {_age(oldest_pending)}",
            )
        )
    if outbox_depth:
        alerts.append(
            Alert(
                "unsynced_outbox",
                f"{outbox_depth} outcomes wait in the outbox for the store to answer again",
            )
        )
    here = sum(1 for j in live if worker_id is not None and j.lease_owner == worker_id)
    oldest_running = now - counts.oldest_running_started_at if counts.oldest_running_started_at else None
    return HealthReport(
        running=sum(by.get(s, 0) for s in LIVE),
        pending=by.get(Status.PENDING, 0),
        waiting_retry=by.get(Status.WAITING_RETRY, 0),
        completed=by.get(Status.COMPLETED, 0),
        failed=by.get(Status.FAILED, 0),
        cancelled=by.get(Status.CANCELLED, 0),
        max_concurrent=settings.concurrency,
        running_here=here,
        utilization=round(min(1.0, here / settings.concurrency), 3),
        oldest_running_age_s=round(oldest_running, 3) if oldest_running is not None else None,
        oldest_pending_age_s=round(oldest_pending, 3) if oldest_pending is not None else None,
        worker_id=worker_id,
        outbox_depth=outbox_depth,
        alerts=alerts,
    )


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
