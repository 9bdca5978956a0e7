"""Push wake-ups on Supabase (protocol v2, ``SupabaseStore.watch``) through the Realtime
stand-in (tests/standin/realtime.py), fed by the same database trigger that Supabase's
Broadcast from Database uses (``realtime.send``): a plain SQL insert reaches an idle store's
wake() in well under 300 ms, the channel is private, and a lost socket means polling until the
watch has joined again."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from importlib import resources

import psycopg
import pytest
from pydantic import SecretStr

from bridge.stores.supabase import SupabaseStore
from supervisor.lifecycle import JobSpec
from tests.standin.postgrest import PostgrestStandin
from tests.support import wait_until

pytestmark = [
    pytest.mark.postgres,
    # realtime-py 2.34 logs ConnectionClosed.code/.reason, deprecated since websockets 13.1;
    # as an error (pytest's filterwarnings) it kills the client's reader task, which the
    # watch must then notice on its own (test_a_lost_socket_… runs both ways).
    pytest.mark.filterwarnings("ignore:ConnectionClosed.code is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:ConnectionClosed.reason is deprecated:DeprecationWarning"),
]


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
def standin(pg_dsn: str) -> Iterator[PostgrestStandin]:
    made = PostgrestStandin(pg_dsn, realtime=True)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def store(standin: PostgrestStandin) -> Iterator[SupabaseStore]:
    made = SupabaseStore(standin.url, SecretStr(standin.service_key))
    try:
        yield made
    finally:
        made.close()


def test_a_plain_sql_insert_wakes_an_idle_store_through_realtime(
    pg_dsn: str, standin: PostgrestStandin, store: SupabaseStore
) -> None:
    """The watch joins the private topic; then each INSERT (plain SQL, another connection)
    wakes it through trigger → realtime.send → Realtime → websocket: 20 inserts, p50 well
    under 300 ms; a delayed job says when it is due; enqueue through the API wakes it too."""
    heard = Heard()
    watch = store.watch(heard)
    try:
        assert watch.live and heard.count() == 0  # watch() returns joined; no hint yet
        assert standin.realtime is not None and standin.realtime.joins == [
            ("realtime:agent_supervisor", "ok")
        ]
        delays = []
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for n in range(20):
                before = heard.count()
                sent = time.monotonic()
                conn.execute("insert into public.jobs (kind) values (%s)", (f"k{n}",))
                wait_until(lambda: heard.count() > before, 5, interval=0.001, message="a wake-up")  # noqa: B023
                delays.append(heard.calls[before][0] - sent)
                assert heard.calls[before][1] is None
            due = time.time() + 3600
            before = heard.count()
            conn.execute("insert into public.jobs (kind, run_after) values ('k', to_timestamp(%s))", (due,))
            wait_until(lambda: heard.count() > before, 5, message="a delayed job's wake-up")
            assert heard.calls[before][1] == pytest.approx(due, abs=0.001)
        before = heard.count()
        store.enqueue([JobSpec(kind="k") for _ in range(50)])
        wait_until(lambda: heard.count() > before, 5, message="an enqueue's wake-up")
        assert statistics.median(delays) < 0.3, delays
        print(f"\nplain INSERT -> Realtime -> wake: p50 {statistics.median(delays) * 1000:.1f} ms")
    finally:
        watch.close()
    assert not watch.live
    assert not any(t.name == "agent-supervisor-realtime" for t in threading.enumerate())


def test_a_lost_socket_means_polling_until_the_channel_is_joined_again(
    pg_dsn: str, standin: PostgrestStandin, store: SupabaseStore
) -> None:
    """When Realtime drops the socket and refuses new ones, live is False (the supervisor
    polls); once Realtime is back the watch joins again by itself, wakes once, and hears
    inserts again."""
    assert standin.realtime is not None
    heard = Heard()
    watch = store.watch(heard)
    try:
        wait_until(lambda: watch.live, 15, message="the channel to be joined")
        standin.realtime.refuse = True
        standin.realtime.drop_all()
        wait_until(lambda: not watch.live, 10, message="the watch to notice")
        joined = heard.count()
        standin.realtime.refuse = False
        wait_until(lambda: watch.live and heard.count() > joined, 30, message="a new join")
        before = heard.count()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("insert into public.jobs (kind) values ('k')")
        wait_until(lambda: heard.count() > before, 5, message="a wake-up after the rejoin")
    finally:
        watch.close()


@pytest.mark.filterwarnings("error")
def test_the_watch_notices_a_reader_that_died_of_a_warning(
    pg_dsn: str, standin: PostgrestStandin, store: SupabaseStore
) -> None:
    """With warnings as errors, realtime-py's reader task dies when the socket is dropped
    without telling the channel; the watch still turns not live and joins again."""
    test_a_lost_socket_means_polling_until_the_channel_is_joined_again(pg_dsn, standin, store)


def test_the_channel_is_private(standin: PostgrestStandin) -> None:
    """The publishable key alone may not join the private topic (Realtime Authorization): no
    wake-ups for it; the watch stays not live."""
    anon = SupabaseStore(standin.url, SecretStr(standin.anon_key))
    heard = Heard()
    watch = anon.watch(heard)
    try:
        assert standin.realtime is not None
        wait_until(
            lambda: ("realtime:agent_supervisor", "error") in standin.realtime.joins, 15, message="a join"
        )  # type: ignore[union-attr]
        assert not watch.live and heard.count() == 0
    finally:
        watch.close()
        anon.close()


def test_a_users_watch_hears_only_that_users_jobs(pg_dsn: str, standin: PostgrestStandin) -> None:
    """In per-user mode a user's watch joins agent_supervisor:<user id> (allowed by the policy
    on realtime.messages) and wakes for that user's inserts, not for another user's."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(resources.files("bridge").joinpath("sql/per_user.sql").read_text().encode())
    alice_id, bob_id = str(uuid.uuid4()), str(uuid.uuid4())
    alice = SupabaseStore(
        standin.url, SecretStr(standin.anon_key), access_token=SecretStr(standin.user_token(alice_id))
    )
    bob = SupabaseStore(
        standin.url, SecretStr(standin.anon_key), access_token=SecretStr(standin.user_token(bob_id))
    )
    heard = Heard()
    watch = alice.watch(heard)
    try:
        assert watch.live
        bob.enqueue([JobSpec(kind="k")])
        due = time.time() + 600
        alice.enqueue([JobSpec(kind="k", run_after=due)])  # after bob's, on the same feed
        wait_until(lambda: any(d is not None for _, d in heard.calls), 5, message="alice's wake-up")
        assert [d for _, d in heard.calls] == [pytest.approx(due, abs=0.001)]  # and none for bob
    finally:
        watch.close()
        alice.close()
        bob.close()
