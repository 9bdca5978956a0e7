"""The Prometheus metrics (bridge/dashboard/metrics.py): counters from changes, gauges from health."""

from __future__ import annotations

from bridge.dashboard.metrics import build_registry, render
from bridge.dashboard.queries import Throughput
from supervisor.errors import StoreUnavailableError
from supervisor.events import JobChange
from supervisor.health import Alert, HealthReport
from supervisor.lifecycle import Job, Status

P, PREP, RUN, WAIT = Status.PENDING, Status.PREPARING, Status.RUNNING, Status.WAITING_RETRY
DONE, FAIL, CANCEL = Status.COMPLETED, Status.FAILED, Status.CANCELLED


def report(**fields: object) -> HealthReport:
    base: dict[str, object] = {
        "running": 1,
        "pending": 4,
        "waiting_retry": 0,
        "completed": 7,
        "failed": 2,
        "cancelled": 1,
        "max_concurrent": 2,
        "running_here": 1,
        "utilization": 0.5,
        "oldest_running_age_s": 3.0,
        "oldest_pending_age_s": None,
        "stuck_after_s": 900.0,
        "worker_id": "w",
        "supervisor_running": True,
        "admission": {"state": "full", "reason": "2 of 2 running", "since": 0},
        "agents": [{"job_id": 12, "kind": "summarize", "rss_bytes": 1048576, "cpu_percent": 12.5}],
        "outbox_depth": 3,
        "alerts": [Alert("stuck", "job 12 is stuck", 12), Alert("stuck", "job 13 is stuck", 13)],
    }
    base.update(fields)
    return HealthReport(**base)  # type: ignore[arg-type]


def hour() -> Throughput:
    return Throughput(
        now=0.0,
        bucket_s=60.0,
        completed=[2, 1],
        failed=[0, 1],
        cancelled=[0, 0],
        duration_buckets=[1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 4],
        duration_sum_s=9000.0,
    )


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_store_metrics_come_from_health_and_the_last_hour() -> None:
    """Jobs by status, admission as a one-hot state, outbox, per-agent RSS/CPU, alerts by kind,
    the last hour's finishes and durations; no in-process counter without a supervisor."""
    registry, recorder = build_registry(report, hour, in_process=False)
    assert recorder is None
    text = render(registry).decode()
    got = samples(text)
    assert got['agent_supervisor_jobs{status="pending"}'] == 4
    assert got['agent_supervisor_jobs{status="live"}'] == 1
    assert got['agent_supervisor_admission{state="full"}'] == 1
    assert got['agent_supervisor_admission{state="open"}'] == 0
    assert got["agent_supervisor_outbox_depth"] == 3
    assert got['agent_supervisor_agent_rss_bytes{job_id="12",kind="summarize"}'] == 1048576
    assert got['agent_supervisor_agent_cpu_percent{job_id="12",kind="summarize"}'] == 12.5
    assert got['agent_supervisor_alerts{kind="stuck"}'] == 2
    assert got['agent_supervisor_jobs_finished_last_hour{outcome="completed"}'] == 3
    assert got['agent_supervisor_job_duration_last_hour_seconds_bucket{le="1"}'] == 1
    assert got['agent_supervisor_job_duration_last_hour_seconds_bucket{le="+Inf"}'] == 4
    assert got["agent_supervisor_job_duration_last_hour_seconds_gsum"] == 9000
    assert "agent_supervisor_oldest_pending_age_seconds" not in got  # None: no sample at all
    assert "_total" not in text


def test_an_unreachable_store_is_a_zero_up_gauge_not_a_failed_scrape() -> None:
    """When the store does not answer the scrape still does: ``agent_supervisor_up 0``, no
    store figures, but the data dir's own (agents, outbox); if even health fails, up alone."""

    def unreachable() -> HealthReport:
        return report(
            running=None, pending=None, waiting_retry=None, completed=None, failed=None, cancelled=None
        )

    def chart_down() -> Throughput:
        raise StoreUnavailableError("store down")

    for health, chart in ((unreachable, hour), (report, chart_down)):
        got = samples(render(build_registry(health, chart, in_process=False)[0]).decode())
        assert got["agent_supervisor_up"] == 0
        assert got["agent_supervisor_outbox_depth"] == 3
        assert 'agent_supervisor_agent_rss_bytes{job_id="12",kind="summarize"}' in got
        assert not any(name.startswith("agent_supervisor_jobs_finished") for name in got)
    assert 'agent_supervisor_jobs{status="pending"}' not in samples(
        render(build_registry(unreachable, hour, in_process=False)[0]).decode()
    )

    def broken() -> HealthReport:
        raise StoreUnavailableError("store down")

    assert samples(render(build_registry(broken, hour, in_process=False)[0]).decode()) == {
        "agent_supervisor_up": 0
    }


def change(before: Status | None, after: Status) -> JobChange:
    return JobChange(1, before, after, "test", 1)


def test_recorder_counts_starts_finishes_and_durations() -> None:
    """An agent start counts once; an attempt that ends counts by the status it ended in (a
    failure to be retried as waiting_retry) and asks for the job to time it; a cancel before
    it ran is no attempt."""
    registry, recorder = build_registry(report, hour, in_process=True)
    assert recorder is not None
    assert recorder.observe(change(P, PREP)) is False
    assert recorder.observe(change(PREP, RUN)) is False
    assert recorder.observe(change(RUN, WAIT)) is True
    assert recorder.observe(change(P, CANCEL)) is False
    assert recorder.observe(change(PREP, FAIL)) is True
    assert recorder.observe(change(RUN, DONE)) is True
    recorder.observe_job(
        Job(id=1, status=DONE, created_at=0, updated_at=0, started_at=10.0, finished_at=13.5)
    )
    recorder.observe_job(Job(id=2, status=FAIL, created_at=0, updated_at=0, started_at=None, finished_at=5.0))
    got = samples(render(registry).decode())
    assert got["agent_supervisor_job_starts_total"] == 1
    assert got['agent_supervisor_job_finishes_total{outcome="waiting_retry"}'] == 1
    assert got['agent_supervisor_job_finishes_total{outcome="failed"}'] == 1
    assert got['agent_supervisor_job_finishes_total{outcome="completed"}'] == 1
    assert 'agent_supervisor_job_finishes_total{outcome="cancelled"}' not in got
    assert got['agent_supervisor_job_duration_seconds_bucket{le="5.0",outcome="completed"}'] == 1
    assert got['agent_supervisor_job_duration_seconds_sum{outcome="completed"}'] == 3.5
    assert 'agent_supervisor_job_duration_seconds_count{outcome="failed"}' not in got  # never started
