"""``RemoteStore``: the ``JobStore`` verbs over the SQL functions of ``bridge/sql/functions.sql``.

The base of ``PostgresStore`` and ``SupabaseStore`` (the filelock pattern: the base owns the
policy, a subclass only moves bytes). A subclass implements ``_send(fn, params) -> rows``,
raising its library's errors untouched; every call here goes through the retry policy and the
error translation of ``bridge/stores/policy.py``, and converts rows with the functions of
``bridge/stores/rows.py``.

It respects the hosted service's limits (issue 10): no answer may be longer than PostgREST's
row cap (``db-max-rows``: 1,000 on Supabase, cut silently) and no call may run past the API
role's statement timeout (8 s). So every call carries at most ``PAGE`` items: big batches are
split (and halved again when the server still cancels one), lists and event logs are read page
by page, and every answer is checked against what was sent.
"""

from __future__ import annotations

import abc
import builtins
import json
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import tenacity

from bridge.stores.policy import RetryPolicy, StatementTimeoutError, describe, safe_cause, translate
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

__all__ = ["PAGE", "RemoteStore"]

log = logging.getLogger("agent_supervisor.store")

PAGE: Final = 500
"""Items per call (specs, beats, jobs or events of an answer): half of Supabase's row cap, and
a few hundred milliseconds of server work, far under the 8 s statement timeout."""
_BATCH_BYTES: Final = 1 << 20
"""At most this much JSON of specs per enqueue call (payloads can be large)."""
_MAX_PAGES: Final = 100_000


_Line = tuple[int, dict[str, Any]]  # (line of the batch, the spec as JSON)


def _take(pending: list[_Line], limit: int) -> list[_Line]:
    """The next specs of ``pending`` for one call: at most ``limit`` and ~``_BATCH_BYTES``."""
    chunk: list[_Line] = []
    size = 0
    for item in pending[:limit]:
        size += len(json.dumps(item[1], ensure_ascii=False, default=str))
        if chunk and size > _BATCH_BYTES:
            break
        chunk.append(item)
    return chunk


def _iso(at: float | None) -> str | None:
    """An epoch time as the timestamptz text the SQL functions take (exact microseconds)."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat()


def _queued(ids: list[int]) -> str:
    """What an error of a batch must add when earlier calls of it committed."""
    if not ids:
        return ""
    return f" - lines 1-{len(ids)} of the batch were queued (ids {ids[0]}-{ids[-1]}), the rest not"


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
        self._claims_lock = threading.Lock()
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
        return epoch(self._call("jobs_now", {}, quick=True)[0]["now"])

    def enqueue(self, specs: Sequence[JobSpec]) -> list[int]:
        """Insert in calls of at most ``PAGE`` specs (and ~1 MiB), each one transaction with a
        request id: a retry after a lost answer, or one that overlaps the first call, returns
        the ids of the first call instead of inserting again. A call the server cancels at its
        statement timeout is split in halves. A batch that needs several calls is not atomic
        across them: an error names the failing line and the jobs already queued."""
        if not specs:
            return []
        pending = [(n + 1, spec_json(s)) for n, s in enumerate(specs)]
        ids: list[int] = []
        limit = PAGE
        while pending:
            chunk = _take(pending, limit)
            try:
                ids.extend(self._enqueue_chunk(chunk))
            except StatementTimeoutError as exc:
                if len(chunk) > 1:
                    limit = max(1, len(chunk) // 2)
                    log.warning("%s: %s; sending %d specs per call", self._name, exc, limit)
                    continue
                raise StoreError(
                    f"{self._name}: line {chunk[0][0]} of the batch: the server cancelled jobs_enqueue "
                    f"at its statement timeout even for this one spec{_queued(ids)}"
                ) from exc
            except StoreError as exc:
                if ids:
                    raise type(exc)(f"{exc}{_queued(ids)}") from exc
                raise
            del pending[: len(chunk)]
        return ids

    def _enqueue_chunk(self, chunk: builtins.list[_Line]) -> builtins.list[int]:
        first, last = chunk[0][0], chunk[-1][0]
        params = {
            "p_specs": [spec for _, spec in chunk],
            "p_request_id": str(uuid.uuid4()),
            "p_first_line": first,
        }
        rows = self._call("jobs_enqueue", params)
        got = rows[0]["job_ids"] if len(rows) == 1 and isinstance(rows[0].get("job_ids"), list) else None
        if got is None or len(got) != len(chunk):
            raise StoreError(
                f"{self._name}: jobs_enqueue answered {len(got) if got is not None else '?'} ids "
                f"for {len(chunk)} specs (batch lines {first}-{last}); the queued jobs are unknown"
            )
        return [int(i) for i in got]

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
        with self._claims_lock:
            claim_id = self._unanswered_claims.pop(worker, None) or str(uuid.uuid4())
        asked = max(0, min(limit, PAGE))
        params = {
            "p_worker": worker,
            "p_claim_id": claim_id,
            "p_limit": asked,
            "p_lease_s": lease_s,
            "p_kinds": None if kinds is None else sorted(kinds),
            "p_exclude_kinds": sorted(exclude_kinds),
        }
        try:
            jobs = self._jobs("jobs_claim", params, quick=True)
        except StoreUnavailableError:
            with self._claims_lock:
                self._unanswered_claims[worker] = claim_id
            raise
        if len(jobs) > asked:
            raise StoreError(f"{self._name}: jobs_claim answered {len(jobs)} jobs for a limit of {asked}")
        return jobs

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
        """All beats in ONE call (``PAGE`` per call past that); per job the cancel request or a
        lost lease. An answer that does not name exactly the jobs sent is an error."""
        replies: list[BeatReply] = []
        for start in range(0, len(beats), PAGE):
            chunk = beats[start : start + PAGE]
            params = {
                "p_worker": worker,
                "p_ids": [b.job_id for b in chunk],
                "p_attempts": [b.attempt for b in chunk],
                "p_progress": [clean(b.progress) for b in chunk],
                "p_stats": [clean(b.stats) for b in chunk],
                "p_lease_s": lease_s,
                "p_active": [bool(b.active) for b in chunk],
            }
            rows = self._call("jobs_heartbeat", params, quick=True)
            if [int(r["job_id"]) for r in rows] != params["p_ids"]:
                raise StoreError(
                    f"{self._name}: jobs_heartbeat answered {len(rows)} jobs for {len(chunk)} beats"
                )
            replies.extend(
                BeatReply(
                    int(r["job_id"]),
                    None if r["cancel_requested"] is None else CancelMode(r["cancel_requested"]),
                    bool(r["lease_lost"]),
                )
                for r in rows
            )
        return replies

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
        """Settle expired leases as ``lost`` (server clock), ``PAGE`` jobs per call."""
        params = {"p_grace_s": grace_s, "p_backoff_cap_s": self._backoff_cap_s, "p_limit": PAGE}
        reaped: list[Job] = []
        for _ in range(_MAX_PAGES):
            page, more = self._page("jobs_reap_stale", params, "jobs", quick=True)
            reaped.extend(self._decode(job_from_row, page, "jobs_reap_stale"))
            if not more:
                break
        return reaped

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
        return self._one("jobs_get", {"p_id": job_id}, job_id)

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
        """Jobs, newest first, read ``PAGE`` per call (keyset paging on the id; ``offset``
        skips on the server, in the first call)."""
        wanted = None if limit is None else max(0, limit)
        jobs: builtins.list[Job] = []
        before: int | None = None
        filters = {
            "p_statuses": None if statuses is None else sorted(s.value for s in statuses),
            "p_lease_owner": lease_owner,
            "p_kinds": None if kinds is None else sorted(kinds),
            "p_concurrency_key": concurrency_key,
            "p_created_after": _iso(created_after),
            "p_created_before": _iso(created_before),
            "p_finished_after": _iso(finished_after),
        }
        while wanted is None or len(jobs) < wanted:
            page_size = PAGE if wanted is None else min(PAGE, wanted - len(jobs))
            params = {
                **filters,
                "p_limit": page_size,
                "p_before_id": before,
                "p_offset": max(0, offset) if before is None else 0,
            }
            page, more = self._page("jobs_list", params, "jobs")
            jobs.extend(self._decode(job_from_row, page, "jobs_list"))
            if not more or not page:
                break
            before = jobs[-1].id
        return jobs

    def _page(self, fn: str, params: dict[str, Any], key: str, **kw: Any) -> tuple[builtins.list[Any], bool]:
        """One page of a paged function: its items and whether more follow (functions.sql:
        ONE row, ``key`` a JSON array of at most ``p_limit`` items, and ``more``)."""
        rows = self._call(fn, params, **kw)
        items = rows[0].get(key) if len(rows) == 1 else None
        if not isinstance(items, list) or len(items) > params["p_limit"]:
            raise StoreError(f"{self._name}: {fn} answered a page this version cannot read")
        return items, bool(rows[0].get("more"))

    def _decode(
        self, convert: Callable[[Any], Any], items: builtins.list[Any], fn: str
    ) -> builtins.list[Any]:
        try:
            return [convert(item) for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self._name}: {fn} returned a row this version cannot read: {exc}") from exc

    def next_due(self) -> float | None:
        """The earliest future ``run_after`` of a waiting job (``jobs_next_due``), or None."""
        rows = self._call("jobs_next_due", {}, quick=True)
        due = rows[0].get("due_at") if rows else None
        return None if due is None else epoch(due)

    def queue_position(self, job_id: int) -> int | None:
        """The job's place among pending jobs in claim order (``jobs_queue_position``)."""
        rows = self._call("jobs_queue_position", {"p_id": job_id})
        return None if not rows or rows[0].get("position") is None else int(rows[0]["position"])

    def identity(self) -> str:
        """The store's random id (``jobs_identity``)."""
        rows = self._call("jobs_identity", {}, quick=True)
        if not rows or not rows[0].get("identity"):
            raise StoreError(f"{self._name} has no identity")
        return str(rows[0]["identity"])

    def counts(self) -> QueueCounts:
        """Counts by status and the oldest live start / pending creation, one call."""
        rows = self._call("jobs_counts", {}, quick=True)
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
        """Delete terminal (and queued) jobs with their events; flag live ones. ``PAGE`` jobs
        per call, each call replayed by its request id after a lost or overlapped answer."""
        deleted: builtins.list[int] = []
        flagged: builtins.list[int] = []
        id_chunks: builtins.list[builtins.list[int] | None] = (
            [None] if ids is None else [sorted(ids)[i : i + PAGE] for i in range(0, len(ids), PAGE)]
        )
        for id_chunk in id_chunks:
            after: int | None = None
            for _ in range(_MAX_PAGES):
                params = {
                    "p_ids": id_chunk,
                    "p_statuses": None if statuses is None else sorted(s.value for s in statuses),
                    "p_older_than_s": older_than_s,
                    "p_request_id": str(uuid.uuid4()),
                    "p_limit": PAGE,
                    "p_after_id": after,
                }
                rows = self._call("jobs_purge", params)
                if len(rows) != 1:
                    raise StoreError(f"{self._name}: jobs_purge answered {len(rows)} rows, not one")
                row = rows[0]
                deleted.extend(int(i) for i in row["deleted"] or ())
                flagged.extend(int(i) for i in row["flagged"] or ())
                if not row["more"]:
                    break
                after = int(row["last_id"])
        return PurgeResult(tuple(sorted(deleted)), tuple(sorted(flagged)))

    def events(self, job_id: int) -> builtins.list[Event]:
        """The job's events, oldest first, read ``PAGE`` per call."""
        events: builtins.list[Event] = []
        after: int | None = None
        for _ in range(_MAX_PAGES):
            params = {"p_id": job_id, "p_after_seq": after, "p_limit": PAGE}
            page, more = self._page("jobs_events", params, "events")
            events.extend(self._decode(event_from_row, page, "jobs_events"))
            if not more or not page:
                break
            after = int(page[-1]["seq"])
        return events

    def watch(self, wake: Callable[[float | None], None]) -> Any:
        """A transport without push: None, and the supervisor polls every ``poll_s``."""
        return None

    def close(self) -> None:  # noqa: B027 - a transport without resources needs no close
        """Release the transport. Idempotent."""
