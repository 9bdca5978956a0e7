"""The SQLite file under the job store: creating it privately, opening, migrating, transactions,
error translation, the named statements of ``bridge/sql/sqlite_queries.sql``, and the one
statement built from its filters (``list_statement``).

``bridge/stores/sqlite.py`` says *what* each store verb does; this module owns *how* the file is
reached. Nothing from ``sqlite3`` leaks out: errors are translated at the boundary
(``Database.translate``) by SQLite's primary result codes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from supervisor.errors import StoreError, StoreUnavailableError

__all__ = ["SCHEMA_VERSION", "Database", "list_statement", "schema_sql", "sql"]

SCHEMA_VERSION: Final = 2
"""Kept in ``PRAGMA user_version``; a file with a newer version is refused, not guessed at."""
_V2_COLUMNS: Final = (("repo", "text"), ("ref", "text"), ("unique_key", "text"), ("last_activity_at", "real"))
"""Columns version 2 added to ``jobs`` (a version 1 file gets them by ALTER TABLE)."""
_NAME_MARK: Final = "-- name: "

# sqlite3 primary result codes (https://sqlite.org/rescode.html), the table of translate().
_BUSY: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_CORRUPT: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_UNREACHABLE: Final = frozenset({3, 8, 10, 13, 14, 15})  # PERM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL


@functools.cache
def schema_sql() -> str:
    """The schema this store applies (``agent-supervisor db schema`` prints it)."""
    return resources.files("bridge").joinpath("sql/sqlite.sql").read_text(encoding="utf-8")


@functools.cache
def _queries() -> Mapping[str, str]:
    """The statements of ``sqlite_queries.sql`` by name: each runs from its ``-- name: <name>``
    line to the next one, without its comment lines and its final semicolon."""
    text = resources.files("bridge").joinpath("sql/sqlite_queries.sql").read_text(encoding="utf-8")
    lines: dict[str, list[str]] = {}
    current: list[str] = []  # the file's header, before the first name: not a statement
    for line in text.splitlines():
        if line.startswith(_NAME_MARK):
            current = lines.setdefault(line.removeprefix(_NAME_MARK).strip(), [])
        elif not line.lstrip().startswith("--"):
            current.append(line)
    return MappingProxyType({name: "\n".join(body).strip().removesuffix(";") for name, body in lines.items()})


def sql(name: str) -> str:
    """The statement ``name`` of ``sqlite_queries.sql``."""
    return _queries()[name]


def _text(raw: bytes) -> str | bytes:
    """Decode a TEXT value; a value that is not UTF-8 (a damaged row) comes back as bytes,
    which the row decoder refuses for that row alone. sqlite3's default would raise while
    fetching and take every other row of the query down with it."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


class Database:
    """One SQLite file (or ``":memory:"``): a connection shared by threads under a lock."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0, create: bool = True) -> None:
        self.path = str(path)
        self.lock = threading.RLock()
        self.created = False
        """True when this open made the file (it was missing or empty)."""
        if self.path != ":memory:":
            self.created = self._create_file(Path(path), create)
        self._conn: sqlite3.Connection | None = self._open(busy_timeout_s)

    # -- opening -------------------------------------------------------------------------
    def _create_file(self, path: Path, create: bool) -> bool:
        """Create the file (0600) ourselves: sqlite would create it with 0644 & ~umask,
        readable by every local user. True when it is new (missing, or zero bytes long)."""
        try:
            if not path.parent.exists():
                if not create:
                    raise StoreUnavailableError(
                        f"SQLite store {self.path}: directory {path.parent} does not exist"
                    )
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return path.stat().st_size == 0
            try:
                os.fchmod(fd, 0o600)  # os.open's mode is filtered by the umask too
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            raise StoreUnavailableError(
                f"SQLite store {self.path} cannot be created: {exc.strerror or exc}"
            ) from exc

    def _open(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            # isolation_level=None: autocommit; we issue BEGIN IMMEDIATE/COMMIT ourselves.
            # check_same_thread=False: threads share the connection under self.lock.
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc
        try:
            conn.text_factory = _text
            conn.execute(f"pragma busy_timeout = {max(0, int(busy_timeout_s * 1000))}")
            conn.execute("pragma foreign_keys = on")  # job_events rows go with their job
            conn.execute("pragma journal_mode = wal")  # readers never block the writer
            # WAL + synchronous=NORMAL survives any crash of an application (the commit is in
            # the WAL before COMMIT returns); only an OS crash or power loss may lose the last
            # commits, never corrupt the file. The failure we guard against is the former.
            conn.execute("pragma synchronous = normal")
            conn.row_factory = sqlite3.Row
            self._migrate(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self.translate(exc) from exc
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("pragma user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"SQLite store {self.path} has schema version {version}; "
                f"this agent-supervisor understands up to {SCHEMA_VERSION}"
            )
        # One transaction: a version 1 file gets version 2's columns, then the whole
        # (idempotent) schema, the counts of the rows it already has, and its identity. Two
        # processes may race here: BEGIN IMMEDIATE serialises them, and the second finds the
        # version already moved.
        conn.execute("begin immediate")
        try:
            if conn.execute("pragma user_version").fetchone()[0] < SCHEMA_VERSION:
                present = {row[1] for row in conn.execute("pragma table_info(jobs)")}
                if present:
                    for name, kind in _V2_COLUMNS:
                        if name not in present:
                            conn.execute(f"alter table jobs add column {name} {kind}")
                for statement in _statements(schema_sql()):
                    conn.execute(statement)
                conn.execute(sql("recount_clear"))
                conn.execute(sql("recount"))
                import uuid  # once per new file; not worth its import on every open

                conn.execute(sql("make_identity"), (uuid.uuid4().hex,))
                conn.execute(f"pragma user_version = {SCHEMA_VERSION}")
            conn.execute("commit")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("rollback")
            raise

    # -- use -----------------------------------------------------------------------------
    def translate(self, exc: sqlite3.Error) -> StoreError:
        """Map a sqlite3 error to our tree by result code (message text as a fallback)."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = " ".join(str(exc).split()) or type(exc).__name__
        low = text.lower()
        if primary in _BUSY or "locked" in low:
            return StoreUnavailableError(
                f"SQLite store {self.path} is busy: another process holds its lock ({text})"
            )
        if primary in _CORRUPT or "not a database" in low or "malformed" in low:
            return StoreError(
                f"SQLite store {self.path} is corrupt ({text}); move it (and its -wal file) aside"
            )
        if primary in _UNREACHABLE or "disk i/o" in low or "readonly" in low or "unable to open" in low:
            return StoreUnavailableError(f"SQLite store {self.path} cannot be read or written ({text})")
        return StoreError(f"SQLite store {self.path}: {text}")

    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"SQLite store {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def transaction(
        self, clock: Callable[[], float], *, write: bool = True
    ) -> Iterator[tuple[sqlite3.Connection, float]]:
        """One transaction and the store time, read once inside it. BEGIN IMMEDIATE takes the
        write lock up front: a deferred transaction that upgrades to write in WAL mode fails
        with SQLITE_BUSY_SNAPSHOT at once instead of waiting for the lock."""
        with self.lock:
            db = self.connection()
            try:
                db.execute("begin immediate" if write else "begin")
                try:
                    yield db, clock()
                    db.execute("commit")
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("rollback")
                    raise
            except sqlite3.Error as exc:
                raise self.translate(exc) from exc

    def scalar(self, name: str, params: Any = ()) -> Any:
        """The first column of the first row of statement ``name`` (None without a row)."""
        with self.lock:
            try:
                row = self.connection().execute(sql(name), params).fetchone()
            except sqlite3.Error as exc:
                raise self.translate(exc) from exc
        return None if row is None else row[0]

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (``sqlite3.complete_statement`` finds their
    ends, triggers' inner semicolons included), so they run inside our transaction:
    ``executescript`` would commit it first."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


def list_statement(
    *,
    statuses: Sequence[str] | None,
    kinds: Sequence[str] | None,
    lease_owner: str | None,
    concurrency_key: str | None,
    created_after: float | None,
    created_before: float | None,
    finished_after: float | None,
    limit: int | None,
    offset: int,
) -> tuple[str, list[Any]]:
    """The ``select`` of ``SQLiteStore.list`` and its parameters (see its docstring for the
    shapes and why). Every clause is a fixed string of this function; values are bound."""
    clauses: list[str] = []
    params: list[Any] = []
    if kinds is not None:
        clauses.append("kind = ?" if len(kinds) == 1 else "kind in (select value from json_each(?))")
        params.append(kinds[0] if len(kinds) == 1 else json.dumps(list(kinds)))
    for clause, bound in (
        ("lease_owner = ?", lease_owner),
        ("concurrency_key = ?", concurrency_key),
        ("created_at >= ?", created_after),
        ("created_at < ?", created_before),
        ("finished_at >= ?", finished_after),
    ):
        if bound is not None:
            clauses.append(clause)
            params.append(bound)
    source = "jobs indexed by jobs_finished" if finished_after is not None else "jobs"
    page = [-1 if limit is None else max(limit, 0), max(offset, 0)]  # LIMIT -1: no limit

    def select(status_clause: str | None) -> str:
        where = [status_clause, *clauses] if status_clause else clauses
        return f"select * from {source}" + (f" where {' and '.join(where)}" if where else "")  # noqa: S608

    if statuses is None:
        return f"{select(None)} order by id desc limit ? offset ?", params + page
    if len(statuses) == 1 or limit is None or finished_after is not None:
        if len(statuses) == 1:
            return f"{select('status = ?')} order by id desc limit ? offset ?", [statuses[0], *params, *page]
        statement = select("status in (select value from json_each(?))")
        return f"{statement} order by id desc limit ? offset ?", [json.dumps(list(statuses)), *params, *page]
    each = max(limit, 0) + max(offset, 0)
    parts = " union all ".join(
        f"select * from ({select('status = ?')} order by id desc limit ?)"  # noqa: S608 - fixed clauses
        for _ in statuses
    )
    merged: list[Any] = []
    for status in statuses:
        merged += [status, *params, each]
    return f"select * from ({parts}) order by id desc limit ? offset ?", merged + page  # noqa: S608
