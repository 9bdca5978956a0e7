"""What the busy paths of the Postgres store read (issue 10): a claim, ``next_due``,
``counts`` and each ``list`` filter read rows in proportion to their answer, never to the queue
or the history. Counted by the server itself (``pg_stat_xact_user_tables``: the rows the
current transaction fetched from ``jobs``), so a plan that scans the table fails here however
fast the machine is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.postgres

HISTORY = 20_000
"""Finished jobs (every 300th failed, every 50th of kind 'rare'), then QUEUED pending ones."""
QUEUED = 1000


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    from tests import pg

    server = pg.server(pytest.skip, pytest.fail)
    name = server.create_database()
    dsn = server.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Rows as the insert trigger makes them (times growing with the id, in the past),
        # without its event and wake-up per row: quicker.
        conn.execute("set session_replication_role = replica")
        conn.execute(
            "insert into public.jobs (kind, concurrency_key, created_at, updated_at, run_after)"
            " select case when g %% 50 = 0 then 'rare' else 'common' end,"
            "        case when g %% 1000 = 0 then 'key' || g end, t, t, t"
            " from generate_series(1, %(n)s) g, lateral (select now() - (%(n)s - g) * interval '1 ms') x(t)",
            {"n": HISTORY + QUEUED},
        )
        conn.execute("set session_replication_role = origin")
        conn.execute(
            "update public.jobs set status = case when id %% 300 = 0 then 'failed' else 'completed' end,"
            " finished_at = created_at where id <= %s",
            (HISTORY,),
        )
        conn.execute("vacuum analyze public.jobs")
        conn.execute("select * from public.jobs_claim('holder', gen_random_uuid(), 3, 600, array['common'])")
    try:
        yield dsn
    finally:
        server.drop_database(name)


def rows_read(dsn: str, sql: str, *args: Any) -> tuple[int, list[Any]]:
    """Rows of ``jobs`` that one call read (sequentially or through an index), and its answer."""
    with psycopg.connect(dsn) as conn, conn.transaction(force_rollback=True):
        answer = conn.execute(sql, args).fetchall()
        row = conn.execute(
            "select seq_tup_read + coalesce(idx_tup_fetch, 0) from pg_stat_xact_user_tables"
            " where relid = 'public.jobs'::regclass"
        ).fetchone()
    assert row is not None
    return int(row[0]), answer


@pytest.mark.parametrize(
    ("filters", "most"),
    [
        ("", 100),
        ("p_statuses => array['failed']", 100),
        ("p_statuses => array['pending']", QUEUED + 100),  # the queue, never the history
        ("p_statuses => array['preparing', 'running']", 100),
        ("p_kinds => array['rare']", 100),
        ("p_lease_owner => 'holder'", 100),
        ("p_concurrency_key => 'key3000'", 100),
        ("p_statuses => array['failed'], p_kinds => array['rare']", 100),
    ],
)
def test_a_list_page_reads_what_it_answers_not_the_history(dsn: str, filters: str, most: int) -> None:
    """A page of 20 jobs newest first, under each filter, reads at most a few pages of rows
    (the pending filter: at most the queue), out of 8,000 jobs."""
    sep = ", " if filters else ""
    read, [(page, _more)] = rows_read(dsn, f"select * from public.jobs_list({filters}{sep}p_limit => 20)")
    assert page, filters
    assert read <= most, (filters, read)


def test_a_claim_reads_a_few_rows_of_the_queue(dsn: str) -> None:
    """Claiming one job of 2,000 pending reads a handful of rows (the claim order's first ones),
    not the queue: the planner must not prefer an index that holds every pending job."""
    read, answer = rows_read(
        dsn, "select id from public.jobs_claim('w', gen_random_uuid(), 1, 60, array['common'])"
    )
    assert len(answer) == 1
    assert read <= 30, read


def test_next_due_and_counts_read_no_history(dsn: str) -> None:
    """next_due reads nothing when nothing waits for a time; counts reads the queue at most."""
    read, [(due, _now)] = rows_read(dsn, "select * from public.jobs_next_due()")
    assert due is None
    assert read <= 10, read
    read, answer = rows_read(dsn, "select * from public.jobs_counts()")
    assert dict((s, n) for s, n, *_ in answer)["completed"] == HISTORY - HISTORY // 300
    assert read <= QUEUED + 100, read
