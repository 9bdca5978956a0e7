"""SQLite ``list``: what it answers equals a filter over every row, and the statement it runs
costs what the answer costs, not what the history holds.

The plans are read with ``EXPLAIN QUERY PLAN`` from the statement the store runs
(``list_statement``), so a filter that slips back to "sort every matching row" (SQLite's
``USE TEMP B-TREE FOR ORDER BY`` over a million finished jobs) fails here rather than in a
dashboard after months of use.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.stores.sqlite import SQLiteStore
from bridge.stores.sqlite_db import list_statement
from supervisor.job import TERMINAL, ErrorKind, Job, JobSpec, Outcome, Status
from supervisor.testing import ManualClock

T0 = 1_700_000_000.0
KINDS = ("a", "b", "c")


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SQLiteStore, list[Job]]]:
    """80 jobs of three kinds, created and finished a second apart, their statuses drawn
    unevenly and in runs (so a page of several statuses is not simply alternate rows)."""
    clock = ManualClock(T0)
    store = SQLiteStore(tmp_path_factory.mktemp("list") / "jobs.sqlite3", clock=clock)
    rng = random.Random(7)
    target = Status.COMPLETED
    for n in range(80):
        clock.advance(1.0)
        if rng.random() < 0.3:  # a new run of one status
            target = rng.choice([Status.PENDING, Status.PREPARING, Status.RUNNING, Status.FAILED, target])
        held = target in (Status.PREPARING, Status.RUNNING)  # they hold their key: give them none
        [job_id] = store.enqueue(
            [
                JobSpec(
                    kind=KINDS[rng.randrange(3)],
                    concurrency_key=None if held else f"k{n % 4}",
                    run_after=T0 + 1e6 if target is Status.PENDING else None,  # never claimed
                    max_attempts=1,
                )
            ]
        )
        if target is Status.PENDING:
            continue
        [job] = store.claim("w", 1, lease_s=60)
        assert job.id == job_id
        if target is Status.PREPARING:
            continue
        store.mark_running(job.id, "w", job.attempt, pid=1000 + n)
        if target is Status.RUNNING:
            continue
        ok = target is Status.COMPLETED
        store.finish(
            job.id,
            "w",
            job.attempt,
            Outcome() if ok else Outcome(exit_code=1, error_kind=ErrorKind.EXIT_CODE),
        )
    try:
        yield store, store.list()
    finally:
        store.close()


def brute(jobs: list[Job], **f: Any) -> list[Job]:
    """The answer by definition: every job, filtered in Python, newest first, paged."""
    out = [
        j
        for j in sorted(jobs, key=lambda j: -j.id)
        if (f["statuses"] is None or j.status in f["statuses"])
        and (f["kinds"] is None or j.kind in f["kinds"])
        and (f["concurrency_key"] is None or j.concurrency_key == f["concurrency_key"])
        and (f["created_after"] is None or j.created_at >= f["created_after"])
        and (f["created_before"] is None or j.created_at < f["created_before"])
        and (
            f["finished_after"] is None
            or (j.finished_at is not None and j.finished_at >= f["finished_after"])
        )
    ]
    start = f["offset"]
    return out[start:] if f["limit"] is None else out[start : start + f["limit"]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    statuses=st.none() | st.sets(st.sampled_from(list(Status)), max_size=4),
    kinds=st.none() | st.sets(st.sampled_from(KINDS), max_size=2),
    concurrency_key=st.none() | st.sampled_from(["k0", "k3"]),
    created_after=st.none() | st.floats(T0 - 1, T0 + 70),
    created_before=st.none() | st.floats(T0 - 1, T0 + 70),
    finished_after=st.none() | st.floats(T0 - 1, T0 + 70),
    limit=st.none() | st.integers(0, 25),
    offset=st.integers(0, 30),
)
def test_list_answers_what_a_filter_over_every_row_answers(
    filled: tuple[SQLiteStore, list[Job]], **f: Any
) -> None:
    store, jobs = filled
    got = [j.id for j in store.list(lease_owner=None, **f)]
    assert got == [j.id for j in brute(jobs, **f)]


def plan(db: sqlite3.Connection, **f: Any) -> list[str]:
    args: dict[str, Any] = {
        "statuses": None,
        "kinds": None,
        "lease_owner": None,
        "concurrency_key": None,
        "created_after": None,
        "created_before": None,
        "finished_after": None,
        "limit": 20,
        "offset": 0,
    }
    args.update(f)
    statement, params = list_statement(**args)
    return [row[3] for row in db.execute(f"explain query plan {statement}", params)]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    SQLiteStore(tmp_path / "jobs.sqlite3").close()  # the store's own schema and indexes
    connection = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        yield connection
    finally:
        connection.close()


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"statuses": ["failed"]},
        {"kinds": ["review"]},
        {"concurrency_key": "github.com/o/r"},
        {"statuses": ["failed"], "kinds": ["review"]},
    ],
    ids=["none", "one-status", "one-kind", "key", "status-and-kind"],
)
def test_a_page_reads_rows_in_id_order_and_stops(db: sqlite3.Connection, filters: dict[str, Any]) -> None:
    """One page of the newest jobs of a status, kind or key walks an index in id order and
    stops at the limit: no step sorts every matching row."""
    steps = plan(db, **filters)
    assert not any("TEMP B-TREE" in step for step in steps), steps


def test_several_statuses_are_one_bounded_scan_each(db: sqlite3.Connection) -> None:
    """``--status completed --status failed`` reads at most limit + offset rows per status
    from the status index (each in id order) and sorts only those."""
    steps = plan(db, statuses=sorted(str(s) for s in TERMINAL), offset=40)
    searches = [s for s in steps if "USING INDEX jobs_status_id" in s]
    assert len(searches) == 3, steps
    assert all("TEMP B-TREE" not in s for s in steps if "SEARCH" in s or "SCAN jobs" in s), steps
    assert "SCAN jobs" not in " ".join(steps), steps


def test_a_finish_window_reads_the_finish_index(db: sqlite3.Connection) -> None:
    """The chart's read (finished in the last hour) is a range of jobs_finished, not a walk of
    every finished job in id order until the page fills."""
    steps = plan(db, statuses=sorted(str(s) for s in TERMINAL), finished_after=T0, limit=5001)
    assert any("USING INDEX jobs_finished (finished_at>?)" in s for s in steps), steps
