"""The dashboard's queries (bridge/dashboard/queries.py): URL parsing, paging, the chart's buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.dashboard.queries import DURATION_BUCKETS_S, JobQuery, QueryError, bucket, page_jobs
from bridge.service import JobService
from supervisor.lifecycle import Job, JobSpec, Status
from supervisor.settings import KindConfig, Settings
from supervisor.testing import ManualClock, MemoryStore


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, JobQuery()),
        (
            {"status": ["failed", "cancelled"]},
            JobQuery(statuses=frozenset({Status.FAILED, Status.CANCELLED})),
        ),
        ({"status": [""], "kind": [" "], "repo": []}, JobQuery()),
        ({"kind": ["a", "b"]}, JobQuery(kinds=frozenset({"a", "b"}))),
        ({"repo": ["Octo/Notes"]}, JobQuery(repo="Octo/Notes")),
        (
            {"repo": [" https://github.com/Octo/Notes.git "]},
            JobQuery(repo="https://github.com/Octo/Notes.git"),
        ),
        ({"created_after": ["1700000000.5"]}, JobQuery(created_after=1700000000.5)),
        ({"created_before": ["2026-01-01T00:00:00Z"]}, JobQuery(created_before=1767225600.0)),
        ({"limit": ["200"], "offset": ["1000"]}, JobQuery(limit=200, offset=1000)),
    ],
)
def test_query_parses_the_api_parameters(params: dict[str, list[str]], expected: JobQuery) -> None:
    """Statuses and kinds repeat, a repository is taken in any form submit takes, times are
    epoch seconds or ISO 8601, and empty values are absent."""
    assert JobQuery.parse(params) == expected


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"status": ["done"]}, "status"),
        ({"created_after": ["yesterday"]}, "created_after"),
        ({"created_after": ["2026-01-01T00:00:00"]}, "created_after"),  # no time zone: ambiguous
        ({"limit": ["0"]}, "limit"),
        ({"limit": ["201"]}, "limit"),
        ({"limit": ["ten"]}, "limit"),
        ({"offset": ["-1"]}, "offset"),
        ({"repo": ["not a repository"]}, "repo"),
    ],
)
def test_query_refuses_what_it_cannot_use(params: dict[str, list[str]], names: str) -> None:
    """A bad value is a QueryError that names its parameter (the API's 400)."""
    with pytest.raises(QueryError, match=f"^{names}:"):
        JobQuery.parse(params)


@pytest.fixture
def service(tmp_path: Path) -> JobService:
    store = MemoryStore(ManualClock())
    store.enqueue([JobSpec(command=("true",)) for _ in range(5)])
    store.request_cancel(2)
    return JobService(Settings(data_dir=tmp_path), store)


def test_pages_are_newest_first_and_know_if_more_follow(service: JobService) -> None:
    """A page holds ``limit`` jobs newest first after ``offset``; ``has_more`` says whether a
    next page exists, without counting the rest."""
    first = page_jobs(service, JobQuery(limit=2))
    assert [j.id for j in first.jobs] == [5, 4] and first.has_more
    last = page_jobs(service, JobQuery(limit=2, offset=4))
    assert [j.id for j in last.jobs] == [1] and not last.has_more
    exact = page_jobs(service, JobQuery(limit=5))
    assert len(exact.jobs) == 5 and not exact.has_more
    cancelled = page_jobs(service, JobQuery(statuses=frozenset({Status.CANCELLED})))
    assert [j.id for j in cancelled.jobs] == [2] and not cancelled.has_more
    assert cancelled.as_json()["jobs"][0]["status"] == "cancelled"


def test_pages_filter_by_kind_repository_and_creation_time(tmp_path: Path) -> None:
    """Kind, repository (in any form) and creation-time filters reach the store; a filtered
    page still knows whether more follow."""
    clock = ManualClock()
    store = MemoryStore(clock)
    kinds = {"summarize": KindConfig(argv=["true"]), "index": KindConfig(argv=["true"])}
    service = JobService(Settings(data_dir=tmp_path, kinds=kinds), store)
    early = store.enqueue([JobSpec(kind="summarize", repo="octo/notes"), JobSpec(kind="index")])
    clock.advance(100)
    late = store.enqueue([JobSpec(kind="summarize"), JobSpec(kind="summarize", repo="octo/notes")])

    def ids(**params: list[str]) -> list[int]:
        return [j.id for j in page_jobs(service, JobQuery.parse(params)).jobs]

    assert ids(kind=["summarize"]) == [late[1], late[0], early[0]]
    assert ids(kind=["index", "summarize"], limit=["1"]) == [late[1]]
    assert ids(repo=["https://github.com/Octo/Notes.git"]) == [late[1], early[0]]
    assert ids(created_after=[str(clock() - 50)]) == late[::-1]
    assert ids(created_before=[str(clock() - 50)], kind=["index"]) == [early[1]]
    assert page_jobs(service, JobQuery(kinds=frozenset({"summarize"}), limit=2)).has_more


def finished(job_id: int, status: Status, at: float, took: float | None) -> Job:
    started = at - took if took is not None else None
    return Job(id=job_id, status=status, created_at=0.0, updated_at=at, started_at=started, finished_at=at)


def test_buckets_count_finishes_per_minute_within_the_window() -> None:
    """Each finished job counts in its minute by status; jobs before the window, in the
    future, unfinished or not terminal are left out; the last bucket ends at ``now``."""
    now = 10_000.0
    jobs = [
        finished(1, Status.COMPLETED, now - 1, 2.0),
        finished(2, Status.COMPLETED, now - 59.9, 2.0),
        finished(3, Status.FAILED, now - 61, 30.0),
        finished(4, Status.CANCELLED, now - 3599, None),  # cancelled before it ran: no duration
        finished(5, Status.COMPLETED, now - 3600.5, 1.0),  # before the window
        finished(6, Status.COMPLETED, now + 5, 1.0),  # a clock ahead of ours: not yet
        Job(id=7, status=Status.RUNNING, created_at=0.0, updated_at=now, started_at=now - 5),
        finished(8, Status.WAITING_RETRY, now - 1, 1.0),
    ]
    chart = bucket(jobs, now, window_s=3600, bucket_s=60)
    assert len(chart.completed) == 60
    assert chart.completed[59] == 2 and sum(chart.completed) == 2
    assert chart.failed[58] == 1 and sum(chart.failed) == 1
    assert chart.cancelled[0] == 1 and sum(chart.cancelled) == 1
    assert chart.as_json()["start"] == "1970-01-01T01:46:40.000+00:00"


def test_buckets_hold_a_cumulative_duration_histogram() -> None:
    """Durations of the window's jobs fill cumulative buckets (``le`` bounds, then +Inf) and a
    sum, as Prometheus histograms have them."""
    now = 10_000.0
    jobs = [finished(i, Status.COMPLETED, now - 1, took) for i, took in enumerate([0.5, 1.0, 4.0, 9000.0])]
    chart = bucket(jobs, now, window_s=3600, bucket_s=60)
    by_bound = dict(zip((*DURATION_BUCKETS_S, float("inf")), chart.duration_buckets, strict=True))
    assert by_bound[1.0] == 2 and by_bound[5.0] == 3 and by_bound[7200.0] == 3 and by_bound[float("inf")] == 4
    assert chart.duration_sum_s == 9005.5
