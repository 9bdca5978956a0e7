"""Push wake-ups on Postgres (protocol v2, ``PostgresStore.watch``): a dedicated LISTEN
connection waited on in a thread hears every writer, a plain SQL insert included, within
milliseconds, with the job's due time; it reconnects after losing its connection."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from bridge.stores.postgres import PostgresStore
from supervisor.lifecycle import JobSpec
from supervisor.store import Beat
from tests.support import wait_until

pytestmark = pytest.mark.postgres


class Heard:
    """The wake() callback: every due_at it got, with the monotonic time it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float | None]] = []
        self.lock = threading.Lock()

    def __call__(self, due_at: float | None) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), due_at))

    def count(self) -> int:
        with self.lock:
            return len(self.calls)


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStore]:
    made = PostgresStore(pg_dsn)
    try:
        yield made
    finally:
        made.close()


def test_a_plain_sql_insert_wakes_the_watcher_within_milliseconds(pg_dsn: str, store: PostgresStore) -> None:
    """After the first wake (on connect), each INSERT by another connection wakes the watcher:
    20 inserts, p50 well under 300 ms from commit to wake; a delayed job says when it is due."""
    heard = Heard()
    watch = store.watch(heard)
    try:
        assert watch.live and heard.count() == 0  # watch() returns listening; no hint yet
        delays = []
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for n in range(20):
                before = heard.count()
                sent = time.monotonic()
                conn.execute("insert into public.jobs (kind) values (%s)", (f"k{n}",))
                wait_until(lambda: heard.count() > before, 5, interval=0.001, message="a wake-up")  # noqa: B023
                delays.append(heard.calls[before][0] - sent)
            due = time.time() + 3600
            before = heard.count()
            conn.execute(
                "insert into public.jobs (kind, run_after) values ('later', to_timestamp(%s))", (due,)
            )
            wait_until(lambda: heard.count() > before, 5, message="a delayed job's wake-up")
            assert heard.calls[before][1] == pytest.approx(due, abs=0.001)
        assert statistics.median(delays) < 0.3, delays
        print(f"\nplain INSERT -> wake: p50 {statistics.median(delays) * 1000:.1f} ms")
    finally:
        watch.close()
    assert not watch.live


def test_heartbeats_wake_nobody_but_cancels_do(store: PostgresStore) -> None:
    """A heartbeat changes nothing a claimer cares about and wakes nobody; a cancel request does."""
    heard = Heard()
    [job_id] = store.enqueue([JobSpec(kind="k")])
    job = store.claim("w", 1, lease_s=30)[0]
    watch = store.watch(heard)
    try:
        assert watch.live
        store.heartbeat("w", [Beat(job_id, job.attempt)], lease_s=30)
        store.request_cancel(job_id)  # notifies after the heartbeat: ordering proves the first was silent
        wait_until(lambda: heard.count() == 1, 5, message="the cancel's wake-up")
        assert heard.count() == 1
    finally:
        watch.close()


def test_the_watch_reconnects_after_losing_its_connection(pg_dsn: str, store: PostgresStore) -> None:
    """When the server ends the LISTEN connection, live turns False, the watch reconnects on
    its own, wakes once (what happened meanwhile is unknown) and hears inserts again."""
    heard = Heard()
    watch = store.watch(heard)
    try:
        wait_until(lambda: watch.live, 10, message="the watch to connect")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where application_name = 'agent-supervisor watch'"
            )
            wait_until(lambda: heard.count() >= 1 and watch.live, 15, message="a reconnect")
            before = heard.count()
            conn.execute("insert into public.jobs (kind) values ('k')")
            wait_until(lambda: heard.count() > before, 5, message="a wake-up after the reconnect")
    finally:
        watch.close()


def test_close_ends_the_thread_at_once(store: PostgresStore) -> None:
    """close() returns promptly (no poll interval to wait out), twice is fine, no thread left."""
    heard = Heard()
    watch = store.watch(heard)
    wait_until(lambda: watch.live, 10, message="the watch to connect")
    started = time.monotonic()
    watch.close()
    watch.close()
    assert time.monotonic() - started < 1.0
    assert not any(t.name == "agent-supervisor-listen" for t in threading.enumerate())
