"""``agent-supervisor db schema | apply | migration``: the SQL of the Postgres and Supabase stores.

``db schema`` prints ``bridge/sql/schema.sql`` then ``functions.sql`` (paste them into the
Supabase SQL editor, or pipe them to ``psql``). ``db apply --dsn DSN`` applies both to a Postgres
database in one transaction with psycopg (``pip install 'agent-supervisor[postgres]'``); the
password comes from the DSN or ``PGPASSWORD`` (libpq reads it) and is never printed.
``db migration DIR`` writes them as ``DIR/supabase/migrations/<timestamp>_agent_supervisor.sql``,
the way a Supabase project keeps its schema (``supabase db push`` applies it). ``--per-user``
adds ``per_user.sql`` to each. The SQL carries its version (``SCHEMA_VERSION``); a store on a
database with another version says whether the database or this package is the older one
(``schema_mismatch``).
"""

from __future__ import annotations

import argparse
import functools
import re
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from supervisor.errors import ConfigError, StoreUnavailableError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "PER_USER_FILE",
    "SCHEMA_VERSION",
    "SQL_FILES",
    "apply_sql",
    "dsn_for_display",
    "run_db",
    "schema_mismatch",
    "schema_text",
    "write_migration",
]

SQL_FILES: Final = ("schema.sql", "functions.sql")
"""Applied in this order; both are idempotent."""
PER_USER_FILE: Final = "per_user.sql"
"""Optional, after SQL_FILES: the per-user mode of a shared Supabase project."""
SCHEMA_VERSION: Final = 2
"""The version functions.sql implements (``public.jobs_schema_version()``)."""

_INSTALL_HINT: Final = "psycopg is not installed: pip install 'agent-supervisor[postgres]'"
_MIGRATION_NAME: Final = "agent_supervisor"
_VERSION_LINE: Final = re.compile(r"^-- agent-supervisor schema version (\d+)$", re.MULTILINE)


@functools.cache
def _read(name: str) -> str:
    return resources.files("bridge").joinpath(f"sql/{name}").read_text(encoding="utf-8")


def _files(per_user: bool) -> tuple[str, ...]:
    return (*SQL_FILES, PER_USER_FILE) if per_user else SQL_FILES


def schema_text(*, per_user: bool = False) -> str:
    """The whole SQL, schema first, as ``db schema`` prints it."""
    return "\n".join(_read(name).rstrip("\n") + "\n" for name in _files(per_user))


def schema_mismatch(where: str, found: int | None) -> str | None:
    """None when a database's schema version is this package's; else the one line to say."""
    if found == SCHEMA_VERSION:
        return None
    if found is None or found < SCHEMA_VERSION:
        return (
            f"{where} has agent-supervisor schema version {found if found is not None else '1 or none'}, "
            f"older than this agent-supervisor (version {SCHEMA_VERSION}): apply the new SQL "
            "(agent-supervisor db migration DIR for a Supabase project, or db apply --dsn …)"
        )
    return (
        f"{where} has agent-supervisor schema version {found}, newer than this agent-supervisor "
        f"(version {SCHEMA_VERSION}): upgrade agent-supervisor (pip install -U agent-supervisor)"
    )


def apply_sql(conn: psycopg.Connection[Any], *, per_user: bool = False) -> None:
    """Apply the files in one transaction on ``conn`` (committed here; rolled back on error).

    Without parameters psycopg sends each file as one simple query, so several statements and
    the ``%`` of ``format()`` strings pass through untouched.
    """
    with conn.transaction():
        for name in _files(per_user):
            conn.execute(_read(name).encode())
        # PostgREST caches the schema; a Supabase project reloads on DDL by itself, a
        # self-hosted PostgREST needs this (else it answers PGRST202 for the new functions).
        conn.execute("notify pgrst, 'reload schema'")


def migration_text(*, per_user: bool = False, now: float | None = None) -> str:
    """The SQL as a Supabase migration: a header naming its version, then ``schema_text``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    return (
        f"-- agent-supervisor schema version {SCHEMA_VERSION}\n"
        f"-- Written by `agent-supervisor db migration` on {stamp}; `supabase db push` applies it.\n"
        "-- The SQL is idempotent: applying it over an older version upgrades it in place.\n\n"
        + schema_text(per_user=per_user)
    )


def write_migration(project: Path, *, per_user: bool = False, now: float | None = None) -> tuple[Path, bool]:
    """Write the migration into ``project``'s ``supabase/migrations/`` (made if missing; or
    ``project`` itself when it is a ``migrations`` directory). Returns the file and whether it
    was written: an existing migration of this schema version is not written twice."""
    if project.exists() and not project.is_dir():
        raise ConfigError(f"{project} is not a directory")
    target = project if project.name == "migrations" else project / "supabase" / "migrations"
    for existing in sorted(target.glob(f"*_{_MIGRATION_NAME}*.sql")) if target.is_dir() else ():
        found = _VERSION_LINE.search(existing.read_text(encoding="utf-8", errors="replace"))
        if found and int(found.group(1)) == SCHEMA_VERSION and ("per_user" in existing.name) == per_user:
            return existing, False
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {target}: {exc.strerror or exc}") from None
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    name = f"{stamp}_{_MIGRATION_NAME}{'_per_user' if per_user else ''}_v{SCHEMA_VERSION}.sql"
    path = target / name
    try:
        with path.open("x", encoding="utf-8") as out:  # never overwrite another migration
            out.write(migration_text(per_user=per_user, now=now))
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path, True


def dsn_for_display(dsn: str) -> str:
    """``user@host:port/dbname`` of a DSN (URI or key=value), never its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - libpq's parse errors may quote the DSN, password and all
        raise ConfigError("invalid DSN (not shown: it may hold a password)") from None
    user = parts.get("user") or "(default user)"
    host = parts.get("host") or parts.get("hostaddr") or "(default host)"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{user}@{host}{port}/{parts.get('dbname') or '(default db)'}"


def run_db(args: argparse.Namespace, out: TextIO) -> int:
    """The ``db`` command of the CLI (the parser lives in bridge/cli/parser.py)."""
    per_user = bool(getattr(args, "per_user", False))
    if args.db_command == "schema":
        out.write(schema_text(per_user=per_user))
        return 0
    if args.db_command == "apply":
        return _apply(args.dsn, out, per_user=per_user)
    if args.db_command == "migration":
        path, written = write_migration(args.dir, per_user=per_user)
        if written:
            out.write(f"wrote {path} (schema version {SCHEMA_VERSION}); apply it with: supabase db push\n")
        else:
            out.write(f"{path} already holds schema version {SCHEMA_VERSION}; nothing written\n")
        return 0
    raise ConfigError(f"unknown db command {args.db_command!r}")


def _apply(dsn: str, out: TextIO, *, per_user: bool) -> int:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    where = dsn_for_display(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=10, application_name="agent-supervisor db apply") as conn:
            before = _version(conn)
            conn.rollback()
            if before is not None and before > SCHEMA_VERSION:  # never downgrade a database
                raise ConfigError(schema_mismatch(where, before) or "")
            apply_sql(conn, per_user=per_user)
            after = _version(conn)
    except psycopg.OperationalError as exc:
        # Connection errors name host, port and user, never the password; still, do not chain
        # the raw error: a libpq message may quote the connection string.
        raise StoreUnavailableError(f"cannot apply the SQL to {where}: {_first_line(exc)}") from None
    except psycopg.Error as exc:
        raise ConfigError(f"applying the SQL to {where} failed: {_first_line(exc)}") from None
    was = "new" if before is None else f"was version {before}"
    files = " then ".join("bridge/sql/" + n for n in _files(per_user))
    out.write(
        f"applied {files} to {where} in one transaction\n"
        f"schema version {after} ({was}): tables jobs, job_events, job_requests, job_store_meta; "
        f"RPC functions jobs_*; RLS on; anon revoked; "
        f"{'authenticated granted its own jobs (per-user mode); ' if per_user else 'authenticated revoked; '}"
        "service_role granted\n"
    )
    return 0


def _version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version of the database: None without our SQL, 1 for the first version
    (which had no version table)."""
    meta, jobs = conn.execute(
        "select to_regclass('public.job_store_meta') is not null, to_regclass('public.jobs') is not null"
    ).fetchone() or (False, False)
    if not meta:
        return 1 if jobs else None
    row = conn.execute("select schema_version from public.job_store_meta where id = 1").fetchone()
    return None if row is None else int(row[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
