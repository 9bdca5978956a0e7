"""The seam between the engine and a job store: the ``JobStore`` protocol.

Its methods are the verbs of DESIGN.md ("Store contract"), not a generic query interface.
Every method is atomic on the store's side and uses the store's clock (``now()``), never the
caller's. Writes made on behalf of an attempt carry ``(worker, attempt)``; the store refuses
them with ``LeaseLostError`` when that pair no longer holds the lease, so a supervisor that was
paused or partitioned can never overwrite the outcome recorded by the new holder.

Stores raise only errors of ``supervisor.errors``; ``StoreUnavailableError`` means "try again
later" and is the only one a caller should retry.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from supervisor.lifecycle import CancelMode, Event, Job, JobSpec, Outcome, Status

__all__ = ["Beat", "BeatReply", "JobStore", "LocalWatch", "PurgeResult", "QueueCounts", "Wake", "Watch"]


@dataclass(frozen=True, slots=True)
class Beat:
    """One running job in a heartbeat: its fencing pair and optional progress (JSON)."""

    job_id: int
    attempt: int
    progress: Any = None
    stats: Any = None
    """The tree's resource use (rss_bytes, cpu_percent, processes), stored with the job."""
    active: bool = False
    """The agent wrote output since the previous beat (moves ``last_activity_at``)."""


@dataclass(frozen=True, slots=True)
class BeatReply:
    """The store's answer for one job of a heartbeat."""

    job_id: int
    cancel_requested: CancelMode | None
    lease_lost: bool


@dataclass(frozen=True, slots=True)
class PurgeResult:
    deleted: tuple[int, ...]
    cancel_requested: tuple[int, ...]
    """Live jobs that could not be deleted yet: their cancel was requested instead."""


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Counts by status and the age facts that health needs, in one store call."""

    by_status: dict[Status, int]
    oldest_running_started_at: float | None
    oldest_pending_created_at: float | None
    now: float


Wake = Callable[[float | None], None]
"""A store's change hint: called with the store-clock time at which the changed job becomes
claimable (its ``run_after``) when that is known and in the future, else None ("look now")."""


class Watch(Protocol):
    """A store's push channel, from ``JobStore.watch``."""

    @property
    def live(self) -> bool:
        """True while hints arrive without polling (False while the channel reconnects)."""
        ...

    def close(self) -> None:
        """Stop watching; idempotent; joins any thread the store started for it."""
        ...


class LocalWatch:
    """The ``Watch`` of a store only this process writes (``MemoryStore``, an in-memory SQLite
    database): the store calls ``wake`` after each of its writes; live until closed, when
    ``remove`` takes it off the store's list."""

    def __init__(self, wake: Wake, remove: Callable[[LocalWatch], None]) -> None:
        self.wake = wake
        self._remove = remove
        self._closed = False

    @property
    def live(self) -> bool:
        return not self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._remove(self)


@runtime_checkable
class JobStore(Protocol):
    """A job store. All operations are atomic; all times are the store's clock."""

    shared: bool
    """True when other people or machines can insert jobs (Postgres, Supabase): then only
    registered kinds run, never a raw command (unless ``allow_remote_commands``)."""

    def now(self) -> float:
        """The store's current time, seconds since the epoch."""
        ...

    def enqueue(self, specs: Sequence[JobSpec]) -> list[int]:
        """Insert jobs in one transaction and return their ids in order.

        A spec with a ``dedup_key`` that matches a pending or waiting_retry job returns that
        job's id instead of inserting (idempotent submit). Either all specs are taken or none.
        """
        ...

    def claim(
        self,
        worker: str,
        limit: int,
        *,
        lease_s: float,
        kinds: Collection[str] | None = None,
        exclude_kinds: Collection[str] = (),
    ) -> list[Job]:
        """Atomically take up to ``limit`` pending jobs: pending → preparing, attempt += 1.

        First promotes waiting_retry jobs whose ``run_after`` has come. Order: priority
        descending, then oldest first. A job whose ``concurrency_key`` is held by a preparing
        or running job (anywhere) is skipped, and one claim never takes two jobs of one key.
        ``kinds`` None means any job; ``exclude_kinds`` are skipped (kinds at their local
        concurrency limit). Two concurrent claims never return the same job.
        """
        ...

    def mark_running(
        self, job_id: int, worker: str, attempt: int, pid: int, facts: dict[str, Any] | None = None
    ) -> Job:
        """preparing → running with the agent's pid. Fenced by (worker, attempt)."""
        ...

    def heartbeat(self, worker: str, beats: Sequence[Beat], *, lease_s: float) -> list[BeatReply]:
        """Renew the leases of all of a worker's running jobs in ONE round trip.

        Per job: ``lease_lost`` when (worker, attempt) no longer holds it (nothing is written
        for that job), else the lease is extended to now + ``lease_s`` and the progress stored;
        ``cancel_requested`` tells the supervisor to stop the agent. Does not bump ``version``.
        """
        ...

    def finish(self, job_id: int, worker: str, attempt: int, outcome: Outcome) -> Job:
        """Record an attempt's outcome and apply the retry policy (see ``lifecycle.settle``).

        Fenced by (worker, attempt): raises ``LeaseLostError`` and writes nothing when the
        pair no longer holds the lease. Idempotent: a finish repeated after (worker, attempt)
        already settled the job (a retry whose first response was lost, an outbox replay)
        returns the job as it is and writes nothing.
        """
        ...

    def update(self, job_id: int, expected_version: int, changes: dict[str, Any]) -> Job:
        """Optimistic update of the editable fields (priority, max_attempts, timeouts,
        backoff, stuck_after_s). Raises ``UpdateConflictError`` when ``version`` moved."""
        ...

    def reap_stale(self, grace_s: float) -> list[Job]:
        """Settle live jobs whose lease expired more than ``grace_s`` ago (store clock) as
        ``lost`` (retried or failed per their policy), fail pending jobs that waited past their
        ``queue_timeout_s`` as ``queue_timeout``, and promote waiting_retry jobs whose
        ``run_after`` has come to pending. Returns the jobs it changed."""
        ...

    def request_cancel(self, job_id: int, mode: CancelMode = CancelMode.CANCEL) -> Job:
        """Cancel a pending or waiting_retry job at once; flag a live one for its supervisor.

        Raises ``IllegalTransitionError`` for a terminal job.
        """
        ...

    def retry(self, job_id: int) -> Job:
        """Manual retry: failed | cancelled → pending with a fresh attempt budget."""
        ...

    def get(self, job_id: int) -> Job:
        """The job, or ``JobNotFoundError``."""
        ...

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
        """Jobs, newest first (id descending), filtered by every argument given: statuses,
        lease owner, kinds (a raw command has no kind), concurrency key, creation time
        (``created_after <= created_at < created_before``), ``finished_at >= finished_after``;
        then ``offset`` jobs skipped and at most ``limit`` returned. Each filter is served by
        an index: a page costs what it returns (plus the offset), not the history."""
        ...

    def counts(self) -> QueueCounts:
        """Counts by status and the oldest running/pending times, in one call. Its cost does
        not grow with finished history (counters kept as jobs move)."""
        ...

    def next_due(self) -> float | None:
        """The earliest ``run_after`` still in the future among pending and waiting_retry jobs
        (a delayed job, a retry in backoff), or None: when a claim may find work next without
        any new write. The supervisor asks after a claim that came up short."""
        ...

    def queue_position(self, job_id: int) -> int | None:
        """The 1-based place of a pending job in claim order (priority descending, then
        oldest, then id) among pending jobs; None when the job is not pending.
        ``JobNotFoundError`` for a missing job."""
        ...

    def identity(self) -> str:
        """A random id made when the store's schema was created and kept in it; it never
        changes. A data dir remembers it, so a replaced or emptied store is noticed."""
        ...

    def watch(self, wake: Wake) -> Watch | None:
        """Start pushing change hints: call ``wake`` (from any thread) soon after anyone
        commits a change a claimer cares about: an insert, a cancel or kill request, a retry,
        a settle that frees a concurrency key or schedules a retry, a promotion, a purge. A
        settle that changes nothing claimable may stay silent (the remote stores do: one
        wake-up per finished job would cost every supervisor a claim). Spurious hints are
        fine. None when this store cannot push: its user then polls."""
        ...

    def purge(
        self,
        *,
        ids: Collection[int] | None = None,
        statuses: Collection[Status] | None = None,
        older_than_s: float | None = None,
    ) -> PurgeResult:
        """Delete jobs and their events. Only terminal jobs are deleted: a pending one is
        cancelled first, a live one gets a cancel request and stays until it has stopped."""
        ...

    def events(self, job_id: int) -> builtins.list[Event]:
        """The job's event log, oldest first."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...
