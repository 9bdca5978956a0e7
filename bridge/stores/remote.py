"""``RemoteStore``: the ``JobStore`` verbs over the SQL functions of ``bridge/sql/functions.sql``.

The base of ``PostgresStore`` and ``SupabaseStore`` (the filelock pattern: the base owns the
policy, a subclass only moves bytes). A subclass implements ``_send(fn, params) -> rows``,
raising its library's errors untouched; every call here goes through the retry policy and the
error translation of ``bridge/stores/policy.py``, and converts rows with the functions of
``bridge/stores/rows.py``.
"""

from __future__ import annotations

import abc
import builtins
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import tenacity

from bridge.stores.policy import RetryPolicy, describe, safe_cause, translate
from bridge.stores.rows import (
    check_changes,
    clean,
    epoch,
    event_from_row,
    job_from_row,
    outcome_json,
    spec_json,
)
from supervisor.errors import (
    IllegalTransitionError,
    JobNotFoundError,
    StoreError,
    StoreUnavailableError,
    UpdateConflictError,
)
from supervisor.lifecycle import DEFAULT_BACKOFF_CAP_S, CancelMode, Event, Job, JobSpec, Outcome, Status
from supervisor.store import Beat, BeatReply, PurgeResult, QueueCounts

__all__ = ["RemoteStore"]

log = logging.getLogger("agent_supervisor.store")


class _Tries:
    """How many times a call was sent: more than once means a first try may have applied."""

    n = 0


class RemoteStore(abc.ABC):
    """``JobStore`` over the SQL functions; subclasses provide the transport (``_send``)."""

    shared = True  # anyone with access to the project can insert jobs

    def __init__(
        self, *, name: str, backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S, retry: RetryPolicy | None = None
    ) -> None:
        self._name = name  # for messages: never holds a secret
        self._backoff_cap_s = backoff_cap_s
        self._retry = retry or RetryPolicy()
        self._quick = self._retry.quick()
        self._writes_lock = threading.Lock()
        self._writes = 0
        self._seen_writes = 0
        self._unanswered_claims: dict[str, str] = {}  # worker -> claim id to replay

    # -- the transport (subclasses) ------------------------------------------------------
    @abc.abstractmethod
    def _send(self, fn: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Call ``public.<fn>`` with named JSON arguments; the rows as JSON objects."""

    def _failed(self, exc: BaseException) -> None:  # noqa: B027 - a hook; doing nothing is right
        """Called after every failed ``_send`` (a subclass drops a broken connection)."""

    def _secrets(self) -> Iterable[str]:
        """Strings that must never appear in a message (a key, a password)."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r})"

    # -- calling ---------------------------------------------------------------------------
    def _call(
        self,
        fn: str,
        params: dict[str, Any],
        *,
        quick: bool = False,
        write: bool = True,
        tries: _Tries | None = None,
    ) -> list[dict[str, Any]]:
        tries = tries or _Tries()

        def once() -> list[dict[str, Any]]:
            tries.n += 1
            try:
                return self._send(fn, params)
            except BaseException as exc:
                self._failed(exc)
                raise

        def on_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s: %s failed (%s); retry %d in %.2f s",
                self._name,
                fn,
                describe(exc, self._secrets()),
                state.attempt_number,
                wait,
            )

        try:
            rows = (self._quick if quick else self._retry).run(once, on_retry)
        except Exception as exc:  # the boundary: every library error is translated (or re-raised)
            secrets = tuple(self._secrets())
            error = translate(exc, store=self._name, fn=fn, tries=tries.n, secrets=secrets)
            if error is exc:
                raise  # already one of ours (e.g. "store is closed"): never its own cause
            raise error from safe_cause(exc, secrets)
        if write:
            with self._writes_lock:
                self._writes += 1
        return rows

    def _jobs(self, fn: str, params: dict[str, Any], **kw: Any) -> list[Job]:
        rows = self._call(fn, params, **kw)
        try:
            return [job_from_row(row) for row in rows]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self._name}: {fn} returned a row this version cannot read: {exc}") from exc

    def _one(self, fn: str, params: dict[str, Any], job_id: int, **kw: Any) -> Job:
        jobs = self._jobs(fn, params, **kw)
        if not jobs:
            raise JobNotFoundError(f"no job with id {job_id}")
        return jobs[0]

    # -- JobStore ------------------------------------------------------------------------
    def now(self) -> float:
        """The server's clock (``public._jobs_now()``), seconds since the epoch."""
        return epoch(self._call("jobs_now", {}, write=False, quick=True)[0]["now"])

    def enqueue(self, specs: Sequence[JobSpec]) -> list[int]:
        """Insert in one transaction, with a request id: a retry after a lost answer returns
        the ids of the first call instead of inserting the batch again."""
        if not specs:
            return []
        params = {"p_specs": [spec_json(s) for s in specs], "p_request_id": str(uuid.uuid4())}
        return [int(row["job_id"]) for row in self._call("jobs_enqueue", params)]

    def claim(
        self,
        worker: str,
        limit: int,
        *,
        lease_s: float,
        kinds: Collection[str] | None = None,
        exclude_kinds: Collection[str] = (),
    ) -> list[Job]:
        """See ``JobStore.claim``. One claim id serves every retry of this call, and, when the
        call fails unavailable, the worker's next claim too: a claim that committed but whose
        answers were all lost is then handed back, instead of leaving its jobs leased to a
        worker that never heard of them until the lease expires."""
        with self._writes_lock:
            claim_id = self._unanswered_claims.pop(worker, None) or str(uuid.uuid4())
        params = {
            "p_worker": worker,
            "p_claim_id": claim_id,
            "p_limit": max(0, min(limit, 2**31 - 1)),
            "p_lease_s": lease_s,
            "p_kinds": None if kinds is None else sorted(kinds),
            "p_exclude_kinds": sorted(exclude_kinds),
        }
        try:
            return self._jobs("jobs_claim", params, quick=True)
        except StoreUnavailableError:
            with self._writes_lock:
                self._unanswered_claims[worker] = claim_id
            raise

    def mark_running(
        self, job_id: int, worker: str, attempt: int, pid: int, facts: dict[str, Any] | None = None
    ) -> Job:
        """preparing → running, fenced by (worker, attempt)."""
        params = {
            "p_id": job_id,
            "p_worker": worker,
            "p_attempt": attempt,
            "p_pid": pid,
            "p_facts": clean(facts or {}),
        }
        return self._one("jobs_mark_running", params, job_id)

    def heartbeat(self, worker: str, beats: Sequence[Beat], *, lease_s: float) -> list[BeatReply]:
        """All beats in ONE call; per job the cancel request or a lost lease."""
        if not beats:
            return []
        params = {
            "p_worker": worker,
            "p_ids": [b.job_id for b in beats],
            "p_attempts": [b.attempt for b in beats],
            "p_progress": [clean(b.progress) for b in beats],
            "p_stats": [clean(b.stats) for b in beats],
            "p_lease_s": lease_s,
        }
        rows = self._call("jobs_heartbeat", params, quick=True, write=False)
        return [
            BeatReply(
                int(r["job_id"]),
                None if r["cancel_requested"] is None else CancelMode(r["cancel_requested"]),
                bool(r["lease_lost"]),
            )
            for r in rows
        ]

    def finish(self, job_id: int, worker: str, attempt: int, outcome: Outcome) -> Job:
        """Record the outcome, fenced; a repeat by the same attempt returns the job unchanged."""
        params = {
            "p_id": job_id,
            "p_worker": worker,
            "p_attempt": attempt,
            "p_outcome": outcome_json(outcome),
            "p_backoff_cap_s": self._backoff_cap_s,
        }
        return self._one("jobs_finish", params, job_id)

    def update(self, job_id: int, expected_version: int, changes: dict[str, Any]) -> Job:
        """Optimistic update. A conflict after a retried call re-reads the row: if our first
        call did apply (its answer was lost), that is success, not a conflict."""
        wanted = check_changes(changes)
        params = {"p_id": job_id, "p_expected_version": expected_version, "p_changes": wanted}
        tries = _Tries()
        try:
            return self._one("jobs_update", params, job_id, tries=tries)
        except UpdateConflictError:
            if tries.n > 1:
                current = self.get(job_id)
                if current.version == expected_version + 1 and all(
                    getattr(current, k) == v for k, v in wanted.items()
                ):
                    return current
            raise

    def reap_stale(self, grace_s: float) -> list[Job]:
        """Settle expired leases as ``lost`` (server clock)."""
        return self._jobs(
            "jobs_reap_stale", {"p_grace_s": grace_s, "p_backoff_cap_s": self._backoff_cap_s}, quick=True
        )

    def _replayable(self, fn: str, params: dict[str, Any], job_id: int, done: Callable[[Job], bool]) -> Job:
        """A call whose repeat is refused as illegal once the first one applied (cancel,
        retry): after a retried call, an IllegalTransitionError over a job that is now in the
        wanted state means our first call did it."""
        tries = _Tries()
        try:
            return self._one(fn, params, job_id, tries=tries)
        except IllegalTransitionError:
            if tries.n > 1 and done(current := self.get(job_id)):
                return current
            raise

    def request_cancel(self, job_id: int, mode: CancelMode = CancelMode.CANCEL) -> Job:
        """Cancel a queued job at once; flag a live one for its supervisor."""
        return self._replayable(
            "jobs_request_cancel",
            {"p_id": job_id, "p_mode": mode.value},
            job_id,
            lambda j: j.status is Status.CANCELLED,
        )

    def retry(self, job_id: int) -> Job:
        """Manual retry: failed | cancelled → pending."""
        return self._replayable("jobs_retry", {"p_id": job_id}, job_id, lambda j: j.status is Status.PENDING)

    def get(self, job_id: int) -> Job:
        """The job, or ``JobNotFoundError``."""
        return self._one("jobs_get", {"p_id": job_id}, job_id, write=False)

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
    ) -> builtins.list[Job]:
        """Jobs, newest first. (Protocol v2's filters are not in the SQL yet: issue 10.)"""
        if any(
            f is not None for f in (kinds, concurrency_key, created_after, created_before, finished_after)
        ):
            raise StoreError(f"{self._name} cannot filter jobs by kind, key or time yet")
        wanted = None if limit is None else max(0, min(limit + max(offset, 0), 2**31 - 1))
        params = {
            "p_statuses": None if statuses is None else sorted(s.value for s in statuses),
            "p_lease_owner": lease_owner,
            "p_limit": wanted,
        }
        return self._jobs("jobs_list", params, write=False)[max(offset, 0) :]

    def next_due(self) -> float | None:
        """Not in the SQL yet (issue 10): without push the supervisor polls anyway."""
        return None

    def queue_position(self, job_id: int) -> int | None:
        """The job's place among pending jobs in claim order (``jobs_queue_position``)."""
        rows = self._call("jobs_queue_position", {"p_id": job_id}, write=False)
        return None if not rows or rows[0].get("position") is None else int(rows[0]["position"])

    def identity(self) -> str:
        """The store's random id (``jobs_identity``)."""
        rows = self._call("jobs_identity", {}, write=False, quick=True)
        if not rows or not rows[0].get("identity"):
            raise StoreError(f"{self._name} has no identity")
        return str(rows[0]["identity"])

    def counts(self) -> QueueCounts:
        """Counts by status and the oldest live start / pending creation, one call."""
        rows = self._call("jobs_counts", {}, write=False, quick=True)
        by_status = dict.fromkeys(Status, 0)
        running: builtins.list[float] = []
        pending: float | None = None
        for row in rows:
            status = Status(row["status"])
            by_status[status] = int(row["jobs"])
            if status in (Status.PREPARING, Status.RUNNING) and row["oldest_started_at"] is not None:
                running.append(epoch(row["oldest_started_at"]))
            if status is Status.PENDING and row["oldest_created_at"] is not None:
                pending = epoch(row["oldest_created_at"])
        return QueueCounts(by_status, min(running, default=None), pending, epoch(rows[0]["now"]))

    def purge(
        self,
        *,
        ids: Collection[int] | None = None,
        statuses: Collection[Status] | None = None,
        older_than_s: float | None = None,
    ) -> PurgeResult:
        """Delete terminal (and queued) jobs with their events; flag live ones."""
        params = {
            "p_ids": None if ids is None else sorted(ids),
            "p_statuses": None if statuses is None else sorted(s.value for s in statuses),
            "p_older_than_s": older_than_s,
        }
        rows = self._call("jobs_purge", params)
        deleted = tuple(sorted(int(r["job_id"]) for r in rows if r["deleted"]))
        flagged = tuple(sorted(int(r["job_id"]) for r in rows if not r["deleted"]))
        return PurgeResult(deleted, flagged)

    def events(self, job_id: int) -> builtins.list[Event]:
        """The job's events, oldest first."""
        return [event_from_row(r) for r in self._call("jobs_events", {"p_id": job_id}, write=False)]

    def watch(self, wake: Callable[[float | None], None]) -> None:
        """No push channel yet: the supervisor polls every ``poll_s`` (issue 10 adds one)."""
        return None

    def changed(self) -> bool:
        """Own writes since the last call (a host thread's submit wakes the supervisor).
        Subclasses add what other writers did, when their transport can tell."""
        with self._writes_lock:
            seen, self._seen_writes = self._seen_writes, self._writes
            return seen != self._writes

    def close(self) -> None:  # noqa: B027 - a transport without resources needs no close
        """Release the transport. Idempotent."""
