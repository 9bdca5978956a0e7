"""Schema versions the Supabase way: ``db migration DIR`` writes a timestamped migration for
``supabase/migrations/``, applying the new SQL over a version-1 database upgrades it in place
(its jobs kept), and a database older or newer than the package is said as such."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from bridge.sqlcli import SCHEMA_VERSION, apply_sql
from bridge.stores.postgres import PostgresStore
from bridge.stores.supabase import SupabaseStore
from supervisor.errors import StoreError
from supervisor.lifecycle import JobSpec, Status
from tests import pg
from tests.standin.postgrest import PostgrestStandin
from tests.support import ROOT

pytestmark = pytest.mark.postgres

V1 = Path(__file__).parent / "sql_v1"


def fresh_database(name: str) -> str:
    """An empty database (no agent-supervisor SQL, Supabase's roles exist cluster-wide)."""
    server = pg.server(pytest.skip, pytest.fail)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name} template template0")
    return server.dsn(name)


def db(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "db", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_db_migration_writes_a_timestamped_supabase_migration_once(tmp_path: Path) -> None:
    """`db migration DIR` writes DIR/supabase/migrations/<14-digit timestamp>_agent_supervisor_v<N>.sql
    holding the version and the whole SQL; run again, it writes nothing; the file applies to a
    fresh database (as `supabase db push` would run it) and gives a working store."""
    first = db("migration", str(tmp_path))
    assert first.returncode == 0, first.stderr
    [path] = (tmp_path / "supabase" / "migrations").iterdir()
    stamp, rest = path.name.split("_", 1)
    assert len(stamp) == 14 and stamp.isdigit()
    assert rest == f"agent_supervisor_v{SCHEMA_VERSION}.sql"
    text = path.read_text()
    assert text.startswith(f"-- agent-supervisor schema version {SCHEMA_VERSION}\n")
    assert "create table if not exists public.jobs" in text and "jobs_claim" in text
    assert "wrote" in first.stdout and "supabase db push" in first.stdout
    again = db("migration", str(tmp_path))
    assert again.returncode == 0 and "nothing written" in again.stdout
    assert len(list(path.parent.iterdir())) == 1
    per_user = db("migration", str(tmp_path), "--per-user")
    assert per_user.returncode == 0 and len(list(path.parent.iterdir())) == 2
    dsn = fresh_database("migration_db")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text.encode())
    store = PostgresStore(dsn)
    try:
        assert store.enqueue([JobSpec(kind="k")]) == [1]
    finally:
        store.close()
    (tmp_path / "file").write_text("")
    refused = db("migration", str(tmp_path / "file"))
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1


def test_the_new_sql_upgrades_a_version_1_database_in_place() -> None:
    """A database made with version 1 of the SQL and holding jobs is upgraded by `db apply`
    ("was version 1"): its jobs and events stay, the new functions work, and a store that
    refused it before ("older") accepts it after."""
    dsn = fresh_database("upgrade_db")
    with psycopg.connect(dsn) as conn, conn.transaction():
        for name in ("schema.sql", "functions.sql"):
            conn.execute((V1 / name).read_text().encode())
        conn.execute('select * from public.jobs_enqueue(\'[{"kind": "old"}, {"kind": "older"}]\')')
    with pytest.raises(StoreError, match="version 1, older than this agent-supervisor"):
        PostgresStore(dsn).counts()
    applied = db("apply", "--dsn", dsn)
    assert applied.returncode == 0, applied.stderr
    assert f"schema version {SCHEMA_VERSION} (was version 1)" in applied.stdout
    store = PostgresStore(dsn)
    try:
        assert [j.kind for j in store.list()] == ["older", "old"]
        assert [e.reason for e in store.events(1)] == ["submitted"]
        [job] = store.claim("w", 1, lease_s=30)
        assert (job.kind, job.status) == ("old", Status.PREPARING)
        assert store.enqueue([JobSpec(kind="new")]) == [3]
    finally:
        store.close()


def test_a_database_newer_than_the_package_is_refused_clearly(pg_dsn: str) -> None:
    """A database whose SQL is newer: both stores refuse it in one line that says to upgrade
    agent-supervisor, and `db apply` never downgrades it."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("create or replace function public.jobs_schema_version()"
                     " returns table (version integer, product text, store_id text)"
                     " language sql stable as $$ select 99, 'agent-supervisor', 'x' $$")  # fmt: skip
        conn.execute("update public.job_store_meta set schema_version = 99")
    with pytest.raises(StoreError, match=r"version 99, newer than this agent-supervisor .*pip install -U"):
        PostgresStore(pg_dsn).counts()
    with PostgrestStandin(pg_dsn) as standin:
        store = SupabaseStore(standin.url, SecretStr(standin.service_key))
        with pytest.raises(StoreError, match="newer than this agent-supervisor"):
            store.counts()
        store.close()
    refused = db("apply", "--dsn", pg_dsn)
    assert refused.returncode != 0 and "newer" in refused.stderr and refused.stderr.count("\n") == 1


def test_apply_sql_is_idempotent_with_per_user(pg_dsn: str) -> None:
    """Applying everything twice, per-user mode included, changes nothing and keeps the mode."""
    with psycopg.connect(pg_dsn) as conn:
        apply_sql(conn, per_user=True)
        apply_sql(conn)  # without per_user.sql: the mode and its grants stay
        granted = conn.execute(
            "select has_function_privilege('authenticated', 'public.jobs_claim(text,uuid,integer,"
            "double precision,text[],text[])', 'execute')"
        ).fetchone()
    assert granted == (True,)
