"""A real PostgreSQL server for the tests: started once per session, a fresh database per test.

The server runs from the Debian ``postgresql`` binaries (``/usr/lib/postgresql/*/bin``; ``.ci/run``
installs them when missing) in a throwaway data dir with ``fsync=off``: it is thrown away at the
end of the session, so durability buys nothing and costs seconds. ``initdb`` refuses to run as
root, so as root the server runs as the ``postgres`` user (or a throwaway user we create).

Each test gets its own database, cloned from a template that already holds the schema and the
functions of ``bridge/sql/`` (``CREATE DATABASE … TEMPLATE``: a file copy, no SQL to replay).
The template also has what a Supabase project has and plain Postgres lacks: the roles ``anon``,
``authenticated`` and ``service_role`` (BYPASSRLS) with their statement timeouts, the login role
``authenticator`` that PostgREST switches from, Supabase's default privileges, which grant
every new table and function in ``public`` to all three (so the explicit revokes of schema.sql
are really exercised), the ``auth`` helpers (``auth.uid()``) and Realtime's
``realtime.send()``. Last, it replaces ``public._jobs_now()`` with a version that honours
the setting ``agent_supervisor.now`` (epoch seconds): the contract suite's ``ManualClock``
drives the server's clock through it. Production databases never get this.

When Debian's ``postgresql-NN-cron`` is installed (``.ci/run`` installs it), the server preloads
pg_cron for database ``CRON_DATABASE`` (tests/integration/test_postgres_cron.py).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATE = "agent_supervisor_template"
CLOCK_SETTING = "agent_supervisor.now"
CRON_DATABASE = "agent_supervisor_cron"
"""pg_cron's database (``cron.database_name``), when the server has pg_cron (``has_cron``)."""

# Supabase's default privileges (supabase/postgres migrations): everything new in public is
# granted to the API roles. This is what makes `revoke ... from public` alone insufficient.
SUPABASE_ROLES_SQL = """
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit; end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit; end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls; end if;
  -- PostgREST logs in as authenticator and switches to the request's role (`set local role`);
  -- it may become only the roles granted to it (Supabase's roles.sql).
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit; end if;
end $$;
grant anon, authenticated, service_role to authenticator;
-- Supabase's timeouts ("Timeouts" docs): anon 3 s, authenticated 8 s; service_role has none of
-- its own and keeps authenticator's 8 s, which a session of authenticator starts with.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
"""
SUPABASE_DEFAULTS_SQL = """
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
"""
# What every Supabase database has besides the roles: the `auth` helpers that RLS policies
# call (supabase/postgres migrations, auth-schema.sql: auth.uid() and auth.jwt() read the claims
# PostgREST sets per request), and Realtime's `realtime.messages` with `realtime.send()` as the
# Realtime server's tenant migrations define them (RLS on; select/insert/update granted to the
# API roles: migration RestoreMessagesBaseGrants; send() is SECURITY INVOKER and turns any error
# into a WARNING, so a refused broadcast never fails the writer's transaction). The last trigger
# is the stand-in's, not Supabase's: Supabase's Realtime server reads new messages from the WAL;
# tests/standin/realtime.py hears them through this NOTIFY instead.
SUPABASE_SCHEMAS_SQL = """
create schema if not exists auth;
create or replace function auth.jwt() returns jsonb language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                  nullif(current_setting('request.jwt.claims', true), ''))::jsonb $$;
create or replace function auth.uid() returns uuid language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid $$;
create or replace function auth.role() returns text language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text $$;
grant usage on schema auth to anon, authenticated, service_role;

create schema if not exists realtime;
create table if not exists realtime.messages (
  id uuid not null default gen_random_uuid() primary key,
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp not null default now(),
  inserted_at timestamp not null default now()
);
alter table realtime.messages enable row level security;
grant usage on schema realtime to anon, authenticated, service_role;
grant select, insert, update on realtime.messages to anon, authenticated, service_role;
create or replace function realtime.topic() returns text language sql stable as $$
  select nullif(current_setting('realtime.topic', true), '')::text $$;
create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void language plpgsql as $$
begin
  begin
    execute format('set local realtime.topic to %L', topic);
    insert into realtime.messages (payload, event, topic, private, extension)
    values (payload, event, topic, private, 'broadcast');
  exception when others then
    raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
  end;
end $$;
grant execute on function realtime.send(jsonb, text, text, boolean) to anon, authenticated, service_role;
create or replace function realtime._standin_wal() returns trigger language plpgsql as $$
begin
  perform pg_notify('standin_realtime', new.id::text);
  return null;
end $$;
create trigger standin_wal after insert on realtime.messages
  for each row execute function realtime._standin_wal();
"""
# The test clock: `set agent_supervisor.now = '<epoch seconds>'` (per transaction) moves the
# server's notion of now; unset, it is now(). Only test databases get this definition.
TEST_CLOCK_SQL = f"""
create or replace function public._jobs_now() returns timestamptz
language sql stable set search_path = '' as $$
  select coalesce(
    pg_catalog.to_timestamp(nullif(pg_catalog.current_setting('{CLOCK_SETTING}', true), '')::float8),
    pg_catalog.now())
$$;
"""


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL server bin dir on this machine, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root, which initdb refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "agent-supervisor-pg"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "agent-supervisor-pg"],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("agent-supervisor-pg")


@dataclass
class PgServer:
    """One running server; ``dsn(db)`` is a TCP DSN that subprocesses can use too."""

    bin_dir: Path
    root: Path
    port: int
    user: pwd.struct_passwd | None
    has_cron: bool = False
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        return subprocess.run(
            [str(self.bin_dir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
            timeout=120,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            **kwargs,
        )

    @classmethod
    def start(cls, bin_dir: Path) -> PgServer:
        """initdb + pg_ctl start in a fresh temp dir; raises RuntimeError with the log."""
        user = _server_user()
        # Not under pytest's tmp dirs: those are 0700 root-owned, the server user could not
        # enter them. /tmp is world-traversable; the dir itself is private to that user.
        root = Path(tempfile.mkdtemp(prefix="agent-supervisor-pg-"))
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        server = cls(bin_dir, root, _free_port(), user)
        init = server._run(
            "initdb",
            "-D",
            str(server.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if init.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        options = " ".join(
            [
                f"-p {server.port}",
                f"-k {root}",  # the unix socket lives with the data, away from /var/run
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=64MB",
            ]
        )
        # pg_cron (Debian's postgresql-NN-cron, .ci/run installs it) must be preloaded; its
        # one database is made from the template by the test that needs it.
        if (bin_dir.parent / "lib" / "pg_cron.so").exists():
            server.has_cron = True
            options += f" -c shared_preload_libraries=pg_cron -c cron.database_name={CRON_DATABASE}"
        for _ in range(3):  # the free port may be taken between _free_port and bind
            started = server._run(
                "pg_ctl",
                "-D",
                str(server.data_dir),
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            )
            if started.returncode == 0:
                break
            server.port = _free_port()
            options = options.replace(options.split()[1], str(server.port), 1)
        else:
            log = (root / "log").read_text(errors="replace")[-2000:] if (root / "log").exists() else ""
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()} {log}")
        atexit.register(server.stop)
        server._make_template()
        return server

    def _make_template(self) -> None:
        import psycopg

        from bridge.sqlcli import apply_sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(SUPABASE_ROLES_SQL)
            conn.execute(f"create database {TEMPLATE}")
        with psycopg.connect(self.dsn(TEMPLATE)) as conn:
            conn.execute(SUPABASE_DEFAULTS_SQL)
            conn.execute(SUPABASE_SCHEMAS_SQL)
            conn.commit()
            apply_sql(conn)
            conn.execute(TEST_CLOCK_SQL)
            conn.commit()

    def create_database(self) -> str:
        """A fresh database cloned from the template; returns its name."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._ids)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            # STRATEGY file_copy would checkpoint per database; wal_log (the PG 15 default)
            # copies a few MB through the WAL, which fsync=off makes cheap.
            conn.execute(f"create database {name} template {TEMPLATE}")
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")

    def stop(self) -> None:
        """Stop the server (immediate: the data is thrown away) and remove its files."""
        if not self.data_dir.exists():
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


_server: PgServer | None = None
_server_error: str | None = None
_server_lock = threading.Lock()


def server(skip: Callable[[str], Any], fail: Callable[[str], Any]) -> PgServer:
    """The session's server, started on first use. Without PostgreSQL binaries the caller's
    ``skip`` is called, except in CI (``CI=true``), where a missing server is a failure."""
    global _server, _server_error
    with _server_lock:
        if _server is None and _server_error is None:
            bin_dir = find_bin_dir()
            if bin_dir is None:
                _server_error = "no PostgreSQL server binaries (initdb) found; install 'postgresql'"
            else:
                try:
                    _server = PgServer.start(bin_dir)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    _server_error = f"PostgreSQL test server did not start: {exc}"
        if _server is not None:
            return _server
    assert _server_error is not None
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        fail(_server_error)
    skip(_server_error)
    raise AssertionError("unreachable")  # skip/fail raise


def stop_server() -> None:
    """Stop the session's server if it was started (session teardown)."""
    global _server
    with _server_lock:
        if _server is not None:
            _server.stop()
            _server = None


def clocked_postgres_store(
    dsn: str, clock: Callable[[], float], on_close: Callable[[], None] | None = None, **kwargs: Any
) -> Any:
    """A PostgresStore whose every call runs at ``clock()`` on the server (test databases only:
    the template's ``_jobs_now()`` reads the setting). ``on_close`` runs once, after close."""
    from bridge.stores.postgres import PostgresStore

    class ClockedPostgresStore(PostgresStore):
        def _session_settings(self) -> dict[str, str]:
            return {CLOCK_SETTING: repr(clock())}

        def close(self) -> None:
            super().close()
            nonlocal on_close
            callback, on_close = on_close, None
            if callback is not None:
                callback()

    return ClockedPostgresStore(dsn, **kwargs)
