"""The direct Postgres job store: the SQL functions of ``bridge/sql/`` over psycopg 3.

For self-hosted Postgres and Supabase connection strings (use the session pooler or a direct
connection: the store keeps one session, LISTENs, and sets session settings). Selected by
``AGENT_SUPERVISOR_STORE=postgresql://…``. Needs ``pip install 'agent-supervisor[postgres]'``.

One connection per store, in autocommit mode: every operation is ONE statement calling one
function, so it is one transaction on the server, and nothing is left open between calls.
Threads share the connection under a lock. A broken connection is dropped and the next
attempt reconnects (bridge/stores/policy.py decides what to retry). Arguments travel exactly as
PostgREST sends them: one JSON object decoded by ``json_to_record`` into the function's named
parameters, and the rows come back as one JSON array, so both remote stores share one
conversion and the contract suite tests the same decoding twice. Each statement is prepared
once per connection (not behind a transaction pooler: ``_prepare_threshold``).

``watch()`` pushes change hints through a second, dedicated connection that LISTENs on
``NOTIFY_CHANNEL`` (``ListenWatch``): the triggers of functions.sql notify for every change a
claimer cares about, a plain SQL insert included, with the job's due time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from bridge.sqlcli import SCHEMA_VERSION, schema_mismatch
from bridge.stores.policy import RetryPolicy, describe
from bridge.stores.remote import RemoteStore
from supervisor.errors import ConfigError, StoreError
from supervisor.lifecycle import DEFAULT_BACKOFF_CAP_S

if TYPE_CHECKING:
    import psycopg

__all__ = ["NOTIFY_CHANNEL", "SCHEMA_VERSION", "SIGNATURES", "ListenWatch", "PostgresStore"]

log = logging.getLogger("agent_supervisor.store")

NOTIFY_CHANNEL: Final = "agent_supervisor_jobs"
"""The channel ``public._jobs_notify()`` of functions.sql notifies; ``watch()`` listens."""

SIGNATURES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "jobs_enqueue": (("p_specs", "jsonb"), ("p_request_id", "uuid"), ("p_first_line", "integer")),
    "jobs_claim": (
        ("p_worker", "text"),
        ("p_claim_id", "uuid"),
        ("p_limit", "integer"),
        ("p_lease_s", "double precision"),
        ("p_kinds", "text[]"),
        ("p_exclude_kinds", "text[]"),
    ),
    "jobs_mark_running": (
        ("p_id", "bigint"),
        ("p_worker", "text"),
        ("p_attempt", "integer"),
        ("p_pid", "integer"),
        ("p_facts", "jsonb"),
    ),
    "jobs_heartbeat": (
        ("p_worker", "text"),
        ("p_ids", "bigint[]"),
        ("p_attempts", "integer[]"),
        ("p_progress", "jsonb"),
        ("p_stats", "jsonb"),
        ("p_lease_s", "double precision"),
        ("p_active", "boolean[]"),
    ),
    "jobs_finish": (
        ("p_id", "bigint"),
        ("p_worker", "text"),
        ("p_attempt", "integer"),
        ("p_outcome", "jsonb"),
        ("p_backoff_cap_s", "double precision"),
    ),
    "jobs_update": (("p_id", "bigint"), ("p_expected_version", "bigint"), ("p_changes", "jsonb")),
    "jobs_reap_stale": (
        ("p_grace_s", "double precision"),
        ("p_backoff_cap_s", "double precision"),
        ("p_limit", "integer"),
    ),
    "jobs_request_cancel": (("p_id", "bigint"), ("p_mode", "text")),
    "jobs_retry": (("p_id", "bigint"),),
    "jobs_get": (("p_id", "bigint"),),
    "jobs_list": (
        ("p_statuses", "text[]"),
        ("p_lease_owner", "text"),
        ("p_limit", "integer"),
        ("p_before_id", "bigint"),
        ("p_kinds", "text[]"),
        ("p_concurrency_key", "text"),
        ("p_created_after", "timestamptz"),
        ("p_created_before", "timestamptz"),
        ("p_finished_after", "timestamptz"),
        ("p_offset", "integer"),
    ),
    "jobs_next_due": (),
    "jobs_queue_position": (("p_id", "bigint"),),
    "jobs_identity": (),
    "jobs_counts": (),
    "jobs_purge": (
        ("p_ids", "bigint[]"),
        ("p_statuses", "text[]"),
        ("p_older_than_s", "double precision"),
        ("p_request_id", "uuid"),
        ("p_limit", "integer"),
        ("p_after_id", "bigint"),
    ),
    "jobs_events": (("p_id", "bigint"), ("p_after_seq", "bigint"), ("p_limit", "integer")),
    "jobs_now": (),
    "jobs_schema_version": (),
}
"""The parameters of each function of functions.sql, in the form json_to_record needs."""


def _statement(fn: str) -> str:
    # Names come from SIGNATURES, never from input; the one value is a bound parameter.
    args = SIGNATURES[fn]
    if not args:
        return f"select coalesce(json_agg(r), '[]'::json) from public.{fn}() r"  # noqa: S608
    columns = ", ".join(f"{name} {kind}" for name, kind in args)
    named = ", ".join(f"{name} => a.{name}" for name, _ in args)
    return (
        f"select coalesce(json_agg(r), '[]'::json) from json_to_record(%s::json) as a({columns}),"  # noqa: S608
        f" lateral public.{fn}({named}) r"
    )


_STATEMENTS: Final = {fn: _statement(fn) for fn in SIGNATURES}


class PostgresStore(RemoteStore):
    """A ``JobStore`` on a Postgres database that has the SQL of ``agent-supervisor db schema``.

    ``dsn`` is a libpq connection string or URI (the password may also come from PGPASSWORD or
    ~/.pgpass); it is never logged. ``backoff_cap_s`` bounds the retry backoff of failed jobs;
    ``retry`` is the policy for transient failures of the connection.
    """

    def __init__(
        self,
        dsn: str,
        *,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        retry: RetryPolicy | None = None,
        connect_timeout_s: int = 5,
        statement_timeout_s: float = 15.0,
        prepare: bool | None = None,
    ) -> None:
        try:
            import psycopg  # noqa: F401 - fail here, with the hint, not on the first call
        except ImportError:
            raise ConfigError(
                "the Postgres store needs psycopg: pip install 'agent-supervisor[postgres]'"
            ) from None
        from psycopg.conninfo import conninfo_to_dict

        from bridge.sqlcli import dsn_for_display

        super().__init__(
            name=f"Postgres store {dsn_for_display(dsn)}", backoff_cap_s=backoff_cap_s, retry=retry
        )
        self._dsn = dsn
        self._password = str(conninfo_to_dict(dsn).get("password") or os.environ.get("PGPASSWORD") or "")
        self._connect_timeout_s = connect_timeout_s
        self._prepare_threshold = _prepare_threshold(dsn, prepare)
        self._statement_timeout_ms = int(statement_timeout_s * 1000)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False

    def _secrets(self) -> Iterable[str]:
        return (self._password, self._dsn) if self._password else (self._dsn,)

    # -- the connection ------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._closed:
            raise StoreError(f"{self._name} is closed")
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop()
        conn = psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=self._connect_timeout_s,
            application_name="agent-supervisor",
            # Each call's statement is prepared on first use and then only executed: the
            # server skips parsing and planning it (issue 10: server CPU per job). Not behind a
            # transaction pooler, which cannot keep prepared statements (``_prepare_threshold``).
            prepare_threshold=self._prepare_threshold,
            # A half-open connection (NAT, suspend) is detected in ~1 min, not at TCP's 2 h.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
            tcp_user_timeout=self._statement_timeout_ms + 5000,
        )
        try:
            # Our calls take milliseconds; one that hangs is a broken server, not a long job.
            conn.execute(f"set statement_timeout = {self._statement_timeout_ms}")
            version = conn.execute("select version from public.jobs_schema_version()").fetchone()
        except psycopg.errors.UndefinedFunction:
            conn.close()
            raise StoreError(
                f"{self._name} has no agent-supervisor schema: run agent-supervisor db apply --dsn …"
            ) from None
        except BaseException:
            conn.close()
            raise
        mismatch = schema_mismatch(self._name, None if version is None else int(version[0]))
        if mismatch:
            conn.close()
            raise StoreError(mismatch)
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _failed(self, exc: BaseException) -> None:
        import psycopg

        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            with self._lock:
                self._drop()  # reconnect on the next attempt; the server rolled back

    def _session_settings(self) -> dict[str, str]:
        """Settings for the transaction of each call (none here; tests drive the clock)."""
        return {}

    def _send(self, fn: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        body = json.dumps(params, ensure_ascii=False, allow_nan=False)
        statement = _STATEMENTS[fn]
        with self._lock:
            conn = self._connection()
            settings = self._session_settings()
            if settings:
                with conn.transaction():
                    for name, value in settings.items():
                        conn.execute("select set_config(%s, %s, true)", (name, value))
                    row = conn.execute(statement, (body,) if SIGNATURES[fn] else None).fetchone()
            else:
                row = conn.execute(statement, (body,) if SIGNATURES[fn] else None).fetchone()
        rows = [] if row is None else row[0]
        if not isinstance(rows, list):
            raise StoreError(f"{self._name}: {fn} answered {type(rows).__name__}, not rows")
        return rows

    # -- push and closing ---------------------------------------------------------------
    def watch(self, wake: Callable[[float | None], None]) -> ListenWatch:
        """Push wake-ups (protocol v2): a dedicated LISTEN connection, waited on in a thread,
        calls ``wake(due_at)`` for every NOTIFY of functions.sql (any writer, even a plain SQL
        insert: the insert trigger notifies). ``live`` is False while it reconnects."""
        if self._closed:
            raise StoreError(f"{self._name} is closed")
        watch = ListenWatch(self._connect_kwargs(), wake, name=self._name)
        watch.wait_live(self._connect_timeout_s + 1.0)
        return watch

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "conninfo": self._dsn,
            "autocommit": True,
            "connect_timeout": self._connect_timeout_s,
            "application_name": "agent-supervisor watch",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            self._closed = True
            self._drop()


class ListenWatch:
    """A LISTEN connection in a thread of its own (``PostgresStore.watch``).

    The thread waits in ``select`` on the connection's socket and on a wake-up pipe (so that
    ``close`` ends it at once, without polling), reads the notifications psycopg received, and
    calls ``wake`` with each payload's ``due_at``. A lost connection is re-made with backoff
    (0.5 s doubling to 30 s); on every (re)connect ``wake(None)`` is called once, since what
    happened while not listening is unknown (not on the first connect: the caller has just
    started watching and looks anyway).
    """

    def __init__(self, connect: dict[str, Any], wake: Callable[[float | None], None], *, name: str) -> None:
        self._connect = connect
        self._wake = wake
        self._name = name
        self._live = False
        self._up = threading.Event()
        self._stop = threading.Event()
        self._read_fd, self._write_fd = os.pipe()
        self._thread = threading.Thread(target=self._run, name="agent-supervisor-listen", daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        """The LISTEN connection is up right now."""
        return self._live

    def wait_live(self, timeout_s: float) -> bool:
        """Wait until the first LISTEN is in place (or ``timeout_s``); whether it is."""
        return self._up.wait(timeout_s) and self._live

    def close(self) -> None:
        """Stop listening and join the thread. Idempotent."""
        if not self._stop.is_set():
            self._stop.set()
            with contextlib.suppress(OSError):
                os.write(self._write_fd, b"x")
        self._thread.join(timeout=10)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._read_fd = self._write_fd = -1

    def _run(self) -> None:
        import psycopg

        delay = 0.5
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(**self._connect) as conn:
                    conn.execute(f"listen {NOTIFY_CHANNEL}")
                    self._live = True
                    self._up.set()
                    delay = 0.5
                    if not first:
                        self._call(None)
                    first = False
                    self._listen(conn)
            except (psycopg.Error, OSError) as exc:
                if not self._stop.is_set():
                    log.warning("%s: wake-up channel lost (%s); polling until it is back", self._name,
                                describe(exc))  # fmt: skip
            finally:
                self._live = False
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 30.0)

    def _listen(self, conn: Any) -> None:
        sock = conn.pgconn.socket
        while not self._stop.is_set():
            ready, _, _ = select.select([sock, self._read_fd], [], [])
            if self._read_fd in ready:
                return
            for note in conn.notifies(timeout=0):
                self._call(_due_at(note.payload))

    def _call(self, due_at: float | None) -> None:
        try:
            self._wake(due_at)
        except Exception:  # the caller's bug must not end the watch
            log.exception("%s: wake-up callback failed", self._name)


def _prepare_threshold(dsn: str, prepare: bool | None) -> int | None:
    """psycopg's ``prepare_threshold``: 0 (prepare at once) unless ``prepare`` is False, or
    None (auto) and the DSN names Supabase's transaction pooler (port 6543) or asks pgbouncer
    mode (``?pgbouncer=true`` is how Prisma and others spell it): then never."""
    from psycopg.conninfo import conninfo_to_dict

    if prepare is None:
        try:
            parts = conninfo_to_dict(dsn)
        except Exception:  # noqa: BLE001 - a bad DSN fails on connect, with its own message
            parts = {}
        prepare = str(parts.get("port")) != "6543" and "pgbouncer=true" not in dsn.lower()
    return 0 if prepare else None


def _due_at(payload: str) -> float | None:
    """``due_at`` of a NOTIFY payload ``{"due_at": epoch | null}`` (anything else: now)."""
    try:
        value = json.loads(payload).get("due_at") if payload else None
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None
