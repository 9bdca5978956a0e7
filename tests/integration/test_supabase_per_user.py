"""Per-user mode (bridge/sql/per_user.sql) through the Supabase stand-in: two signed-in users'
supervisors, each with the publishable key and its own access token (role authenticated,
``auth.uid()`` from the token), share one project and never see or touch each other's jobs;
their concurrency keys are their own (issue 10, finding 6)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from importlib import resources

import psycopg
import pytest
from pydantic import SecretStr

from bridge.stores.supabase import SupabaseStore
from supervisor.errors import JobNotFoundError, StoreError
from supervisor.lifecycle import JobSpec, Outcome, Status
from tests.standin.postgrest import PostgrestStandin

pytestmark = pytest.mark.postgres


def per_user_sql() -> str:
    return resources.files("bridge").joinpath("sql/per_user.sql").read_text(encoding="utf-8")


@pytest.fixture
def standin(pg_dsn: str) -> Iterator[PostgrestStandin]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(per_user_sql().encode())
        conn.execute(per_user_sql().encode())  # idempotent
    made = PostgrestStandin(pg_dsn)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def users(standin: PostgrestStandin) -> Iterator[tuple[SupabaseStore, SupabaseStore, SupabaseStore]]:
    """Alice's store, Bob's store (each: publishable key + own session), the service role's."""
    made = [
        SupabaseStore(
            standin.url,
            SecretStr(standin.anon_key),
            access_token=SecretStr(standin.user_token(str(uuid.uuid4()))),
        )
        for _ in range(2)
    ]
    made.append(SupabaseStore(standin.url, SecretStr(standin.service_key)))
    try:
        yield made[0], made[1], made[2]
    finally:
        for store in made:
            store.close()


def test_each_user_sees_and_runs_only_their_own_jobs(
    users: tuple[SupabaseStore, SupabaseStore, SupabaseStore], standin: PostgrestStandin
) -> None:
    """Alice and Bob both submit (inserts pass RLS), each lists, claims, runs and finishes only
    their own jobs; each other's ids are 'not found'; the service role sees all of them."""
    alice, bob, service = users
    a_ids = alice.enqueue([JobSpec(kind="k", payload={"who": "alice"}) for _ in range(2)])
    [b_id] = bob.enqueue([JobSpec(kind="k", payload={"who": "bob"})])
    assert sorted(j.id for j in alice.list()) == a_ids
    assert [j.id for j in bob.list()] == [b_id]
    assert sorted(j.id for j in service.list()) == sorted([*a_ids, b_id])
    with pytest.raises(JobNotFoundError):
        alice.get(b_id)
    with pytest.raises(JobNotFoundError):
        alice.events(b_id)
    with pytest.raises(JobNotFoundError):
        alice.request_cancel(b_id)
    assert alice.counts().by_status[Status.PENDING] == 2
    [job] = bob.claim("bob-laptop", 5, lease_s=30)
    assert job.id == b_id
    bob.mark_running(job.id, "bob-laptop", job.attempt, 4242)
    assert bob.finish(job.id, "bob-laptop", job.attempt, Outcome(exit_code=0)).status is Status.COMPLETED
    assert [e.to_status for e in bob.events(b_id)][-1] is Status.COMPLETED
    assert (bob.counts().by_status[Status.COMPLETED], alice.counts().by_status[Status.COMPLETED]) == (1, 0)
    assert sorted(j.id for j in alice.claim("alice-laptop", 5, lease_s=30)) == a_ids
    assert bob.reap_stale(0) == []
    with pytest.raises(JobNotFoundError):
        alice.purge(ids=[b_id])
    assert bob.purge(ids=[b_id]).deleted == (b_id,)


def test_concurrency_keys_are_per_user(users: tuple[SupabaseStore, SupabaseStore, SupabaseStore]) -> None:
    """Alice's running job on repository R does not hold Bob's job on R (before: Bob's claim
    failed with 23505 on the global one-live-job-per-key index); Alice's second job on R waits."""
    alice, bob, _ = users
    a1, a2 = alice.enqueue([JobSpec(kind="k", concurrency_key="repo-r") for _ in range(2)])
    [b1] = bob.enqueue([JobSpec(kind="k", concurrency_key="repo-r")])
    assert [j.id for j in alice.claim("a", 5, lease_s=30)] == [a1]
    assert [j.id for j in bob.claim("b", 5, lease_s=30)] == [b1]
    assert alice.claim("a", 5, lease_s=30) == []
    assert alice.get(a2).status is Status.PENDING


def test_a_users_token_cannot_reach_the_service_role_or_other_owners(
    standin: PostgrestStandin, users: tuple[SupabaseStore, SupabaseStore, SupabaseStore], pg_dsn: str
) -> None:
    """A user cannot insert a job for another owner (RLS with check) and the publishable key
    without a session still opens nothing."""
    alice, _, _ = users
    anon = SupabaseStore(standin.url, SecretStr(standin.anon_key))
    try:
        with pytest.raises(StoreError, match="refused access"):
            anon.list()
    finally:
        anon.close()
    claims = {"role": "authenticated", "sub": str(uuid.uuid4())}
    with psycopg.connect(pg_dsn) as conn, conn.transaction():
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        conn.execute("set local role authenticated")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("insert into public.jobs (kind, owner_id) values ('k', gen_random_uuid())")
        conn.execute("insert into public.jobs (kind) values ('k')")  # its own: allowed
    assert alice.list() == []
