"""The Supabase store within the hosted service's limits, on the strict stand-in
(tests/standin/postgrest.py): PostgREST's 1,000-row cap on RPC answers, the API role's
statement timeout, retries that overlap the first call, and keys that must open nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from bridge.stores.policy import RetryPolicy
from bridge.stores.postgres import SIGNATURES
from bridge.stores.supabase import SupabaseStore
from supervisor.errors import StoreError, StoreUnavailableError
from supervisor.lifecycle import JobSpec, Status
from tests.standin.faults import Fault
from tests.standin.postgrest import PostgrestStandin

pytestmark = pytest.mark.postgres

FAST = RetryPolicy(attempts=4, total_s=10.0, multiplier=0.01, max_wait_s=0.05)


@pytest.fixture
def standin(pg_dsn: str) -> Iterator[PostgrestStandin]:
    made = PostgrestStandin(pg_dsn, max_rows=1000)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def store(standin: PostgrestStandin) -> Iterator[SupabaseStore]:
    made = SupabaseStore(standin.url, SecretStr(standin.service_key), retry=FAST)
    try:
        yield made
    finally:
        made.close()


def test_a_2500_job_batch_gets_2500_ids_in_order(standin: PostgrestStandin, store: SupabaseStore) -> None:
    """2,500 specs (past the 1,000-row cap) come back as 2,500 distinct, increasing ids, sent
    in calls of at most 500; list pages past 1,000 (all, and a limit of 1,200)."""
    ids = store.enqueue([JobSpec(kind="k", payload={"n": n}) for n in range(2500)])
    assert len(ids) == len(set(ids)) == 2500
    assert ids == sorted(ids)
    assert [store.get(ids[n]).payload for n in (0, 999, 1000, 2499)] == [
        {"n": n} for n in (0, 999, 1000, 2499)
    ]
    sent = [len(c.body["p_specs"]) for c in standin.calls if c.fn == "jobs_enqueue"]
    assert sum(sent) == 2500 and max(sent) <= 500
    listed = store.list()
    assert [j.id for j in listed] == ids[::-1]
    assert [j.id for j in store.list(limit=1200)] == ids[::-1][:1200]
    assert len(store.list(statuses=[Status.PENDING], limit=1001)) == 1001


def test_a_job_with_1500_events_shows_them_all(pg_dsn: str, store: SupabaseStore) -> None:
    """events() reads every event of a long log, oldest first, past the row cap."""
    [job_id] = store.enqueue([JobSpec(kind="k")])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into public.job_events (job_id, at, from_status, to_status, reason, decided_by, attempt)"
            " select %s, now(), 'pending', 'pending', 'note ' || n, 'user', 0"
            " from generate_series(1, 1500) n",
            (job_id,),
        )
    events = store.events(job_id)
    assert len(events) == 1501
    assert [e.reason for e in events[:2]] == ["submitted", "note 1"]
    assert events[-1].reason == "note 1500"


def test_purge_of_2500_jobs_reports_them_all(store: SupabaseStore) -> None:
    """Purging 2,500 queued jobs cancels and deletes every one, in pages, and says so."""
    ids = store.enqueue([JobSpec(kind="k") for _ in range(2500)])
    result = store.purge(statuses=[Status.PENDING])
    assert list(result.deleted) == ids
    assert store.list() == []


SLOW_INSERTS = """
create function public.slow_insert() returns trigger language plpgsql as $$
begin
  perform pg_sleep(case when new.kind = 'stuck' then 2 else 0.003 end);
  return new;
end $$;
create trigger slow_insert before insert on public.jobs for each row execute function public.slow_insert();
"""


@pytest.fixture
def slow(pg_dsn: str) -> Iterator[SupabaseStore]:
    """A store whose service role has a 400 ms statement timeout, on a table where every
    insert takes 3 ms (a 'stuck' one 2 s)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SLOW_INSERTS)
    standin = PostgrestStandin(pg_dsn, role_settings={"service_role": {"statement_timeout": "400ms"}})
    store = SupabaseStore(standin.url, SecretStr(standin.service_key), retry=FAST)
    try:
        yield store
    finally:
        store.close()
        standin.close()


def test_a_batch_past_the_statement_timeout_is_split(
    slow: SupabaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A 300-spec call (0.9 s of inserts) is cancelled at 400 ms; the store halves its calls
    until they fit and queues all 300, in order, without ever reporting "unavailable"."""
    caplog.set_level(logging.WARNING)
    ids = slow.enqueue([JobSpec(kind="k") for _ in range(300)])
    assert len(ids) == 300 and ids == sorted(ids)
    assert len(slow.list()) == 300
    assert any(
        "statement timeout" in r.getMessage() and "specs per call" in r.getMessage() for r in caplog.records
    )


def test_a_spec_past_the_statement_timeout_alone_is_refused_by_line(slow: SupabaseStore) -> None:
    """A spec that takes longer than the timeout even alone is refused with one line that
    names its batch line, says it was the statement timeout and which lines were queued."""
    with pytest.raises(StoreError) as info:
        slow.enqueue([JobSpec(kind="k"), JobSpec(kind="k"), JobSpec(kind="stuck"), JobSpec(kind="k")])
    assert not isinstance(info.value, StoreUnavailableError)
    message = str(info.value)
    assert "line 3 of the batch" in message and "statement timeout" in message
    assert "lines 1-2 of the batch were queued" in message
    assert "\n" not in message
    assert len(slow.list()) == 2


def test_an_enqueue_retry_overlapping_the_first_call_creates_nothing_more(
    standin: PostgrestStandin, store: SupabaseStore
) -> None:
    """The gateway times out (504) while jobs_enqueue runs on; the client's retry reaches the
    database before the first call commits, waits for it, and returns its ids: no error, no
    duplicate jobs."""
    standin.faults.plan(Fault.OVERLAP, "jobs_enqueue")
    ids = store.enqueue([JobSpec(kind="k") for _ in range(3)])
    assert standin.faults.overlaps == ["blocked"]
    assert len(ids) == 3
    assert [j.id for j in store.list()] == ids[::-1]


def test_a_claim_retry_overlapping_the_first_call_claims_nothing_more(
    standin: PostgrestStandin, store: SupabaseStore
) -> None:
    """The retry of an overlapped jobs_claim returns the job the first call took; the two other
    pending jobs stay pending (before: a second job was claimed and later reaped as lost)."""
    store.enqueue([JobSpec(kind="k") for _ in range(3)])
    standin.faults.plan(Fault.OVERLAP, "jobs_claim")
    [job] = store.claim("w", 1, lease_s=30)
    assert standin.faults.overlaps == ["blocked"]
    counts = store.counts().by_status
    assert (counts[Status.PREPARING], counts[Status.PENDING]) == (1, 2)
    assert store.get(job.id).status is Status.PREPARING


def _null_args(fn: str) -> dict[str, Any]:
    return {name: None for name, _ in SIGNATURES[fn]}


@pytest.mark.parametrize("fn", sorted(SIGNATURES))
def test_the_anon_key_can_call_no_function(standin: PostgrestStandin, fn: str) -> None:
    """With the publishable (anon) key every function is refused: 401 (42501 as anon)."""
    answer = httpx.post(
        f"{standin.url}/rest/v1/rpc/{fn}",
        json=_null_args(fn),
        headers={"apikey": standin.anon_key, "Authorization": f"Bearer {standin.anon_key}"},
    )
    assert (answer.status_code, answer.json()["code"]) == (401, "42501"), answer.text
    assert answer.headers["WWW-Authenticate"] == "Bearer"
