"""bridge/sql/pg_cron.sql on a server with pg_cron: it schedules the two jobs, and the commands
pg_cron runs reap expired leases and delete old finished jobs on the server, past a page."""

from __future__ import annotations

import os
import re
from importlib import resources
from typing import Any

import psycopg
import pytest

from bridge.stores.postgres import PostgresStore
from supervisor.lifecycle import ErrorKind, JobSpec, Outcome, Status
from tests import pg

pytestmark = pytest.mark.postgres


@pytest.fixture
def cron_dsn() -> str:
    """pg_cron's database, fresh from the template, with the extension created."""
    server = pg.server(pytest.skip, pytest.fail)
    if not server.has_cron:
        if os.environ.get("CI"):
            pytest.fail("pg_cron is not installed; .ci/run installs postgresql-NN-cron")
        pytest.skip("pg_cron is not installed (Debian: postgresql-15-cron)")
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"drop database if exists {pg.CRON_DATABASE} with (force)")
        conn.execute(f"create database {pg.CRON_DATABASE} template {pg.TEMPLATE}")
    dsn = server.dsn(pg.CRON_DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create extension if not exists pg_cron")
    return dsn


def snippet(conn: psycopg.Connection[Any]) -> str:
    """pg_cron.sql as shipped; on a pg_cron older than 1.5 (Debian 12's 1.4) with the
    every-minute schedule its comment says to use instead of '30 seconds'."""
    text = resources.files("bridge").joinpath("sql/pg_cron.sql").read_text()
    version = conn.execute("select extversion from pg_extension where extname = 'pg_cron'").fetchone()
    assert version is not None
    major, minor = (int(n) for n in re.findall(r"\d+", version[0])[:2])  # '1.4-1' on Debian 12
    if (major, minor) < (1, 5):
        text = text.replace("'30 seconds'", "'* * * * *'")
    return text


def test_pg_cron_reaps_and_applies_retention_on_the_server(cron_dsn: str) -> None:
    """Applied twice (idempotent), the snippet leaves two scheduled jobs; their commands, run
    as pg_cron runs them, settle an expired lease as lost, delete the 1,200 finished jobs older
    than 14 days (more than one page) with their events, and keep recent and live ones."""
    store = PostgresStore(cron_dsn)
    try:
        with psycopg.connect(cron_dsn, autocommit=True) as conn:
            conn.execute(snippet(conn).encode())
            conn.execute(snippet(conn).encode())
            jobs = dict(conn.execute("select jobname, command from cron.job order by jobname").fetchall())
            assert jobs == {
                "agent-supervisor-reap": "call public.jobs_cron_reap(30)",
                "agent-supervisor-retention": "call public.jobs_cron_retention(1209600)",
            }
            old = store.enqueue([JobSpec(kind="old") for _ in range(1200)])
            assert len(old) == 1200
            conn.execute("update public.jobs set status = 'completed', finished_at = now(), "
                         "updated_at = now() - interval '15 days' where kind = 'old'")  # fmt: skip
            [recent] = store.enqueue([JobSpec(kind="recent")])
            store.finish(*_start(store, "w"), Outcome(exit_code=0))
            [stale] = store.enqueue([JobSpec(kind="stale", max_attempts=3)])
            assert _start(store, "gone")[0] == stale
            conn.execute(
                "update public.jobs set lease_expires_at = now() - interval '1 minute' where id = %s",
                (stale,),
            )
            for command in jobs.values():
                conn.execute(command)
            counts = dict(conn.execute("select kind, count(*) from public.jobs group by kind").fetchall())
            assert counts == {"recent": 1, "stale": 1}
            orphans = (
                "select count(*) from public.job_events e"
                " where not exists (select from public.jobs j where j.id = e.job_id)"
            )
            assert conn.execute(orphans).fetchone() == (0,)
        reaped = store.get(stale)
        assert (reaped.status, reaped.error_kind) == (Status.WAITING_RETRY, ErrorKind.LOST)
        assert store.get(recent).status is Status.COMPLETED
    finally:
        store.close()


def _start(store: PostgresStore, worker: str) -> tuple[int, str, int]:
    [job] = store.claim(worker, 1, lease_s=30)
    store.mark_running(job.id, worker, job.attempt, 4242)
    return job.id, worker, job.attempt
