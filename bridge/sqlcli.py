"""``agent-supervisor db schema`` and ``db apply``: the SQL of the Postgres and Supabase stores.

``db schema`` prints ``bridge/sql/schema.sql`` then ``functions.sql`` (paste them into the
Supabase SQL editor, or pipe them to ``psql``). ``db apply --dsn DSN`` applies both to a Postgres
database in one transaction with psycopg (``pip install 'agent-supervisor[postgres]'``). The
password comes from the DSN or ``PGPASSWORD`` (libpq reads it) and is never printed.
"""

from __future__ import annotations

import argparse
import functools
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, TextIO

from supervisor.errors import ConfigError, StoreUnavailableError

if TYPE_CHECKING:
    import psycopg

__all__ = ["SQL_FILES", "apply_sql", "dsn_for_display", "run_db", "schema_text"]

SQL_FILES: Final = ("schema.sql", "functions.sql")
"""Applied in this order; both are idempotent."""

_INSTALL_HINT: Final = "psycopg is not installed: pip install 'agent-supervisor[postgres]'"


@functools.cache
def _read(name: str) -> str:
    return resources.files("bridge").joinpath(f"sql/{name}").read_text(encoding="utf-8")


def schema_text() -> str:
    """The whole SQL, schema first, as ``db schema`` prints it."""
    return "\n".join(_read(name).rstrip("\n") + "\n" for name in SQL_FILES)


def apply_sql(conn: psycopg.Connection[Any]) -> None:
    """Apply both files in one transaction on ``conn`` (committed here; rolled back on error).

    Without parameters psycopg sends each file as one simple query, so several statements and
    the ``%`` of ``format()`` strings pass through untouched.
    """
    with conn.transaction():
        for name in SQL_FILES:
            conn.execute(_read(name).encode())
        # PostgREST caches the schema; a Supabase project reloads on DDL by itself, a
        # self-hosted PostgREST needs this (else it answers PGRST202 for the new functions).
        conn.execute("notify pgrst, 'reload schema'")


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
    """The ``db`` command of the CLI (the parser lives in bridge/cli.py)."""
    if args.db_command == "schema":
        out.write(schema_text())
        return 0
    if args.db_command == "apply":
        return _apply(args.dsn, out)
    raise ConfigError(f"unknown db command {args.db_command!r}")


def _apply(dsn: str, out: TextIO) -> int:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    where = dsn_for_display(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=10, application_name="agent-supervisor db apply") as conn:
            apply_sql(conn)
            version = conn.execute("select version from public.jobs_schema_version()").fetchone()
    except psycopg.OperationalError as exc:
        # Connection errors name host, port and user, never the password; still, do not chain
        # the raw error: a libpq message may quote the connection string.
        raise StoreUnavailableError(f"cannot apply the SQL to {where}: {_first_line(exc)}") from None
    except psycopg.Error as exc:
        raise ConfigError(f"applying the SQL to {where} failed: {_first_line(exc)}") from None
    out.write(
        f"applied {' then '.join('bridge/sql/' + n for n in SQL_FILES)} to {where} in one transaction\n"
        f"schema version {version[0] if version else '?'}: tables jobs, job_events, job_requests; "
        "RPC functions jobs_*; RLS on; anon/authenticated revoked; service_role granted\n"
    )
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
