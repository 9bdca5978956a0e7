"""The embedded SQLite job store: one file, WAL, ``BEGIN IMMEDIATE`` for every write.

Every status change runs through ``supervisor.lifecycle`` in Python inside one transaction:
read the rows, call the pure function, write the new row and append its event, commit. The
schema (``bridge/sql/sqlite.sql``) holds data and indexes, never transition rules, so this store
can be no more permissive than ``MemoryStore``; one contract suite runs against both. The
statements live in ``bridge/sql/sqlite_queries.sql``, read once (``_sql``); rows are encoded
and decoded by ``bridge/stores/rows.py``.

Several supervisors (processes) may share the file: ``BEGIN IMMEDIATE`` takes SQLite's write
lock before the first read, so two claims are serialised and never return the same job. Inside
a process, threads (a host thread, the supervisor thread) share one connection under a lock.
Nothing from ``sqlite3`` leaks out: errors are translated at the boundary (``_translate``).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from bridge.stores.rows import event_from_sqlite, event_to_sqlite, job_from_sqlite, job_to_sqlite
from supervisor import lifecycle as lc
from supervisor.errors import (
    JobNotFoundError,
    LeaseLostError,
    StoreError,
    StoreUnavailableError,
    UpdateConflictError,
)
from supervisor.lifecycle import LIVE, CancelMode, Event, Job, JobSpec, Outcome, Status
from supervisor.store import Beat, BeatReply, PurgeResult, QueueCounts

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "schema_sql"]

SCHEMA_VERSION: Final = 1
"""Kept in ``PRAGMA user_version``; a file with a newer version is refused, not guessed at."""

_COLUMNS: Final = tuple(f.name for f in fields(Job))
# Identifiers come from Job's fields, never from input; every value is a bound parameter.
_NAMES: Final = ", ".join(_COLUMNS)
_VALUES: Final = ", ".join(f":{c}" for c in _COLUMNS)
_ASSIGN: Final = ", ".join(f"{c} = :{c}" for c in _COLUMNS if c != "id")
_INSERT: Final = f"insert into jobs ({_NAMES}) values ({_VALUES})"  # noqa: S608
_UPDATE: Final = f"update jobs set {_ASSIGN} where id = :id"  # noqa: S608
_NAME_MARK: Final = "-- name: "

# sqlite3 primary result codes (https://sqlite.org/rescode.html), the table of _translate.
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


def _sql(name: str) -> str:
    """The statement ``name`` of ``sqlite_queries.sql``."""
    return _queries()[name]


class SQLiteStore:
    """A ``JobStore`` on one SQLite file (or ``":memory:"`` for quick tests).

    ``clock`` is the store's clock (default ``time.time``), read once per transaction; ``rng``
    draws the retry backoff jitter; ``busy_timeout_s`` is how long a write waits for another
    process's lock before ``StoreUnavailableError``.
    """

    shared = False  # jobs in a local file come from this machine's user

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        backoff_cap_s: float = lc.DEFAULT_BACKOFF_CAP_S,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self._path = str(path)
        self._clock = clock or time.time
        # The retry policy's knobs, passed to lifecycle.settle/reap. One rng for the store:
        # calls are serialised by self._lock, so its draws never interleave.
        self._policy: dict[str, Any] = {"rng": rng or random.Random(), "backoff_cap_s": backoff_cap_s}
        self._lock = threading.RLock()
        self._writes = 0  # our own commits: PRAGMA data_version does not count them
        self._seen: tuple[int, int] | None = None
        if self._path != ":memory:":
            self._create_file(Path(path))
        self._conn: sqlite3.Connection | None = self._open(busy_timeout_s)

    @property
    def path(self) -> str:
        """The database file, as given (for messages and health)."""
        return self._path

    # -- opening -------------------------------------------------------------------------
    def _create_file(self, path: Path) -> None:
        """Create the data dir (0700) and the file (0600) ourselves: sqlite would create the
        file with 0644 & ~umask, readable by every local user."""
        try:
            if not path.parent.exists():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            try:
                os.fchmod(fd, 0o600)  # os.open's mode is filtered by the umask too
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreUnavailableError(
                f"SQLite store {self._path} cannot be created: {exc.strerror or exc}"
            ) from exc

    def _open(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            # isolation_level=None: autocommit; we issue BEGIN IMMEDIATE/COMMIT ourselves.
            # check_same_thread=False: threads share the connection under self._lock.
            conn = sqlite3.connect(
                self._path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        try:
            conn.execute(f"pragma busy_timeout = {max(0, int(busy_timeout_s * 1000))}")
            conn.execute("pragma foreign_keys = on")  # job_events rows go with their job
            conn.execute("pragma journal_mode = wal")  # readers never block the writer
            # WAL + synchronous=NORMAL survives any crash of an application (the commit is in
            # the WAL before COMMIT returns); only an OS crash or power loss may lose the last
            # commits, never corrupt the file. The failure we guard against is the former.
            conn.execute("pragma synchronous = normal")
            conn.row_factory = sqlite3.Row
            self._migrate(conn)
            columns = {row["name"] for row in conn.execute("pragma table_info(jobs)")}
            if missing := sorted(set(_COLUMNS) - columns):
                raise StoreError(f"SQLite store {self._path} has no column {missing[0]!r} in table jobs")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("pragma user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"SQLite store {self._path} has schema version {version}; "
                f"this agent-supervisor understands up to {SCHEMA_VERSION}"
            )
        # executescript commits any open transaction first, so BEGIN goes inside the script.
        # Two processes may race here: the script is idempotent and serialised by the lock.
        script = f"begin immediate;\n{schema_sql()}\npragma user_version = {SCHEMA_VERSION};\ncommit;"
        try:
            conn.executescript(script)
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("rollback")
            raise

    # -- plumbing ------------------------------------------------------------------------
    def _translate(self, exc: sqlite3.Error) -> StoreError:
        """Map a sqlite3 error to our tree by result code (message text as a fallback)."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = " ".join(str(exc).split()) or type(exc).__name__
        low = text.lower()
        if primary in _BUSY or "locked" in low:
            return StoreUnavailableError(
                f"SQLite store {self._path} is busy: another process holds its lock ({text})"
            )
        if primary in _CORRUPT or "not a database" in low or "malformed" in low:
            return StoreError(
                f"SQLite store {self._path} is corrupt ({text}); move it (and its -wal file) aside"
            )
        if primary in _UNREACHABLE or "disk i/o" in low or "readonly" in low or "unable to open" in low:
            return StoreUnavailableError(f"SQLite store {self._path} cannot be read or written ({text})")
        return StoreError(f"SQLite store {self._path}: {text}")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"SQLite store {self._path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[tuple[sqlite3.Connection, float]]:
        """One transaction and the store time, read once inside it. BEGIN IMMEDIATE takes the
        write lock up front: a deferred transaction that upgrades to write in WAL mode fails
        with SQLITE_BUSY_SNAPSHOT at once instead of waiting for the lock."""
        with self._lock:
            db = self._db()
            try:
                db.execute("begin immediate" if write else "begin")
                try:
                    yield db, self._clock()
                    db.execute("commit")
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("rollback")
                    raise
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    def _fetch(
        self, db: sqlite3.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[Job]:
        rows = db.execute(sql, params).fetchall()
        try:
            return [job_from_sqlite(row) for row in rows]
        except (ValueError, TypeError, IndexError) as exc:
            raise StoreError(f"SQLite store {self._path} holds a corrupt job row: {exc}") from exc

    def _get(self, db: sqlite3.Connection, job_id: int) -> Job:
        jobs = self._fetch(db, _sql("job"), (job_id,))
        if not jobs:
            raise JobNotFoundError(f"no job with id {job_id}")
        return jobs[0]

    def _put(self, db: sqlite3.Connection, job: Job, event: Event | None, *, insert: bool = False) -> Job:
        db.execute(_INSERT if insert else _UPDATE, job_to_sqlite(job))
        if event is not None:
            db.execute(_sql("insert_event"), event_to_sqlite(event))
        self._writes += 1
        return job

    # -- JobStore ------------------------------------------------------------------------
    def now(self) -> float:
        """The store's current time, seconds since the epoch."""
        return self._clock()

    def enqueue(self, specs: Sequence[JobSpec]) -> list[int]:
        """Insert jobs in one transaction (dedup by ``dedup_key``); ids in order."""
        if not specs:
            return []
        with self._transaction() as (db, now):
            # AUTOINCREMENT keeps its high-water mark in sqlite_sequence; under the write lock
            # we can hand out the next ids ourselves, so new_job builds the row with its id.
            next_id = db.execute(_sql("next_id")).fetchone()[0]
            ids: list[int] = []
            staged: dict[str, int] = {}
            for spec in specs:
                existing = self._find_dedup(db, spec.dedup_key, staged)
                if existing is not None:
                    ids.append(existing)
                    continue
                job, event = lc.new_job(spec, job_id=next_id, now=now)
                next_id += 1
                self._put(db, job, event, insert=True)
                if spec.dedup_key is not None:
                    staged[spec.dedup_key] = job.id
                ids.append(job.id)
            return ids

    def _find_dedup(self, db: sqlite3.Connection, key: str | None, staged: dict[str, int]) -> int | None:
        if key is None:
            return None
        if key in staged:
            return staged[key]
        row = db.execute(_sql("dedup"), (key,)).fetchone()
        return None if row is None else int(row[0])

    def claim(
        self,
        worker: str,
        limit: int,
        *,
        lease_s: float,
        kinds: Collection[str] | None = None,
        exclude_kinds: Collection[str] = (),
    ) -> list[Job]:
        """Promote due retries, then take up to ``limit`` pending jobs (see ``JobStore.claim``)."""
        with self._transaction() as (db, now):
            for job in self._fetch(db, _sql("due_retries"), (now,)):
                self._put(db, *lc.promote(job, now=now))
            if limit <= 0 or (kinds is not None and not kinds):
                return []
            wanted = None if kinds is None else json.dumps(list(kinds))
            params = {"now": now, "kinds": wanted, "exclude": json.dumps(list(exclude_kinds))}
            ready = self._walk_claimable(db, params, limit)
            return [self._put(db, *lc.claim(job, worker=worker, now=now, lease_s=lease_s)) for job in ready]

    def _walk_claimable(self, db: sqlite3.Connection, params: dict[str, Any], limit: int) -> list[Job]:
        """The first ``limit`` claimable jobs, at most one per concurrency key (why the key
        rule is split between SQL and here: the comment of ``claimable`` in the queries)."""
        cursor = db.execute(_sql("claimable"), params)
        taken: list[Job] = []
        keys: set[str] = set()
        try:
            while len(taken) < limit and (rows := cursor.fetchmany(max(limit * 2, 16))):
                for job in map(job_from_sqlite, rows):
                    if job.concurrency_key is not None:
                        if job.concurrency_key in keys:
                            continue
                        keys.add(job.concurrency_key)
                    taken.append(job)
                    if len(taken) == limit:
                        break
        except (ValueError, TypeError, IndexError) as exc:
            raise StoreError(f"SQLite store {self._path} holds a corrupt job row: {exc}") from exc
        finally:
            cursor.close()
        return taken

    def mark_running(
        self, job_id: int, worker: str, attempt: int, pid: int, facts: dict[str, Any] | None = None
    ) -> Job:
        """preparing → running with the agent's pid; fenced by (worker, attempt)."""
        with self._transaction() as (db, now):
            job = self._get(db, job_id)
            return self._put(
                db, *lc.start(job, worker=worker, attempt=attempt, pid=pid, now=now, facts=facts)
            )

    def heartbeat(self, worker: str, beats: Sequence[Beat], *, lease_s: float) -> list[BeatReply]:
        """Renew all of a worker's leases in one transaction; per job ``lease_lost`` or the
        pending cancel request. Writes no event and keeps ``version``."""
        if not beats:
            return []
        with self._transaction() as (db, now):
            ids = json.dumps(sorted({beat.job_id for beat in beats}))
            rows = self._fetch(db, _sql("jobs_by_ids"), (ids,))
            current = {job.id: job for job in rows}
            renew = functools.partial(lc.heartbeat, worker=worker, now=now, lease_s=lease_s)
            renewed: dict[int, Job] = {}
            replies: list[BeatReply] = []
            for beat in beats:
                job = current.get(beat.job_id)
                try:
                    if job is None:
                        raise LeaseLostError(f"job {beat.job_id} is gone")
                    job = renew(job, attempt=beat.attempt, progress=beat.progress, stats=beat.stats)
                except LeaseLostError:
                    replies.append(BeatReply(beat.job_id, None, lease_lost=True))
                    continue
                current[job.id] = renewed[job.id] = job
                replies.append(BeatReply(job.id, job.cancel_requested, lease_lost=False))
            # Not counted in self._writes: a renewed lease is no news for an idle supervisor.
            db.executemany(_UPDATE, [job_to_sqlite(job) for job in renewed.values()])
            return replies

    def finish(self, job_id: int, worker: str, attempt: int, outcome: Outcome) -> Job:
        """Record the attempt's outcome and apply the retry policy; fenced by (worker, attempt)."""
        with self._transaction() as (db, now):
            job = self._get(db, job_id)
            if lc.is_replayed_finish(job, worker, attempt):
                return job
            return self._put(
                db, *lc.settle(job, outcome, worker=worker, attempt=attempt, now=now, **self._policy)
            )

    def update(self, job_id: int, expected_version: int, changes: dict[str, Any]) -> Job:
        """Optimistic update of editable fields; ``UpdateConflictError`` on a stale version."""
        with self._transaction() as (db, now):
            job = self._get(db, job_id)
            if job.version != expected_version:
                raise UpdateConflictError(f"job {job_id} is at version {job.version}, not {expected_version}")
            return self._put(db, *lc.apply_update(job, changes, now=now))

    def reap_stale(self, grace_s: float) -> list[Job]:
        """Settle as ``lost`` the live jobs whose lease expired more than ``grace_s`` ago, and
        fail the pending jobs past their queue timeout."""
        with self._transaction() as (db, now):
            stale = self._fetch(db, _sql("stale_leases"), (grace_s, now))
            reaped = [self._put(db, *lc.reap(job, now=now, **self._policy)) for job in stale]
            waiting = self._fetch(db, _sql("queue_expired"), (now,))
            return reaped + [self._put(db, *lc.expire(job, now=now)) for job in waiting]

    def request_cancel(self, job_id: int, mode: CancelMode = CancelMode.CANCEL) -> Job:
        """Cancel a job that has not started, or flag a live one for its supervisor."""
        with self._transaction() as (db, now):
            return self._put(db, *lc.request_cancel(self._get(db, job_id), now=now, mode=mode))

    def retry(self, job_id: int) -> Job:
        """Manual retry: failed | cancelled → pending with a fresh attempt budget."""
        with self._transaction() as (db, now):
            return self._put(db, *lc.manual_retry(self._get(db, job_id), now=now))

    def get(self, job_id: int) -> Job:
        """The job, or ``JobNotFoundError``."""
        with self._transaction(write=False) as (db, _):
            return self._get(db, job_id)

    def list(
        self,
        *,
        statuses: Collection[Status] | None = None,
        lease_owner: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs newest first, filtered in SQL (indexes jobs_status_id, jobs_lease_owner)."""
        clauses: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            clauses.append("status in (select value from json_each(?))")
            params.append(json.dumps([str(s) for s in statuses]))
        if lease_owner is not None:
            clauses.append("lease_owner = ?")
            params.append(lease_owner)
        where = f" where {' and '.join(clauses)}" if clauses else ""
        params.append(-1 if limit is None else max(limit, 0))  # LIMIT -1 means no limit
        with self._transaction(write=False) as (db, _):
            # Clauses are fixed strings chosen above; values are bound parameters.
            return self._fetch(db, f"select * from jobs{where} order by id desc limit ?", params)  # noqa: S608

    def counts(self) -> QueueCounts:
        """Counts by status and the oldest running/pending times, in one query."""
        with self._transaction(write=False) as (db, now):
            rows = db.execute(_sql("counts")).fetchall()
        by_status = dict.fromkeys(Status, 0)
        oldest_running: float | None = None
        oldest_pending: float | None = None
        for status, count, started, created in rows:
            by_status[Status(status)] = count
            if status in LIVE:
                oldest_running = started if oldest_running is None else min(oldest_running, started)
            elif status == Status.PENDING:
                oldest_pending = created
        return QueueCounts(by_status, oldest_running, oldest_pending, now)

    def purge(
        self,
        *,
        ids: Collection[int] | None = None,
        statuses: Collection[Status] | None = None,
        older_than_s: float | None = None,
    ) -> PurgeResult:
        """Delete terminal (and not yet started) jobs with their events; flag live ones."""
        with self._transaction() as (db, now):
            clauses: list[str] = []
            params: list[Any] = []
            if ids is not None:
                wanted = json.dumps(list(ids))
                missing = db.execute(_sql("missing_id"), (wanted,)).fetchone()
                if missing is not None:
                    raise JobNotFoundError(f"no job with id {missing[0]}")
                clauses.append("id in (select value from json_each(?))")
                params.append(wanted)
            if statuses is not None:
                clauses.append("status in (select value from json_each(?))")
                params.append(json.dumps([str(s) for s in statuses]))
            if older_than_s is not None:
                clauses.append("updated_at <= ?")
                params.append(now - older_than_s)
            where = f" where {' and '.join(clauses)}" if clauses else ""
            deleted: list[int] = []
            flagged: list[int] = []
            for job in self._fetch(db, f"select * from jobs{where} order by id", params):  # noqa: S608
                if job.status in LIVE:
                    if job.cancel_requested is None:
                        self._put(db, *lc.request_cancel(job, now=now))
                    flagged.append(job.id)
                    continue
                if not job.is_terminal:
                    lc.request_cancel(job, now=now)  # pending → cancelled, then deleted below
                deleted.append(job.id)
            db.execute(_sql("delete_jobs"), (json.dumps(deleted),))  # and their events
            self._writes += 1
            return PurgeResult(tuple(deleted), tuple(flagged))

    def events(self, job_id: int) -> builtins.list[Event]:  # `list` is a method here
        """The job's event log, oldest first."""
        with self._transaction(write=False) as (db, _):
            self._get(db, job_id)
            rows = db.execute(_sql("events"), (job_id,)).fetchall()
        try:
            return [event_from_sqlite(row) for row in rows]
        except (ValueError, TypeError) as exc:
            raise StoreError(f"SQLite store {self._path} holds a corrupt event row: {exc}") from exc

    def changed(self) -> bool:
        """True when anyone committed since the last call (True on the first call).

        ``PRAGMA data_version`` moves when another connection commits; our own commits are
        counted separately, since a host thread may enqueue through this same store object.
        """
        with self._lock:
            try:
                data_version = int(self._db().execute("pragma data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc
            seen, self._seen = self._seen, (data_version, self._writes)
            return seen != self._seen

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
