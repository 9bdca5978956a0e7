"""Prometheus metrics: ``/metrics`` on the dashboard and ``agent-supervisor metrics``.

Two sources, kept apart in the names and the HELP texts:

- **From the store and the data dir** (always, every store): jobs by status, admission state,
  utilization, outbox depth, per-agent RSS/CPU, alerts, and what finished in the last hour
  (by outcome, and a duration gauge-histogram), all read at scrape time through
  ``JobService.health()`` and the chart's query (``queries.throughput``). These are gauges:
  a purge or a retry can make them go down.
- **From the supervisor in this process** (``dashboard --run`` only): ``*_total`` counters of
  agent starts and attempt finishes by outcome, and the attempt-duration histogram. Only a
  process that sees each change as it happens can count them monotonically; without one they
  are absent rather than guessed.

Only prometheus-client is imported here (no web framework): the ``metrics`` command uses this
module alone. Each registry is private to its caller, never the library's global one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from bridge.dashboard.queries import DURATION_BUCKETS_S, Throughput
from supervisor.errors import SupervisorError
from supervisor.events import JobChange
from supervisor.health import HealthReport
from supervisor.lifecycle import LIVE, Job, Status

__all__ = ["CONTENT_TYPE", "Recorder", "build_registry", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""What ``render`` writes is the classic text format: every name here is a legacy one, so it
is also valid 0.0.4, which every Prometheus (2.x included) reads. prometheus-client 0.22+
labels its output 1.0.0 (``CONTENT_TYPE_LATEST``), which older servers do not know."""
_ADMISSION_STATES: Final = ("open", "full", "blocked")
_FINISHED: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.WAITING_RETRY})
"""Where an attempt ends; waiting_retry is the outcome of an attempt that failed and will be retried."""


class Recorder:
    """The counters only an in-process supervisor knows, fed by its ``JobChange`` stream."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.starts = Counter(
            "agent_supervisor_job_starts",
            "Agents started by the supervisor running in this process (dashboard --run), since it started.",
            registry=registry,
        )
        self.finishes = Counter(
            "agent_supervisor_job_finishes",
            "Attempts ended under the supervisor running in this process (dashboard --run), by the "
            "status they ended in (waiting_retry: failed, to be retried).",
            ["outcome"],
            registry=registry,
        )
        self.durations = Histogram(
            "agent_supervisor_job_duration_seconds",
            "Attempt durations (store time, agent start to end) under the supervisor running in this "
            "process (dashboard --run), by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )

    def observe(self, change: JobChange) -> bool:
        """Count one change; True when it ended an attempt (then call ``observe_job``)."""
        if change.to_status is Status.RUNNING and change.from_status is not Status.RUNNING:
            self.starts.inc()
        if change.from_status in LIVE and change.to_status in _FINISHED:
            self.finishes.labels(outcome=change.to_status.value).inc()
            return True
        return False

    def observe_job(self, job: Job) -> None:
        """The duration of the attempt that ``job`` (read after its finish) just ended."""
        if job.started_at is not None and job.finished_at is not None and job.status in _FINISHED:
            self.durations.labels(outcome=job.status.value).observe(
                max(0.0, job.finished_at - job.started_at)
            )


class _StoreCollector(Collector):
    """Reads health and the last hour at each scrape. A scrape never fails because the store
    is down: ``agent_supervisor_up`` is then 0, the store's figures are left out, and what
    the data dir knows (agents, outbox, admission) is still there (health needs no store)."""

    def __init__(self, health: Callable[[], HealthReport], last_hour: Callable[[], Throughput]) -> None:
        self._health = health
        self._last_hour = last_hour

    def collect(self) -> Iterator[Metric]:
        up = "1 when the job store answered this scrape."
        try:
            report = self._health()
        except SupervisorError:
            yield GaugeMetricFamily("agent_supervisor_up", up, 0)
            return
        hour: Throughput | None = None
        if report.pending is not None:  # None: health found the store unreachable
            with contextlib.suppress(SupervisorError):
                hour = self._last_hour()
        yield GaugeMetricFamily("agent_supervisor_up", up, int(hour is not None))
        yield from _health_metrics(report)
        if hour is not None:
            yield from _last_hour_metrics(hour)


def _health_metrics(report: HealthReport) -> Iterator[Metric]:
    by_status = {
        "pending": report.pending,
        "waiting_retry": report.waiting_retry,
        "live": report.running,
        "completed": report.completed,
        "failed": report.failed,
        "cancelled": report.cancelled,
    }
    if all(count is not None for count in by_status.values()):
        jobs = GaugeMetricFamily(
            "agent_supervisor_jobs", "Jobs in the store by status (the store's counts).", labels=["status"]
        )
        for status, count in by_status.items():
            jobs.add_metric([status], float(count or 0))
        yield jobs
    admission = GaugeMetricFamily(
        "agent_supervisor_admission",
        "Admission state of this data dir's supervisor (1 for the current state), from its status file.",
        labels=["state"],
    )
    state = report.admission.get("state")
    for name in _ADMISSION_STATES:
        admission.add_metric([name], 1 if state == name else 0)
    yield admission
    yield GaugeMetricFamily(
        "agent_supervisor_supervisor_running",
        "1 when a supervisor on this data dir reported in the last seconds.",
        int(report.supervisor_running),
    )
    yield GaugeMetricFamily(
        "agent_supervisor_running_here", "Live jobs leased to this data dir's worker.", report.running_here
    )
    yield GaugeMetricFamily(
        "agent_supervisor_max_concurrent", "This data dir's concurrency setting.", report.max_concurrent
    )
    yield GaugeMetricFamily(
        "agent_supervisor_utilization", "running_here / max_concurrent, 0..1.", report.utilization
    )
    yield GaugeMetricFamily(
        "agent_supervisor_outbox_depth",
        "Outcomes this data dir's supervisor holds until the store answers again.",
        report.outbox_depth,
    )
    if report.disk.get("files_bytes") is not None:
        yield GaugeMetricFamily(
            "agent_supervisor_attempt_files_bytes",
            "Bytes of every attempt's files (logs, payloads, results) in the data dir.",
            float(report.disk["files_bytes"]),
        )
    for name, value, text in (
        (
            "oldest_pending_age_seconds",
            report.oldest_pending_age_s,
            "How long the oldest pending job has waited.",
        ),
        ("oldest_running_age_seconds", report.oldest_running_age_s, "How long the oldest live job has run."),
    ):
        if value is not None:
            yield GaugeMetricFamily(f"agent_supervisor_{name}", text, value)
    alerts = GaugeMetricFamily(
        "agent_supervisor_alerts", "Health alerts present now, by kind.", labels=["kind"]
    )
    by_kind: dict[str, int] = {}
    for alert in report.alerts:
        by_kind[alert.kind] = by_kind.get(alert.kind, 0) + 1
    for kind, count in sorted(by_kind.items()):
        alerts.add_metric([kind], count)
    yield alerts
    labels = ["job_id", "kind"]
    rss = GaugeMetricFamily(
        "agent_supervisor_agent_rss_bytes",
        "Resident memory of each running agent's process tree.",
        labels=labels,
    )
    cpu = GaugeMetricFamily(
        "agent_supervisor_agent_cpu_percent", "CPU use of each running agent's process tree.", labels=labels
    )
    for agent in report.agents:
        key = [str(agent.get("job_id")), str(agent.get("kind") or "")]
        if agent.get("rss_bytes") is not None:
            rss.add_metric(key, float(agent["rss_bytes"]))
        if agent.get("cpu_percent") is not None:
            cpu.add_metric(key, float(agent["cpu_percent"]))
    yield rss
    yield cpu


def _last_hour_metrics(hour: Throughput) -> Iterator[Metric]:
    note = " Read from the store (finished_at), so present with or without a supervisor in this process."
    finished = GaugeMetricFamily(
        "agent_supervisor_jobs_finished_last_hour",
        "Jobs that finished in the last hour, by final status." + note,
        labels=["outcome"],
    )
    for outcome, counts in (
        ("completed", hour.completed),
        ("failed", hour.failed),
        ("cancelled", hour.cancelled),
    ):
        finished.add_metric([outcome], sum(counts))
    yield finished
    yield GaugeHistogramMetricFamily(
        "agent_supervisor_job_duration_last_hour_seconds",
        "Durations (last attempt, start to end) of the jobs that finished in the last hour." + note,
        buckets=[
            (_le(bound), float(count))
            for bound, count in zip((*DURATION_BUCKETS_S, float("inf")), hour.duration_buckets, strict=True)
        ],
        gsum_value=hour.duration_sum_s,
    )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


def build_registry(
    health: Callable[[], HealthReport],
    last_hour: Callable[[], Throughput],
    *,
    in_process: bool,
) -> tuple[CollectorRegistry, Recorder | None]:
    """A private registry over ``health`` and ``last_hour``; with ``in_process`` also the
    ``Recorder`` whose counters the in-process supervisor's changes feed."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreCollector(health, last_hour))
    return registry, Recorder(registry) if in_process else None


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (version 0.0.4) of everything in ``registry``."""
    return generate_latest(registry)
