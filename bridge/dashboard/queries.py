"""What the dashboard asks of the store: a page of the jobs table, and the last hour's finishes.

Neither asks for more than it shows: a page is one ``list`` call with the store's filters and
``limit + 1`` rows (the extra row says whether a next page exists, so no count of a filtered
set is ever needed); the chart asks only for jobs finished in its window, through the store's
``finished_after`` filter, and never for more than ``MAX_CHART_JOBS`` of them. What that costs
at 1M jobs is the store's plan (README, "At 1M finished jobs").
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from bridge.service import JobService
from bridge.views import iso, job_json
from supervisor.errors import InvalidJobError
from supervisor.keys import repo_key
from supervisor.lifecycle import TERMINAL, Job, Status

__all__ = [
    "DURATION_BUCKETS_S",
    "MAX_CHART_JOBS",
    "MAX_PAGE",
    "JobQuery",
    "Page",
    "QueryError",
    "Throughput",
    "page_jobs",
    "throughput",
]

MAX_PAGE: Final = 200
"""Rows per page at most: a page is rendered whole, and the store reads offset + limit rows."""
DEFAULT_PAGE: Final = 50
MAX_CHART_JOBS: Final = 20_000
"""Finished jobs the chart reads at most (one hour at 5.5 jobs a second); past it the chart
says it is truncated rather than read without bound."""
DURATION_BUCKETS_S: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
"""Upper bounds of the duration histograms (seconds): agents run from seconds to hours."""


class QueryError(ValueError):
    """A query parameter the jobs API cannot use (the API's 400)."""


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A filter and a page of the jobs table, as the page's URL and the API spell them."""

    statuses: frozenset[Status] | None = None
    kinds: frozenset[str] | None = None
    repo: str | None = None
    """A repository in any form ``submit --repo`` takes (a URL, ``owner/repo``)."""
    created_after: float | None = None
    created_before: float | None = None
    limit: int = DEFAULT_PAGE
    offset: int = 0

    @classmethod
    def parse(cls, params: Mapping[str, Sequence[str]]) -> JobQuery:
        """From query parameters: ``status`` and ``kind`` (repeatable), ``repo``,
        ``created_after``/``created_before`` (epoch seconds or ISO 8601), ``limit``, ``offset``.
        Empty values count as absent. ``QueryError`` names the parameter it cannot use."""

        def values(name: str) -> list[str]:
            return [v.strip() for v in params.get(name, ()) if v.strip()]

        statuses: set[Status] = set()
        for text in values("status"):
            try:
                statuses.add(Status(text))
            except ValueError:
                raise QueryError(f"status: unknown status {text!r}") from None
        kinds = set(values("kind"))
        repos = values("repo")
        return cls(
            statuses=frozenset(statuses) or None,
            kinds=frozenset(kinds) or None,
            repo=_repo(repos[-1]) if repos else None,
            created_after=_time("created_after", values("created_after")),
            created_before=_time("created_before", values("created_before")),
            limit=_int("limit", values("limit"), DEFAULT_PAGE, 1, MAX_PAGE),
            offset=_int("offset", values("offset"), 0, 0, None),
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the jobs table: its rows, where it starts, whether more follow."""

    jobs: list[Job]
    offset: int
    limit: int
    has_more: bool

    def as_json(self) -> dict[str, Any]:
        """The API's answer: ``jobs`` in ``bridge.views.job_json``'s shape, and the paging."""
        return {
            "jobs": [job_json(j) for j in self.jobs],
            "offset": self.offset,
            "limit": self.limit,
            "has_more": self.has_more,
        }


def page_jobs(service: JobService, query: JobQuery) -> Page:
    """One page of jobs newest first: one ``list`` call of ``limit + 1`` rows."""
    jobs = service.list(
        query.statuses,
        kinds=query.kinds,
        repo=query.repo,
        created_after=query.created_after,
        created_before=query.created_before,
        limit=query.limit + 1,
        offset=query.offset,
    )
    return Page(jobs[: query.limit], query.offset, query.limit, len(jobs) > query.limit)


@dataclass(frozen=True, slots=True)
class Throughput:
    """Finishes per minute over a window ending ``now``: one bucket per minute, oldest first."""

    now: float
    bucket_s: float
    completed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    truncated: bool = False
    """More jobs finished in the window than were read (``MAX_CHART_JOBS``)."""
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    """Jobs of the window whose last attempt took at most each bound of ``DURATION_BUCKETS_S``,
    then all of them (+Inf): cumulative, as Prometheus buckets are."""
    duration_sum_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The API's answer (``/api/throughput``)."""
        return {
            "now": iso(self.now),
            "start": iso(self.now - self.bucket_s * len(self.completed)),
            "bucket_s": self.bucket_s,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "truncated": self.truncated,
        }


def throughput(
    service: JobService, now: float, *, window_s: float = 3600.0, bucket_s: float = 60.0
) -> Throughput:
    """The jobs finished in the ``window_s`` before ``now``, counted per ``bucket_s`` by status.

    Cost: one ``JobService.finished_since`` of at most ``MAX_CHART_JOBS`` + 1 whole rows,
    meant as a range of the store's finished_at index (README, "At 1M finished jobs": the
    SQLite store's plan does not use it yet).
    """
    jobs = service.finished_since(now - window_s, limit=MAX_CHART_JOBS + 1)
    return bucket(
        jobs[:MAX_CHART_JOBS], now, window_s=window_s, bucket_s=bucket_s, truncated=len(jobs) > MAX_CHART_JOBS
    )


def bucket(
    jobs: Collection[Job], now: float, *, window_s: float, bucket_s: float, truncated: bool = False
) -> Throughput:
    """Count finished jobs per bucket and status; jobs outside the window are left out."""
    n = math.ceil(window_s / bucket_s)
    counts = {s: [0] * n for s in TERMINAL}
    durations = [0] * (len(DURATION_BUCKETS_S) + 1)
    total_s = 0.0
    start = now - n * bucket_s
    for job in jobs:
        if job.finished_at is None or job.status not in TERMINAL:
            continue
        index = math.floor((job.finished_at - start) / bucket_s)
        if not 0 <= index < n:
            continue
        counts[job.status][index] += 1
        if job.started_at is not None:  # a job cancelled before it ran has no duration
            took = max(0.0, job.finished_at - job.started_at)
            total_s += took
            first = bisect.bisect_left(DURATION_BUCKETS_S, took)
            for i in range(first, len(durations)):
                durations[i] += 1
    return Throughput(
        now,
        bucket_s,
        counts[Status.COMPLETED],
        counts[Status.FAILED],
        counts[Status.CANCELLED],
        truncated,
        durations,
        round(total_s, 3),
    )


def _repo(text: str) -> str:
    """``text`` if it names a repository (the service turns it into the repository's key)."""
    try:
        repo_key(text)
    except InvalidJobError as exc:
        raise QueryError(f"repo: {exc}") from None
    return text


def _time(name: str, texts: list[str]) -> float | None:
    if not texts:
        return None
    text = texts[-1]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name}: not epoch seconds or an ISO 8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise QueryError(f"{name}: give a time zone (e.g. Z or +00:00): {text!r}")
    return parsed.timestamp()


def _int(name: str, texts: list[str], default: int, low: int, high: int | None) -> int:
    if not texts:
        return default
    try:
        value = int(texts[-1])
    except ValueError:
        raise QueryError(f"{name}: not a whole number: {texts[-1]!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise QueryError(f"{name}: must be {bound}, got {value}")
    return value
