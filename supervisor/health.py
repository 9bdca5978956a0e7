"""Queue health: counts, ages, admission and alerts that a person (or a plugin's status bar)
can act on.

Computed from the store (two calls: ``counts()`` and the live jobs) plus the data dir's
``status.json``, which the running supervisor rewrites with what only it knows (admission
state, per-agent samples, limit enforcement). So ``agent-supervisor health`` in another
process sees the same picture as the supervisor itself.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from supervisor.admission import recommend
from supervisor.datadir import DataDir
from supervisor.lifecycle import LIVE, Status
from supervisor.settings import Settings
from supervisor.store import JobStore

__all__ = ["Alert", "HealthReport", "check_health", "read_status"]

_STATUS_FRESH_S: Final = 15.0
"""A status file older than this is from a supervisor that is gone (it rewrites every 5 s)."""
_BLOCKED_ALERT_S: Final = 60.0
_NEAR_LIMIT: Final = 0.9


@dataclass(frozen=True, slots=True)
class Alert:
    """Something wrong with the queue, in one sentence."""

    kind: str
    """``stuck`` | ``lease_expired`` | ``queue_backlog`` | ``high_queue_depth`` |
    ``admission_blocked`` | ``near_limit`` | ``unsynced_outbox`` | ``no_supervisor``"""
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
    stuck_after_s: float
    """The default threshold past which a running job counts as stuck."""
    worker_id: str | None
    supervisor_running: bool
    """A supervisor on this data dir has reported in the last few seconds."""
    admission: dict[str, Any] = field(default_factory=dict)
    """``state`` (open | full | blocked), ``reason``, ``since`` (epoch seconds)."""
    memory: dict[str, Any] = field(default_factory=dict)
    """``available_bytes``, ``total_bytes``, ``reserve_bytes`` as last measured."""
    limits_enforcement: str | None = None
    """How per-agent limits are enforced here (cgroup v2/v1, or rlimits and sampling)."""
    agents: list[dict[str, Any]] = field(default_factory=list)
    """Per running agent of this supervisor: job_id, kind, rss_bytes, cpu_percent, processes."""
    recommended_concurrency: int | None = None
    """What this machine can sustain, from observed per-agent peak memory and CPU."""
    outbox_depth: int = 0
    """Outcomes this data dir's supervisor holds until the store answers again."""
    alerts: list[Alert] = field(default_factory=list)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The running supervisor's ``status.json`` if it is fresh and its process lives."""
    try:
        status = json.loads(DataDir.at(data_dir).status_file.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or time.time() - float(status.get("updated_at", 0)) > _STATUS_FRESH_S:
        return None
    try:
        os.kill(int(status["pid"]), 0)
    except (KeyError, ValueError, TypeError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # alive, someone else's: cannot be, the data dir is private, but it is alive
    return status


def check_health(
    store: JobStore,
    settings: Settings,
    *,
    worker_id: str | None,
    outbox_depth: int = 0,
    status: dict[str, Any] | None = None,
) -> HealthReport:
    """The health of the queue for ``worker_id``'s supervisor (``status`` from read_status)."""
    counts = store.counts()
    now = counts.now
    by = counts.by_status
    live = store.list(statuses=LIVE)
    alerts = _job_alerts(live, settings, now)
    pending = by.get(Status.PENDING, 0)
    oldest_pending = now - counts.oldest_pending_created_at if counts.oldest_pending_created_at else None
    if oldest_pending is not None and oldest_pending > settings.stuck_after_s:
        alerts.append(
            Alert("queue_backlog", f"{pending} jobs pending; the oldest has waited {_age(oldest_pending)}")
        )
    if pending > 10 * settings.concurrency:
        alerts.append(Alert("high_queue_depth", f"{pending} jobs pending for {settings.concurrency} slots"))
    if outbox_depth:
        alerts.append(Alert("unsynced_outbox", f"{outbox_depth} outcomes wait in the outbox for the store"))
    status = status or {}
    admission = dict(status.get("admission") or {})
    blocked_for = time.time() - float(admission.get("since") or time.time())
    if admission.get("state") == "blocked" and pending and blocked_for > _BLOCKED_ALERT_S:
        alerts.append(
            Alert("admission_blocked", f"no agent started for {_age(blocked_for)}: {admission.get('reason')}")
        )
    agents = list(status.get("agents") or [])
    alerts += _limit_alerts(agents)
    if not status and (pending or by.get(Status.WAITING_RETRY, 0)):
        alerts.append(
            Alert("no_supervisor", f"{pending} jobs pending and no supervisor runs on this data dir")
        )
    memory = dict(status.get("memory") or {})
    here = sum(1 for j in live if worker_id is not None and j.lease_owner == worker_id)
    oldest_running = now - counts.oldest_running_started_at if counts.oldest_running_started_at else None
    return HealthReport(
        running=sum(by.get(s, 0) for s in LIVE),
        pending=pending,
        waiting_retry=by.get(Status.WAITING_RETRY, 0),
        completed=by.get(Status.COMPLETED, 0),
        failed=by.get(Status.FAILED, 0),
        cancelled=by.get(Status.CANCELLED, 0),
        max_concurrent=settings.concurrency,
        running_here=here,
        utilization=round(min(1.0, here / settings.concurrency), 3),
        oldest_running_age_s=round(oldest_running, 3) if oldest_running is not None else None,
        oldest_pending_age_s=round(oldest_pending, 3) if oldest_pending is not None else None,
        stuck_after_s=settings.stuck_after_s,
        worker_id=worker_id,
        supervisor_running=bool(status),
        admission=admission,
        memory=memory,
        limits_enforcement=status.get("enforcement"),
        agents=agents,
        recommended_concurrency=recommend(
            int(memory.get("total_bytes") or 0),
            settings.memory_reserve_bytes,
            os.cpu_count() or 1,
            status.get("observed_peak_rss_bytes"),
            status.get("observed_cpu_percent"),
        ),
        outbox_depth=outbox_depth,
        alerts=alerts,
    )


def _job_alerts(live: list[Any], settings: Settings, now: float) -> list[Alert]:
    alerts = []
    for job in sorted(live, key=lambda j: j.id):
        stuck_after = job.stuck_after_s or settings.stuck_after_s
        started = job.started_at or job.updated_at
        if now - started > stuck_after:
            alerts.append(
                Alert(
                    "stuck",
                    f"job {job.id} has run for {_age(now - started)}, past its stuck "
                    f"threshold of {_age(stuck_after)}",
                    job.id,
                )
            )
        if job.lease_expires_at is not None and now > job.lease_expires_at + settings.reap_grace_s:
            alerts.append(
                Alert(
                    "lease_expired",
                    f"job {job.id}: supervisor {job.lease_owner} stopped "
                    f"heartbeating {_age(now - job.lease_expires_at)} ago",
                    job.id,
                )
            )
    return alerts


def _limit_alerts(agents: list[dict[str, Any]]) -> list[Alert]:
    alerts = []
    for agent in agents:
        for used, limit, what in (
            ("rss_bytes", "memory_max_bytes", "memory"),
            ("processes", "pids_max", "processes"),
        ):
            value, cap = agent.get(used), agent.get(limit)
            if value is not None and cap and value >= _NEAR_LIMIT * cap:
                alerts.append(
                    Alert(
                        "near_limit",
                        f"job {agent.get('job_id')} uses {value / cap:.0%} of its {what} limit",
                        agent.get("job_id"),
                    )
                )
    return alerts


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
