"""An idle supervisor on a remote store respects the request budget and still starts new work
at once (issue 10): no claims while its push channel is live, at most one per ``poll_s``
while it is not, and a job inserted with plain SQL starts within 300 ms (p50), on the
Supabase stand-in (Realtime) and on Postgres (LISTEN)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from bridge.stores.postgres import PostgresStore
from bridge.stores.supabase import SupabaseStore
from supervisor.lifecycle import Status
from supervisor.runner import Supervisor
from supervisor.settings import load_settings
from tests.standin.counting import counting
from tests.standin.postgrest import PostgrestStandin
from tests.support import kill_tagged, wait_until

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore:ConnectionClosed.code is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:ConnectionClosed.reason is deprecated:DeprecationWarning"),
]


Make = Callable[[bool], Any]


@pytest.fixture(params=["supabase", "postgres"])
def make_store(request: pytest.FixtureRequest, pg_dsn: str) -> Iterator[Make]:
    """Makes the store under test; ``push`` False gives it no working push channel."""
    made: list[Any] = []

    def make(push: bool) -> Any:
        if request.param == "postgres":
            store = counting(PostgresStore)(pg_dsn)
            if not push:
                store.watch = lambda wake: None  # as a transport without push
        else:
            standin = PostgrestStandin(pg_dsn, realtime=push)  # no Realtime: the join fails
            made.append(standin)
            store = counting(SupabaseStore)(standin.url, SecretStr(standin.service_key))
        made.append(store)
        return store

    try:
        yield make
    finally:
        for thing in reversed(made):
            thing.close()


def idle_supervisor(store: Any, tmp_path: Path, poll_s: float) -> Supervisor:
    settings = load_settings(
        data_dir=tmp_path / "data",
        kinds={"true": {"argv": ["/bin/true"]}},
        concurrency=2,
        heartbeat_s=5,
        lease_s=60,
        poll_s=poll_s,
    )
    return Supervisor(settings, store, install_signal_handlers=False)


def settled(sup: Supervisor, store: Any, *, push: bool) -> None:
    """Await the end of start-up: the first claim sent and, with ``push``, the channel live and
    then a full second with no request (going live asks once more, for what the join may have
    missed). The measured window starts idle, whatever the order of those calls."""

    def started() -> bool:
        loop = sup._loop
        return loop is not None and store.snapshot()["jobs_claim"] >= 1 and (loop.pushed or not push)

    wait_until(started, 15, message="start-up done (first claim sent, push live)")
    if not push:
        return  # it polls: never quiet for long, and the test bounds the polls themselves
    seen = [store.snapshot(), time.monotonic()]

    def quiet_for_a_second() -> bool:
        now = store.snapshot()
        if now != seen[0]:
            seen[:] = [now, time.monotonic()]
        return time.monotonic() - seen[1] >= 1.0

    wait_until(quiet_for_a_second, 15, interval=0.05, message="a second without requests")


def test_an_idle_supervisor_with_push_sends_nothing(make_store: Make, tmp_path: Path) -> None:
    """With the push channel live, an idle supervisor (poll_s 0.5) sends no request in 5 s."""
    store = make_store(True)
    sup = idle_supervisor(store, tmp_path, 0.5)
    thread = sup.start()
    try:
        settled(sup, store, push=True)
        before = store.snapshot()
        time.sleep(5.0)  # the window in which requests are counted
        sent = store.snapshot() - before
    finally:
        sup.stop(drain=False, timeout=10)
        thread.join(timeout=10)
        kill_tagged(tmp_path)
    assert sum(sent.values()) == 0, dict(sent)


def test_without_push_at_most_one_claim_per_poll(make_store: Make, tmp_path: Path) -> None:
    """Without a live push channel the idle supervisor claims at most once per poll_s (0.5 s):
    no more than 11 claims in 5 s, and nothing else but reaping."""
    store = make_store(False)
    sup = idle_supervisor(store, tmp_path, 0.5)
    thread = sup.start()
    try:
        settled(sup, store, push=False)
        before = store.snapshot()
        time.sleep(5.0)  # the window in which requests are counted
        sent = store.snapshot() - before
    finally:
        sup.stop(drain=False, timeout=10)
        thread.join(timeout=10)
        kill_tagged(tmp_path)
    assert 1 <= sent["jobs_claim"] <= 11, dict(sent)
    assert set(sent) <= {"jobs_claim", "jobs_reap_stale", "jobs_next_due"}, dict(sent)


def test_a_plain_sql_insert_starts_within_300_ms(make_store: Make, pg_dsn: str, tmp_path: Path) -> None:
    """Ten jobs inserted one at a time with plain SQL into the idle store (poll_s 30: only the
    push can wake it) each start in well under 300 ms (p50, commit to agent start)."""
    store = make_store(True)
    sup = idle_supervisor(store, tmp_path, 30.0)
    thread = sup.start()
    delays = []
    try:
        settled(sup, store, push=True)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for _ in range(10):
                row = conn.execute("insert into public.jobs (kind) values ('true') returning id").fetchone()
                assert row is not None
                job_id = row[0]

                def started(job_id: int = job_id) -> Any:
                    return conn.execute(
                        "select extract(epoch from started_at - created_at) from public.jobs"
                        " where id = %s and started_at is not null and status = 'completed'",
                        (job_id,),
                    ).fetchone()

                delays.append(float(wait_until(started, 10, interval=0.005, message="the job to run")[0]))
    finally:
        sup.stop(drain=False, timeout=10)
        thread.join(timeout=10)
        kill_tagged(tmp_path)
    assert statistics.median(delays) < 0.3, delays
    assert store.counts().by_status[Status.COMPLETED] == 10
    p50, worst = statistics.median(delays) * 1000, max(delays) * 1000
    print(f"\nplain INSERT -> agent started: p50 {p50:.0f} ms, max {worst:.0f} ms")
