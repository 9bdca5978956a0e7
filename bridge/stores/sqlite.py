"""The embedded SQLite job store: one file, WAL, ``BEGIN IMMEDIATE`` for every write.

Every status change runs through ``supervisor.lifecycle`` in Python inside one transaction:
read the rows, call the pure function, write the new row and append its event, commit. The
schema (``bridge/sql/sqlite.sql``) holds data, indexes and the per-status counters, never
transition rules, so this store can be no more permissive than ``MemoryStore``; one contract
suite runs against both. The statements live in ``bridge/sql/sqlite_queries.sql``; the file
itself (opening, migrating, transactions, errors) is ``bridge/stores/sqlite_db.py``; rows are
encoded and decoded by ``bridge/stores/rows.py``.

Several supervisors (processes) may share the file: ``BEGIN IMMEDIATE`` takes SQLite's write
lock before the first read, so two claims are serialised and never return the same job. Inside
a process, threads (a host thread, the supervisor thread) share one connection under a lock.
Change hints reach idle supervisors in other processes through FIFOs next to the file
(``bridge/stores/wakeup.py``): nobody polls. A row that cannot be read is moved to the
``jobs_quarantine`` table and logged; every other job keeps running.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

from bridge.stores.rows import event_from_sqlite, event_to_sqlite, job_from_sqlite, job_to_sqlite
from bridge.stores.sqlite_db import SCHEMA_VERSION, Database, list_statement, schema_sql, sql
from bridge.stores.wakeup import FifoWatch, notify
from supervisor import lifecycle as lc
from supervisor.errors import JobNotFoundError, LeaseLostError, StoreError, UpdateConflictError
from supervisor.lifecycle import LIVE, CancelMode, Event, Job, JobSpec, Outcome, Status
from supervisor.store import Beat, BeatReply, LocalWatch, PurgeResult, QueueCounts, Wake

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "schema_sql"]

log = logging.getLogger("agent_supervisor.store")

_COLUMNS: Final = tuple(f.name for f in fields(Job))
# Identifiers come from Job's fields, never from input; every value is a bound parameter.
_NAMES: Final = ", ".join(_COLUMNS)
_VALUES: Final = ", ".join(f":{c}" for c in _COLUMNS)
_ASSIGN: Final = ", ".join(f"{c} = :{c}" for c in _COLUMNS if c != "id")
_INSERT: Final = f"insert into jobs ({_NAMES}) values ({_VALUES})"  # noqa: S608
_UPDATE: Final = f"update jobs set {_ASSIGN} where id = :id"  # noqa: S608
_LOOK_NOW: Final = -1.0
"""A pending hint meaning "look now" (any due time is later than it)."""


class SQLiteStore:
    """A ``JobStore`` on one SQLite file (or ``":memory:"`` for quick tests).

    ``clock`` is the store's clock (default ``time.time``), read once per transaction; ``rng``
    draws the retry backoff jitter; ``busy_timeout_s`` is how long a write waits for another
    process's lock before ``StoreUnavailableError``; ``create=False`` refuses to make the
    file's directory (an explicit ``--store`` URL whose directory is missing is a mistake).
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
        create: bool = True,
    ) -> None:
        self._clock = clock or time.time
        # The retry policy's knobs, passed to lifecycle.settle/reap. One rng for the store:
        # calls are serialised by the database lock, so its draws never interleave.
        self._policy: dict[str, Any] = {"rng": rng or random.Random(), "backoff_cap_s": backoff_cap_s}
        self._db = Database(path, busy_timeout_s=busy_timeout_s, create=create)
        self._lock = self._db.lock
        self._wake_dir = None if self._db.path == ":memory:" else Path(self._db.path + ".wake")
        self._hint: float | None = None
        """The hint this transaction owes watchers (``_LOOK_NOW``, a due time, or None)."""
        self._damaged: dict[int, str] = {}
        """Rows found unreadable in a read-only transaction (id → why): quarantined at the next write."""
        self._watches: list[FifoWatch | LocalWatch] = []
        self._watch_lock = threading.Lock()

    @property
    def path(self) -> str:
        """The database file, as given (for messages and health)."""
        return self._db.path

    @property
    def created(self) -> bool:
        """True when opening this store made its file (it was missing or empty)."""
        return self._db.created

    # -- plumbing ------------------------------------------------------------------------
    @functools.cached_property
    def _write(self) -> Callable[[], Any]:
        return functools.partial(self._db.transaction, self._clock)

    def _read(self) -> Any:
        return self._db.transaction(self._clock, write=False)

    def _commit_hint(self) -> None:
        """After a commit: tell other processes' watchers (and our own) about the change."""
        hint, self._hint = self._hint, None
        if hint is None:
            return
        due = None if hint == _LOOK_NOW else hint
        own = [w for w in self._watches if isinstance(w, FifoWatch)]
        if self._wake_dir is not None:
            notify(self._wake_dir, due, skip=own[0].name if own else None)
        for watch in list(self._watches):
            if isinstance(watch, LocalWatch):
                watch.wake(due)

    def _decode(self, db: sqlite3.Connection, rows: Sequence[sqlite3.Row], *, write: bool) -> list[Job]:
        """Rows → jobs; a row that cannot be read is quarantined (in a write transaction) or
        skipped until the next write, logged with its id, and never stops the others."""
        jobs: list[Job] = []
        for row in rows:
            try:
                jobs.append(job_from_sqlite(row))
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                job_id, why = row["id"], f"row could not be read: {exc}"
                if write:
                    self._quarantine(db, row, why)
                elif job_id not in self._damaged:
                    log.error(
                        "SQLite store %s: job %s's row is damaged (%s); set aside", self.path, job_id, exc
                    )
                    self._damaged[job_id] = why
        return jobs

    def _quarantine(self, db: sqlite3.Connection, row: sqlite3.Row, reason: str) -> None:
        job_id = row["id"]
        events = [
            {key: _raw(ev[key]) for key in ev.keys()}  # noqa: SIM118 - sqlite3.Row has no items()
            for ev in db.execute(sql("raw_events"), (job_id,)).fetchall()
        ]
        record = {key: _raw(row[key]) for key in row.keys()}  # noqa: SIM118
        record["events"] = events
        db.execute(sql("quarantine"), (job_id, self._clock(), reason, json.dumps(record)))
        db.execute(sql("delete_job"), (job_id,))
        self._damaged.pop(job_id, None)
        log.error("SQLite store %s: job %s moved to jobs_quarantine: %s", self.path, job_id, reason)

    def _set_aside(self, db: sqlite3.Connection) -> None:
        """Quarantine the damaged rows found by reads (the caller holds a write transaction)."""
        for job_id, why in list(self._damaged.items()):
            row = db.execute(sql("job"), (job_id,)).fetchone()
            if row is None:
                self._damaged.pop(job_id, None)
            else:
                self._quarantine(db, row, why)

    def _fetch(
        self,
        db: sqlite3.Connection,
        statement: str,
        params: Sequence[Any] | dict[str, Any] = (),
        *,
        write: bool = True,
    ) -> list[Job]:
        return self._decode(db, db.execute(statement, params).fetchall(), write=write)

    def _get(self, db: sqlite3.Connection, job_id: int, *, write: bool = True) -> Job:
        jobs = self._fetch(db, sql("job"), (job_id,), write=write)
        if not jobs:
            reason = db.execute(sql("quarantined"), (job_id,)).fetchone()
            if reason is not None or job_id in self._damaged:
                why = reason[0] if reason is not None else self._damaged[job_id]
                raise StoreError(f"job {job_id} is damaged and set aside in jobs_quarantine ({why})")
            raise JobNotFoundError(f"no job with id {job_id}")
        return jobs[0]

    def _put(self, db: sqlite3.Connection, job: Job, event: Event | None, *, insert: bool = False) -> Job:
        db.execute(_INSERT if insert else _UPDATE, job_to_sqlite(job))
        if event is not None:
            db.execute(sql("insert_event"), event_to_sqlite(event))
            if job.status not in LIVE or job.cancel_requested is not None:  # claims and starts: no news
                self._owe_hint(job)
        return job

    def _owe_hint(self, job: Job | None) -> None:
        due = _LOOK_NOW
        if (
            job is not None
            and job.status in (Status.PENDING, Status.WAITING_RETRY)
            and job.run_after > self._clock()
        ):
            due = job.run_after
        self._hint = due if self._hint is None else min(self._hint, due)

    # -- JobStore ------------------------------------------------------------------------
    def now(self) -> float:
        """The store's current time, seconds since the epoch."""
        return self._clock()

    def identity(self) -> str:
        """The random id made with this file's schema (table ``store_meta``)."""
        value = self._db.scalar("identity")
        if not isinstance(value, str):
            raise StoreError(f"SQLite store {self.path} has no identity; its store_meta table is damaged")
        return value

    def enqueue(self, specs: Sequence[JobSpec]) -> list[int]:
        """Insert jobs in one transaction (dedup by ``unique_key``, then ``dedup_key``); ids in order."""
        if not specs:
            return []
        with self._write() as (db, now):
            # AUTOINCREMENT keeps its high-water mark in sqlite_sequence; under the write lock
            # we can hand out the next ids ourselves, so new_job builds the row with its id.
            next_id = db.execute(sql("next_id")).fetchone()[0]
            ids: list[int] = []
            staged: dict[str, int] = {}
            unique: dict[str, int] = {}
            for spec in specs:
                existing = self._find(db, "unique", spec.unique_key, unique)
                if existing is None:
                    existing = self._find(db, "dedup", spec.dedup_key, staged)
                if existing is not None:
                    ids.append(existing)
                    continue
                job, event = lc.new_job(spec, job_id=next_id, now=now)
                next_id += 1
                self._put(db, job, event, insert=True)
                if spec.dedup_key is not None:
                    staged[spec.dedup_key] = job.id
                if spec.unique_key is not None:
                    unique[spec.unique_key] = job.id
                ids.append(job.id)
        self._commit_hint()
        return ids

    def _find(
        self, db: sqlite3.Connection, statement: str, key: str | None, staged: dict[str, int]
    ) -> int | None:
        if key is None:
            return None
        if key in staged:
            return staged[key]
        row = db.execute(sql(statement), (key,)).fetchone()
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
        with self._write() as (db, now):
            self._set_aside(db)
            for job in self._fetch(db, sql("due_retries"), (now,)):
                self._put(db, *lc.promote(job, now=now))
            taken: list[Job] = []
            if limit > 0 and (kinds is None or kinds):
                wanted = None if kinds is None else json.dumps(list(kinds))
                params = {"now": now, "kinds": wanted, "exclude": json.dumps(list(exclude_kinds))}
                ready = self._walk_claimable(db, params, limit)
                taken = [
                    self._put(db, *lc.claim(job, worker=worker, now=now, lease_s=lease_s)) for job in ready
                ]
        self._commit_hint()
        return taken

    def _walk_claimable(self, db: sqlite3.Connection, params: dict[str, Any], limit: int) -> list[Job]:
        """The first ``limit`` claimable jobs, at most one per concurrency key (why the key
        rule is split between SQL and here: the comment of ``claimable`` in the queries)."""
        cursor = db.execute(sql("claimable"), params)
        taken: list[Job] = []
        keys: set[str] = set()
        try:
            # Fetched and decoded a row at a time: a claim of one job decodes one row (the
            # decode is most of a claim's cost), however many wait behind it.
            while len(taken) < limit and (row := cursor.fetchone()) is not None:
                for job in self._decode(db, [row], write=True):  # none when the row is damaged
                    if job.concurrency_key is not None:
                        if job.concurrency_key in keys:
                            continue
                        keys.add(job.concurrency_key)
                    taken.append(job)
        finally:
            cursor.close()
        return taken

    def mark_running(
        self, job_id: int, worker: str, attempt: int, pid: int, facts: dict[str, Any] | None = None
    ) -> Job:
        """preparing → running with the agent's pid; fenced by (worker, attempt)."""
        with self._write() as (db, now):
            job = self._get(db, job_id)
            return self._put(
                db, *lc.start(job, worker=worker, attempt=attempt, pid=pid, now=now, facts=facts)
            )

    def heartbeat(self, worker: str, beats: Sequence[Beat], *, lease_s: float) -> list[BeatReply]:
        """Renew all of a worker's leases in one transaction; per job ``lease_lost`` or the
        pending cancel request. Writes no event and keeps ``version``."""
        if not beats:
            return []
        with self._write() as (db, now):
            ids = json.dumps(sorted({beat.job_id for beat in beats}))
            current = {job.id: job for job in self._fetch(db, sql("jobs_by_ids"), (ids,))}
            renew = functools.partial(lc.heartbeat, worker=worker, now=now, lease_s=lease_s)
            renewed: dict[int, Job] = {}
            replies: list[BeatReply] = []
            for beat in beats:
                job = current.get(beat.job_id)
                try:
                    if job is None:
                        raise LeaseLostError(f"job {beat.job_id} is gone")
                    job = renew(
                        job,
                        attempt=beat.attempt,
                        progress=beat.progress,
                        stats=beat.stats,
                        active=beat.active,
                    )
                except LeaseLostError:
                    replies.append(BeatReply(beat.job_id, None, lease_lost=True))
                    continue
                current[job.id] = renewed[job.id] = job
                replies.append(BeatReply(job.id, job.cancel_requested, lease_lost=False))
            db.executemany(_UPDATE, [job_to_sqlite(job) for job in renewed.values()])
            return replies

    def finish(self, job_id: int, worker: str, attempt: int, outcome: Outcome) -> Job:
        """Record the attempt's outcome and apply the retry policy; fenced by (worker, attempt)."""
        with self._write() as (db, now):
            job = self._get(db, job_id)
            if lc.is_replayed_finish(job, worker, attempt):
                return job
            new = self._put(
                db, *lc.settle(job, outcome, worker=worker, attempt=attempt, now=now, **self._policy)
            )
        self._commit_hint()
        return new

    def update(self, job_id: int, expected_version: int, changes: dict[str, Any]) -> Job:
        """Optimistic update of editable fields; ``UpdateConflictError`` on a stale version."""
        with self._write() as (db, now):
            job = self._get(db, job_id)
            if job.version != expected_version:
                raise UpdateConflictError(f"job {job_id} is at version {job.version}, not {expected_version}")
            return self._put(db, *lc.apply_update(job, changes, now=now))

    def reap_stale(self, grace_s: float) -> list[Job]:
        """Settle as ``lost`` the live jobs whose lease expired more than ``grace_s`` ago, fail
        the pending jobs past their queue timeout, promote the retries that are due."""
        with self._write() as (db, now):
            self._set_aside(db)
            stale = self._fetch(db, sql("stale_leases"), (grace_s, now))
            changed = [self._put(db, *lc.reap(job, now=now, **self._policy)) for job in stale]
            waiting = self._fetch(db, sql("queue_expired"), (now,))
            changed += [self._put(db, *lc.expire(job, now=now)) for job in waiting]
            due = self._fetch(db, sql("due_retries"), (now,))
            changed += [self._put(db, *lc.promote(job, now=now)) for job in due]
        self._commit_hint()
        return list({job.id: job for job in changed}.values())  # a job reaped then promoted: once

    def request_cancel(self, job_id: int, mode: CancelMode = CancelMode.CANCEL) -> Job:
        """Cancel a job that has not started, or flag a live one for its supervisor."""
        with self._write() as (db, now):
            job = self._put(db, *lc.request_cancel(self._get(db, job_id), now=now, mode=mode))
        self._commit_hint()
        return job

    def retry(self, job_id: int) -> Job:
        """Manual retry: failed | cancelled → pending with a fresh attempt budget."""
        with self._write() as (db, now):
            job = self._put(db, *lc.manual_retry(self._get(db, job_id), now=now))
        self._commit_hint()
        return job

    def get(self, job_id: int) -> Job:
        """The job, or ``JobNotFoundError``."""
        with self._read() as (db, _):
            return self._get(db, job_id, write=False)

    def list(
        self,
        *,
        statuses: Collection[Status] | None = None,
        lease_owner: str | None = None,
        kinds: Collection[str] | None = None,
        concurrency_key: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        finished_after: float | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs newest first, filtered in SQL; each filter has an index (sqlite.sql).

        The statement is shaped so that its cost follows the answer, not the history
        (``list_statement``): one status or kind is an equality, whose index yields rows
        already in id order, so ``limit`` stops the scan; several statuses with a limit become
        one such scan per status, each stopped at ``limit + offset`` rows and merged; a
        ``finished_after`` window reads the finished-time index (the jobs finished since then,
        sorted), never every finished job in id order until enough fall in the window.
        """
        if (statuses is not None and not statuses) or (kinds is not None and not kinds):
            return []
        statement, params = list_statement(
            statuses=None if statuses is None else sorted({str(s) for s in statuses}),
            kinds=None if kinds is None else sorted(set(kinds)),
            lease_owner=lease_owner,
            concurrency_key=concurrency_key,
            created_after=created_after,
            created_before=created_before,
            finished_after=finished_after,
            limit=limit,
            offset=offset,
        )
        with self._read() as (db, _):
            return self._fetch(db, statement, params, write=False)

    def counts(self) -> QueueCounts:
        """Counts by status (kept by triggers: constant time) and the oldest running/pending
        times (over live and pending jobs only, never the finished history)."""
        with self._read() as (db, now):
            rows = db.execute(sql("counts")).fetchall()
            oldest_running = db.execute(sql("oldest_running")).fetchone()[0]
            oldest_pending = db.execute(sql("oldest_pending")).fetchone()[0]
        by_status = dict.fromkeys(Status, 0)
        for status, count in rows:
            if count:
                by_status[Status(status)] = count
        return QueueCounts(by_status, oldest_running, oldest_pending, now)

    def next_due(self) -> float | None:
        """The earliest future run_after of a waiting job (index jobs_due)."""
        with self._read() as (db, now):
            value = db.execute(sql("next_due"), (now,)).fetchone()[0]
        return None if value is None else float(value)

    def queue_position(self, job_id: int) -> int | None:
        """The job's 1-based place in claim order among pending jobs (None unless pending)."""
        with self._read() as (db, _):
            job = self._get(db, job_id, write=False)
            if job.status is not Status.PENDING:
                return None
            params = {"priority": job.priority, "created_at": job.created_at, "id": job.id}
            return int(db.execute(sql("queue_position"), params).fetchone()[0])

    def purge(
        self,
        *,
        ids: Collection[int] | None = None,
        statuses: Collection[Status] | None = None,
        older_than_s: float | None = None,
    ) -> PurgeResult:
        """Delete terminal (and not yet started) jobs with their events; flag live ones."""
        with self._write() as (db, now):
            clauses: list[str] = []
            params: list[Any] = []
            if ids is not None:
                wanted = json.dumps(list(ids))
                missing = db.execute(sql("missing_id"), (wanted,)).fetchone()
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
            db.execute(sql("delete_jobs"), (json.dumps(deleted),))  # and their events
            if deleted:
                self._owe_hint(None)
        self._commit_hint()
        return PurgeResult(tuple(deleted), tuple(flagged))

    def events(self, job_id: int) -> builtins.list[Event]:  # `list` is a method here
        """The job's event log, oldest first."""
        with self._read() as (db, _):
            self._get(db, job_id, write=False)
            rows = db.execute(sql("events"), (job_id,)).fetchall()
        try:
            return [event_from_sqlite(row) for row in rows]
        except (ValueError, TypeError) as exc:
            raise StoreError(f"SQLite store {self.path} holds a corrupt event row: {exc}") from exc

    def watch(self, wake: Wake) -> FifoWatch | LocalWatch:
        """Change hints from every writer of this file: other processes through a FIFO next
        to it (``bridge/stores/wakeup.py``), this object's own writes directly."""
        with self._watch_lock:
            if self._wake_dir is None:
                watch: FifoWatch | LocalWatch = LocalWatch(wake, self._watches.remove)
            else:
                watch = FifoWatch(self._wake_dir, wake)
            self._watches.append(watch)
        return watch

    def close(self) -> None:
        """Close the connection and stop watching. Idempotent."""
        for watch in list(self._watches):
            watch.close()
        self._watches.clear()
        self._db.close()


def _raw(value: Any) -> Any:
    """A column's value as JSON can keep it: bytes (text that was not UTF-8) as hex."""
    return value.hex() if isinstance(value, bytes) else value
