"""Health tells the truth: without the store it still reports, and each alert fires on the
condition it names (keyed on stable facts, with warning and critical levels)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import StoreUnavailableError
from supervisor.health import check_health
from supervisor.job import JobSpec
from supervisor.settings import Settings
from supervisor.testing import MemoryStore

GIB = 1 << 30


class DownStore(MemoryStore):
    """A store that cannot be reached."""

    def counts(self) -> Any:
        raise StoreUnavailableError("connection refused")

    def list(self, **kw: Any) -> Any:
        raise StoreUnavailableError("connection refused")


def status(**parts: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"pid": 1, "updated_at": time.time(), "agents": [], "admission": {"state": "open"}}
    base.update(parts)
    return base


def kinds(report: Any) -> dict[str, str]:
    return {a.kind: a.level for a in report.alerts}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "d", disk_low_bytes=GIB)


def test_health_without_the_store_reports_local_facts_and_says_since_when(settings: Settings) -> None:
    """An unreachable store gives counts of None, the outbox depth, and a critical
    store_unreachable alert with the supervisor's since-time and last error."""
    since = time.time() - 300
    report = check_health(
        DownStore(),
        settings,
        worker_id="w",
        outbox_depth=3,
        status=status(store={"unreachable_since": since, "last_error": "Postgres down"}),
    )
    assert report.pending is None and report.running is None
    assert report.outbox_depth == 3
    [alert] = [a for a in report.alerts if a.kind == "store_unreachable"]
    assert alert.level == "critical"
    assert "5 min" in alert.message and "Postgres down" in alert.message
    assert "unsynced_outbox" in kinds(report)
    assert report.store["reachable"] is False


def test_admission_blocked_fires_after_a_minute_whatever_the_reason_text(settings: Settings) -> None:
    """The alert keys on how long admission has been blocked (since, kept while the reason's
    word stays the same), not on a text that changes with free memory."""
    store = MemoryStore()
    store.enqueue([JobSpec(command=("x",))])
    blocked = {"state": "blocked", "reason": "memory: 0.3 GiB available ...", "reason_key": "memory"}
    early = check_health(
        store, settings, worker_id=None, status=status(admission={**blocked, "since": time.time() - 30})
    )
    late = check_health(
        store, settings, worker_id=None, status=status(admission={**blocked, "since": time.time() - 90})
    )
    assert "admission_blocked" not in kinds(early)
    assert "admission_blocked" in kinds(late)


def test_never_admissible_names_the_kind_this_machine_cannot_hold(settings: Settings) -> None:
    """A kind whose estimate exceeds total memory minus the reserve is reported."""
    report = check_health(
        MemoryStore(),
        settings,
        worker_id=None,
        status=status(admission={"state": "open", "never_fit": ["big"]}, memory={"total_bytes": 2 * GIB}),
    )
    [alert] = [a for a in report.alerts if a.kind == "never_admissible"]
    assert "big" in alert.message and "2.0 GiB" in alert.message


@pytest.mark.parametrize(("rss", "level"), [(70, None), (85, "warning"), (97, "critical")])
def test_near_limit_has_warning_and_critical_levels(settings: Settings, rss: int, level: str | None) -> None:
    """80 % of an agent's memory limit warns, 95 % is critical, below 80 % nothing."""
    agent = {"job_id": 4, "rss_bytes": rss, "memory_max_bytes": 100}
    report = check_health(MemoryStore(), settings, worker_id=None, status=status(agents=[agent]))
    assert kinds(report).get("near_limit") == level


@pytest.mark.parametrize(("free", "level"), [(2 * GIB, None), (GIB // 2, "warning"), (GIB // 8, "critical")])
def test_disk_low_has_levels(settings: Settings, free: int, level: str | None) -> None:
    """Free space under disk_low_bytes warns; under a quarter of it is critical."""
    report = check_health(
        MemoryStore(),
        settings,
        worker_id=None,
        status=status(disk={"free_bytes": free, "total_bytes": 10 * GIB}),
    )
    assert kinds(report).get("disk_low") == level


def test_a_failed_write_is_disk_full(settings: Settings) -> None:
    """A state or outbox write that failed is a critical disk_full alert, not silence."""
    report = check_health(
        MemoryStore(),
        settings,
        worker_id=None,
        status=status(disk={"free_bytes": 0, "write_error": "No space left on device"}),
    )
    assert kinds(report)["disk_full"] == "critical"


def test_no_supervisor_only_when_work_waits(settings: Settings) -> None:
    """no_supervisor fires when jobs wait and nothing reports in, not on an empty queue."""
    store = MemoryStore()
    assert "no_supervisor" not in kinds(check_health(store, settings, worker_id=None, status=None))
    store.enqueue([JobSpec(command=("x",))])
    assert "no_supervisor" in kinds(check_health(store, settings, worker_id=None, status=None))
