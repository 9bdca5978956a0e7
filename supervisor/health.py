"""Queue health: counts, ages, admission, disk and alerts that a person (or a plugin's status
bar) can act on.

Computed from the store (two calls: ``counts()``, constant time, and the live jobs) plus the
data dir's ``status.json``, which the running supervisor rewrites with what only it knows
(admission, per-agent samples and progress, the store's reachability, disk use). So
``agent-supervisor health`` in another process sees the same picture as the supervisor.

Health never needs the store: when it cannot be reached, what only this machine knows (its
agents, its outbox, its disk) is still reported, the store's counts are None, and the alert
``store_unreachable`` says since when and why.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from supervisor.admission import recommend
from supervisor.datadir import DataDir
from supervisor.errors import StoreError
from supervisor.job import LIVE, Job, Status
from supervisor.retention import disk_use
from supervisor.settings import Settings
from supervisor.status import FRESH_S
from supervisor.store import JobStore

__all__ = ["ALERT_KINDS", "Alert", "HealthReport", "check_health", "read_status"]

_BLOCKED_ALERT_S: Final = 60.0
ALERT_KINDS: Final = (
    "stuck",
    "lease_expired",
    "queue_backlog",
    "high_queue_depth",
    "admission_blocked",
    "never_admissible",
    "near_limit",
    "unsynced_outbox",
    "no_supervisor",
    "store_unreachable",
    "disk_low",
    "disk_full",
)

Level = Literal["warning", "critical"]


@dataclass(frozen=True, slots=True)
class Alert:
    """Something wrong with the queue, in one sentence."""

    kind: str
    """One of ``ALERT_KINDS``."""
    message: str
    job_id: int | None = None
    level: Level = "warning"
    """``critical``: work is stopped or about to be lost; ``warning``: look at it soon."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    running: int | None
    """Jobs preparing or running, on any supervisor sharing the store (None: store unreachable)."""
    pending: int | None
    waiting_retry: int | None
    completed: int | None
    failed: int | None
    cancelled: int | None
    max_concurrent: int
    """This supervisor's concurrency setting."""
    running_here: int
    """Live jobs leased to this data dir's worker id (its agents, while the store is away)."""
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
    """``state`` (open | full | blocked), ``reason``, ``reason_key``, ``since`` (epoch
    seconds), ``never_fit`` (kinds this machine can never give enough memory)."""
    memory: dict[str, Any] = field(default_factory=dict)
    """``available_bytes``, ``total_bytes``, ``reserve_bytes`` as last measured."""
    limits_enforcement: str | None = None
    """How per-agent limits are enforced here (cgroup v2/v1, or rlimits and sampling)."""
    agents: list[dict[str, Any]] = field(default_factory=list)
    """Per running agent of this supervisor: job_id, kind, rss_bytes, cpu_percent, processes,
    progress, started_at, timeout_at, last_activity_at."""
    recommended_concurrency: int | None = None
    """What this machine can sustain, from observed per-agent peak memory and CPU."""
    outbox_depth: int = 0
    """Outcomes this data dir's supervisor holds until the store answers again."""
    alerts: list[Alert] = field(default_factory=list)
    can_increase_concurrency: dict[str, Any] = field(default_factory=dict)
    """``answer`` (bool) and ``reason``: may ``concurrency`` go up on this machine?"""
    store: dict[str, Any] = field(default_factory=dict)
    """``reachable``, ``push`` (hints arrive without polling), ``unreachable_since``,
    ``last_error``."""
    disk: dict[str, Any] = field(default_factory=dict)
    """``files_bytes`` and ``files`` (every attempt's files), ``swept_at``, ``free_bytes``,
    ``total_bytes`` of the data dir's file system, ``write_error``."""
    escapees_unattributed: int = 0
    """Escaped processes (an agent's descendants that left its process group) this data dir's
    supervisor stopped without a job to name since it started: each one is also logged.
    Those with a job are in that job's event facts (``escaped``)."""
    workspaces: dict[str, Any] = field(default_factory=dict)
    """``repositories`` held in the data dir, ``worktrees``, ``bytes``, and ``held`` (which
    jobs hold a worktree of which repository)."""


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The running supervisor's ``status.json`` if it is fresh and its process lives."""
    try:
        status = json.loads(DataDir.at(data_dir).status_file.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or time.time() - float(status.get("updated_at", 0)) > FRESH_S:
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
    wall: float | None = None,
) -> HealthReport:
    """The health of the queue for ``worker_id``'s supervisor (``status`` from read_status);
    ``wall`` is the time to judge ages at (default: now)."""
    status = status or {}
    wall = time.time() if wall is None else wall
    alerts: list[Alert] = []
    by: Mapping[Status, int] | None = None
    live: list[Job] = []
    oldest_running = oldest_pending = None
    try:
        counts = store.counts()
        live = store.list(statuses=LIVE)
    except StoreError as exc:
        alerts.append(_unreachable(status, exc, wall))
    else:
        now = counts.now
        by = counts.by_status
        alerts += _job_alerts(live, settings, now)
        if counts.oldest_pending_created_at is not None:
            oldest_pending = now - counts.oldest_pending_created_at
        if counts.oldest_running_started_at is not None:
            oldest_running = now - counts.oldest_running_started_at
        alerts += _queue_alerts(by, oldest_pending, settings, status, wall)
    if outbox_depth:
        alerts.append(
            Alert("unsynced_outbox", f"{_jobs(outbox_depth, 'outcome')} wait in the outbox for the store")
        )
    agents = list(status.get("agents") or [])
    alerts += _limit_alerts(agents, settings)
    alerts += _never_fit_alerts(status)
    disk = _disk(status, settings)
    alerts += _disk_alerts(disk, settings)
    memory = dict(status.get("memory") or {})
    here = len(agents) if by is None else sum(1 for j in live if worker_id and j.lease_owner == worker_id)
    advice = recommend(
        int(memory.get("total_bytes") or 0),
        settings.memory_reserve_bytes,
        os.cpu_count() or 1,
        list(status.get("observed_peak_rss_bytes") or []),
        list(status.get("observed_cpu_percent") or []),
        current=settings.concurrency,
    )
    store_view = dict(status.get("store") or {})
    store_view["reachable"] = by is not None
    return HealthReport(
        running=None if by is None else sum(by.get(s, 0) for s in LIVE),
        pending=None if by is None else by.get(Status.PENDING, 0),
        waiting_retry=None if by is None else by.get(Status.WAITING_RETRY, 0),
        completed=None if by is None else by.get(Status.COMPLETED, 0),
        failed=None if by is None else by.get(Status.FAILED, 0),
        cancelled=None if by is None else by.get(Status.CANCELLED, 0),
        max_concurrent=settings.concurrency,
        running_here=here,
        utilization=round(min(1.0, here / settings.concurrency), 3),
        oldest_running_age_s=round(oldest_running, 3) if oldest_running is not None else None,
        oldest_pending_age_s=round(oldest_pending, 3) if oldest_pending is not None else None,
        stuck_after_s=settings.stuck_after_s,
        worker_id=worker_id,
        supervisor_running=bool(status),
        admission=dict(status.get("admission") or {}),
        memory=memory,
        limits_enforcement=status.get("enforcement"),
        agents=agents,
        recommended_concurrency=advice.concurrency,
        outbox_depth=outbox_depth,
        alerts=alerts,
        can_increase_concurrency={"answer": advice.can_increase, "reason": advice.reason},
        store=store_view,
        disk=disk,
        escapees_unattributed=int(status.get("escapees_unattributed") or 0),
        workspaces=_workspaces(Path(settings.data_dir)),
    )


def _workspaces(data_dir: Path) -> dict[str, Any]:
    """``workspaces_summary``, without loading the git machinery where no job ever had a
    repository (most data dirs)."""
    if not DataDir.at(data_dir).workspaces.exists():
        return {"repositories": 0, "worktrees": 0, "bytes": 0, "held": []}
    from supervisor.workspaces import workspaces_summary

    return workspaces_summary(data_dir)


def _unreachable(status: Mapping[str, Any], exc: StoreError, wall: float) -> Alert:
    seen = dict(status.get("store") or {})
    since = seen.get("unreachable_since") or wall
    why = seen.get("last_error") or str(exc)
    return Alert(
        "store_unreachable",
        f"the store has not answered for {_age(wall - float(since))}: {why}",
        level="critical",
    )


def _queue_alerts(
    by: Mapping[Status, int],
    oldest_pending: float | None,
    settings: Settings,
    status: Mapping[str, Any],
    wall: float,
) -> list[Alert]:
    alerts = []
    pending = by.get(Status.PENDING, 0)
    if oldest_pending is not None and oldest_pending > settings.stuck_after_s:
        alerts.append(
            Alert("queue_backlog", f"{_jobs(pending)} pending; the oldest has waited {_age(oldest_pending)}")
        )
    if pending > 10 * settings.concurrency:
        alerts.append(Alert("high_queue_depth", f"{_jobs(pending)} pending for {settings.concurrency} slots"))
    admission = dict(status.get("admission") or {})
    blocked_for = wall - float(admission.get("since") or wall)
    if admission.get("state") == "blocked" and pending and blocked_for > _BLOCKED_ALERT_S:
        alerts.append(
            Alert("admission_blocked", f"no agent started for {_age(blocked_for)}: {admission.get('reason')}")
        )
    if not status and (pending or by.get(Status.WAITING_RETRY, 0)):
        alerts.append(
            Alert("no_supervisor", f"{_jobs(pending)} pending and no supervisor runs on this data dir")
        )
    return alerts


def _job_alerts(live: list[Job], settings: Settings, now: float) -> list[Alert]:
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


def _limit_alerts(agents: list[dict[str, Any]], settings: Settings) -> list[Alert]:
    alerts = []
    for agent in agents:
        for used, limit, what in (
            ("rss_bytes", "memory_max_bytes", "memory"),
            ("processes", "pids_max", "processes"),
        ):
            value, cap = agent.get(used), agent.get(limit)
            if value is None or not cap or value < settings.near_limit_warning * cap:
                continue
            level: Level = "critical" if value >= settings.near_limit_critical * cap else "warning"
            alerts.append(
                Alert(
                    "near_limit",
                    f"job {agent.get('job_id')} uses {value / cap:.0%} of its {what} limit",
                    agent.get("job_id"),
                    level,
                )
            )
    return alerts


def _never_fit_alerts(status: Mapping[str, Any]) -> list[Alert]:
    never = (status.get("admission") or {}).get("never_fit") or []
    if not never:
        return []
    total = (status.get("memory") or {}).get("total_bytes") or 0
    names = ", ".join(never)
    return [
        Alert(
            "never_admissible",
            f"the memory estimate of {names} exceeds what this machine can give "
            f"({_gib(total)} minus the reserve): such jobs are left for a bigger machine; "
            "lower the estimate or the reserve to run them here",
        )
    ]


def _disk(status: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    disk = dict(status.get("disk") or {})
    if disk.get("free_bytes") is None:  # no supervisor: measure the file system ourselves
        use = disk_use(Path(settings.data_dir))
        if use is not None:
            disk.update(free_bytes=use.free_bytes, total_bytes=use.total_bytes)
    return disk


def _disk_alerts(disk: Mapping[str, Any], settings: Settings) -> list[Alert]:
    alerts = []
    error = disk.get("write_error")
    if error:
        alerts.append(Alert("disk_full", f"the data dir cannot be written: {error}", level="critical"))
    free = disk.get("free_bytes")
    low = settings.disk_low_bytes
    if free is not None and low and free < low:
        level: Level = "critical" if free < low / 4 else "warning"
        alerts.append(Alert("disk_low", f"{_gib(free)} free on the data dir's disk", level=level))
    return alerts


def _jobs(n: int, noun: str = "job") -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
