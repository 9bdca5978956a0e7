"""A retry that arrives while the first call is still running (a gateway timeout, a 5xx with the
database call in flight) is harmless: with two real connections, the second call of
jobs_enqueue (same request id) and of jobs_claim (same claim id) waits for the first to commit
and then returns its answer, creating and claiming nothing more (issue 10, finding 4)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support import wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def two(pg_dsn: str) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    with psycopg.connect(pg_dsn) as first, psycopg.connect(pg_dsn, autocommit=True) as second:
        yield first, second


def overlapped(
    first: psycopg.Connection[Any], second: psycopg.Connection[Any], statement: str, args: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    """Run ``statement`` on ``first`` in an open transaction, then on ``second`` while the first
    is still open; commit the first once the second waits on a lock. Both answers."""
    one = first.execute(statement, args).fetchall()  # the transaction stays open
    answers: list[Any] = []
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            answers.extend(second.execute(statement, args).fetchall())
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=retry)
    thread.start()
    pid = second.info.backend_pid
    with psycopg.connect(first.info.dsn, autocommit=True) as monitor:

        def waiting() -> bool:
            row = monitor.execute(
                "select wait_event_type from pg_stat_activity where pid = %s", (pid,)
            ).fetchone()
            return bool(row and row[0] == "Lock") or not thread.is_alive()

        wait_until(waiting, 10, message="the retry to reach the database")
    assert thread.is_alive(), "the retry did not wait for the first call"
    time.sleep(0.05)  # it stays blocked: nothing it could do before the commit
    assert thread.is_alive()
    first.commit()
    thread.join(timeout=10)
    assert not errors, errors
    return one, answers


def test_an_overlapping_enqueue_retry_returns_the_same_ids_and_inserts_nothing(
    two: tuple[psycopg.Connection[Any], psycopg.Connection[Any]],
) -> None:
    """The retry blocks on the request id, then replays the first call's ids: no 23505, no
    second batch."""
    first, second = two
    args = {"specs": json.dumps([{"kind": "a"}, {"kind": "b"}]), "request": str(uuid.uuid4())}
    one, again = overlapped(
        first, second, "select * from public.jobs_enqueue(%(specs)s::jsonb, %(request)s::uuid)", args
    )
    assert one[0][0] == again[0][0]
    assert (one[0][1], again[0][1]) == ([True, True], [False, False])
    assert second.execute("select count(*) from public.jobs").fetchone() == (2,)


def test_an_overlapping_claim_retry_returns_the_same_jobs_and_claims_nothing_more(
    two: tuple[psycopg.Connection[Any], psycopg.Connection[Any]],
) -> None:
    """The retry blocks on the claim id, then returns the job the first call took; the other
    pending jobs stay pending (before: it took a second job under the same claim id)."""
    first, second = two
    second.execute("select * from public.jobs_enqueue(%s::jsonb)", (json.dumps([{"kind": "k"}] * 3),))
    args = {"claim": str(uuid.uuid4())}
    statement = "select id, attempt from public.jobs_claim('w', %(claim)s::uuid, 1, 30)"
    one, again = overlapped(first, second, statement, args)
    assert one == again and len(one) == 1
    counts = dict(second.execute("select status, count(*) from public.jobs group by status").fetchall())
    assert counts == {"preparing": 1, "pending": 2}
