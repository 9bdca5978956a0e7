"""The SQL of bridge/sql/ on a real PostgreSQL server (tests/pg.py): privileges and RLS as a
Supabase project has them, the shape of the functions, replays of lost answers, hand-written
inserts, concurrent claimers, and the Postgres store's connection handling."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import psycopg
import pytest

from bridge.sqlcli import apply_sql
from bridge.stores.policy import RetryPolicy
from bridge.stores.postgres import PostgresStore
from supervisor.errors import ConfigError, InvalidJobError, StoreError, StoreUnavailableError
from supervisor.lifecycle import ErrorKind, Job, JobSpec, Outcome, Status
from tests import pg
from tests.support import ROOT

pytestmark = pytest.mark.postgres

FUNCTIONS = """
select p.oid::regprocedure::text, p.proretset, p.prosecdef, p.proconfig, p.prokind from pg_proc p
where p.pronamespace = 'public'::regnamespace and p.proname like any (array['jobs\\_%', '\\_jobs\\_%'])"""


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStore]:
    made = PostgresStore(pg_dsn, retry=RetryPolicy(sleep=lambda s: None))
    try:
        yield made
    finally:
        made.close()


def call(conn: psycopg.Connection[Any], fn: str, **args: Any) -> list[Any]:
    named = ", ".join(f"{k} => %({k})s" for k in args)
    return conn.execute(f"select * from public.{fn}({named})", args).fetchall()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_get_nothing(conn: psycopg.Connection[Any], role: str) -> None:
    """With Supabase's default privileges in place, anon and authenticated can neither read nor
    write the tables nor execute any of our functions; service_role can."""
    with conn.transaction():
        conn.execute(f"set local role {role}")
        for statement in (
            "select * from public.jobs",
            "select * from public.job_events",
            "insert into public.jobs (kind) values ('x')",
            "select * from public.jobs_claim('w', null, 1, 30)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
    for name, *_ in conn.execute(FUNCTIONS).fetchall():
        for api_role in ("anon", "authenticated", "public"):
            if api_role == "public":
                granted = conn.execute(
                    "select coalesce(bool_or(a.grantee = 0), false) from pg_proc p,"
                    " aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
                    " where p.oid = %s::regprocedure",
                    (name,),
                ).fetchone()[0]
            else:
                granted = conn.execute(
                    "select has_function_privilege(%s, %s, 'execute')", (api_role, name)
                ).fetchone()[0]
            assert not granted, f"{api_role} may execute {name}"
        assert conn.execute(
            "select has_function_privilege('service_role', %s, 'execute')", (name,)
        ).fetchone()[0]
    with conn.transaction():
        conn.execute("set local role service_role")
        assert call(conn, "jobs_claim", p_worker="w", p_claim_id=None, p_limit=1, p_lease_s=30.0) == []


def test_rls_is_on_with_no_policies(conn: psycopg.Connection[Any]) -> None:
    """Row Level Security is enabled on every table and no policy opens it."""
    rows = conn.execute(
        "select relname, relrowsecurity from pg_class where relname in ('jobs', 'job_events', 'job_requests')"
    ).fetchall()
    assert sorted(rows) == [("job_events", True), ("job_requests", True), ("jobs", True)]
    assert conn.execute("select count(*) from pg_policies where schemaname = 'public'").fetchone()[0] == 0


def test_functions_are_setof_invoker_with_an_empty_search_path(conn: psycopg.Connection[Any]) -> None:
    """Every RPC returns a set (PostgREST #3694), runs as its caller, and pins search_path."""
    found = conn.execute(FUNCTIONS).fetchall()
    assert len(found) >= 25
    for name, returns_set, security_definer, config, _ in found:
        assert not security_definer, name
        assert config == ['search_path=""'], name
        if name.startswith("jobs_"):
            assert returns_set, name


def test_schema_mirrors_the_model(conn: psycopg.Connection[Any]) -> None:
    """Every field of Job is a column, and the CHECK constraints accept exactly the statuses
    and error kinds of the lifecycle (a new enum value must come with a schema change)."""
    columns = {
        r[0]
        for r in conn.execute(
            "select column_name from information_schema.columns where table_name = 'jobs'"
        ).fetchall()
    }
    assert {f.name for f in fields(Job)} <= columns
    [([job_id], _)] = call(conn, "jobs_enqueue", p_specs=json.dumps([{"kind": "k"}]))
    for column, values in (("status", list(Status)), ("error_kind", list(ErrorKind))):
        for value in [*values, "bogus"]:
            changes = {"status": value} if column == "status" else {"error_kind": value}
            extra = (
                ", lease_owner = 'w', lease_expires_at = now()" if value in ("preparing", "running") else ""
            )
            try:
                with conn.transaction():
                    conn.execute(
                        f"update jobs set {column} = %s{extra} where id = %s", (changes[column], job_id)
                    )
                    raise _Rollback
            except _Rollback:
                assert value != "bogus"
            except psycopg.errors.CheckViolation:
                assert value == "bogus"


class _Rollback(Exception):
    pass


def test_applying_the_sql_again_changes_nothing(pg_dsn: str, store: PostgresStore) -> None:
    """schema.sql + functions.sql are idempotent: re-applied, the data and grants stay."""
    [job_id] = store.enqueue([JobSpec(kind="k")])
    with psycopg.connect(pg_dsn) as conn:
        apply_sql(conn)
        apply_sql(conn)
    assert store.get(job_id).status is Status.PENDING
    assert len(store.events(job_id)) == 1


def test_a_hand_written_insert_becomes_a_proper_pending_job(
    conn: psycopg.Connection[Any], store: PostgresStore
) -> None:
    """An INSERT from anywhere (the SQL editor, another app) is a fresh pending job with its
    submitted event, whatever lifecycle columns it tried to set; a store can claim it."""
    [(job_id,)] = conn.execute(
        "insert into jobs (kind, payload, status, attempt, lease_owner, created_at, updated_at)"
        " values ('k', '{\"a\": 1}', 'running', 7, 'intruder', now() - interval '1 day', now()) returning id"
    ).fetchall()
    job = store.get(job_id)
    assert (job.status, job.attempt, job.lease_owner, job.payload) == (Status.PENDING, 0, None, {"a": 1})
    assert [e.reason for e in store.events(job_id)] == ["submitted"]
    assert [j.id for j in store.claim("w", 5, lease_s=30)] == [job_id]


def test_check_constraints_refuse_bad_rows_and_enqueue_is_all_or_nothing(
    conn: psycopg.Connection[Any], store: PostgresStore
) -> None:
    """Rows that bypass the client's validation are refused by the table (InvalidJobError
    through the store), and a batch with one bad spec leaves nothing behind."""
    for values in ("kind, command) values ('k', '{a}'", "kind, max_attempts) values ('k', 0"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(f"insert into jobs ({values})")
    specs = [{"kind": "ok"}, {"kind": "bad", "max_attempts": 0}]
    with pytest.raises(InvalidJobError, match="jobs_max_attempts_check"):
        store._call("jobs_enqueue", {"p_specs": specs, "p_request_id": None})
    with pytest.raises(InvalidJobError):  # NUL in a payload: jsonb refuses it
        store.enqueue([JobSpec(kind="k", payload={"x": "a\x00b"})])
    assert store.list() == []


def test_replays_of_lost_answers_return_the_first_answer(
    conn: psycopg.Connection[Any], store: PostgresStore
) -> None:
    """Called again with the same ids, enqueue returns the same job ids and claim the same
    jobs, without inserting or claiming anything more; mark_running repeats harmlessly."""
    request = str(uuid.uuid4())
    specs = json.dumps([{"kind": "a"}, {"kind": "b", "dedup_key": "d"}, {"kind": "c", "dedup_key": "d"}])
    [(first, created)] = call(conn, "jobs_enqueue", p_specs=specs, p_request_id=request)
    assert call(conn, "jobs_enqueue", p_specs=specs, p_request_id=request) == [(first, [False] * 3)]
    assert created == [True, True, False]
    assert first[1] == first[2]
    assert conn.execute("select count(*) from jobs").fetchone()[0] == 2
    claim_id = str(uuid.uuid4())
    args = {"p_worker": "w", "p_claim_id": claim_id, "p_limit": 5, "p_lease_s": 30.0}
    taken = [r[0] for r in call(conn, "jobs_claim", **args)]
    assert [r[0] for r in call(conn, "jobs_claim", **args)] == taken == first[:2]
    job = store.get(taken[0])
    assert job.attempt == 1
    running = store.mark_running(job.id, "w", 1, 4242)
    assert store.mark_running(job.id, "w", 1, 4242) == running
    assert sum(e.to_status is Status.RUNNING for e in store.events(job.id)) == 1


def test_concurrent_claimers_never_share_a_job_and_keep_the_key_rule(pg_dsn: str) -> None:
    """8 threads, each with its own store (connection), claim and finish 400 jobs with a few
    concurrency keys: every job is claimed exactly once, and no claim ever returned a key
    that another claimer still held. (A key is marked held once its claim returned, and
    released before its finish is sent, so a false alarm is impossible.)"""
    setup = PostgresStore(pg_dsn)
    keys = ["k1", "k2", "k3", None, None]
    ids = setup.enqueue([JobSpec(kind="k", concurrency_key=keys[i % 5], priority=i % 3) for i in range(400)])
    claimed: list[int] = []
    held: set[str] = set()
    problems: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        store = PostgresStore(pg_dsn)
        try:
            while jobs := store.claim(name, 2, lease_s=30):
                with lock:
                    claimed.extend(j.id for j in jobs)
                    for job in jobs:
                        if job.concurrency_key in held:
                            problems.append(f"{job.concurrency_key} claimed twice at once")
                        if job.concurrency_key:
                            held.add(job.concurrency_key)
                for job in jobs:
                    with lock:
                        held.discard(job.concurrency_key or "")
                    store.finish(job.id, name, job.attempt, Outcome(exit_code=0))
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            problems.append(repr(exc))
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not problems, problems[:5]
    assert sorted(claimed) == sorted(ids)
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert setup.counts().by_status[Status.COMPLETED] == 400
    setup.close()


def test_a_killed_connection_is_replaced(
    pg_dsn: str, store: PostgresStore, conn: psycopg.Connection[Any]
) -> None:
    """After the server drops the store's connection, the next call reconnects and succeeds."""
    [job_id] = store.enqueue([JobSpec(kind="k")])
    conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'agent-supervisor'"
    )
    assert store.get(job_id).id == job_id


def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    """Nothing listening: StoreUnavailableError after the bounded retries, and neither the
    message nor its causes show the DSN's password."""
    sleeps: list[float] = []
    store = PostgresStore("postgresql://u:hunter2@127.0.0.1:9/db", retry=RetryPolicy(sleep=sleeps.append))
    with pytest.raises(StoreUnavailableError) as info:
        store.claim("w", 1, lease_s=30)
    cause: BaseException | None = info.value
    while cause is not None:
        assert "hunter2" not in str(cause)
        cause = cause.__cause__
    assert "hunter2" not in repr(store)
    assert len(sleeps) == 2  # claim: the quick policy, 3 attempts
    store.close()


def test_a_database_without_the_schema_is_a_clear_error() -> None:
    """A store on a database where the SQL was never applied says how to apply it."""
    server = pg.server(pytest.skip, pytest.fail)
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("drop database if exists empty_db")
        c.execute("create database empty_db template template0")
    store = PostgresStore(server.dsn("empty_db"))
    with pytest.raises(StoreError, match="db apply"):
        store.counts()
    store.close()


def test_db_cli_prints_and_applies_the_sql(monkeypatch: pytest.MonkeyPatch) -> None:
    """`db schema` prints schema then functions; `db apply --dsn` applies them in one
    transaction and reports what it did without echoing the password."""
    server = pg.server(pytest.skip, pytest.fail)
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("drop database if exists apply_db")
        c.execute("create database apply_db template template0")
    dsn = server.dsn("apply_db").replace("postgres@", "postgres:s3cret-pw@")
    run = [sys.executable, "-m", "bridge"]
    printed = subprocess.run(
        [*run, "db", "schema"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert printed.index("create table if not exists public.jobs") < printed.index("jobs_claim")
    applied = subprocess.run([*run, "db", "apply", "--dsn", dsn], capture_output=True, text=True, cwd=ROOT)
    assert applied.returncode == 0, applied.stderr
    assert "s3cret-pw" not in applied.stdout + applied.stderr
    assert "applied" in applied.stdout and "postgres@127.0.0.1" in applied.stdout
    store = PostgresStore(server.dsn("apply_db"))
    assert store.enqueue([JobSpec(kind="k")]) == [1]
    store.close()
    bad = subprocess.run(
        [*run, "db", "apply", "--dsn", "postgresql://u:s3cret-pw@127.0.0.1:9/x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 1 and "s3cret-pw" not in bad.stderr and bad.stderr.count("\n") == 1
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    from bridge.sqlcli import run_db

    with pytest.raises(ConfigError, match=r"pip install 'agent-supervisor\[postgres\]'"):
        run_db(argparse.Namespace(db_command="apply", dsn=dsn), sys.stdout)
