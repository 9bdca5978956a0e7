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
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from supervisor.lifecycle import CancelMode, Event, Job, JobSpec, Outcome, Status

__all__ = ["Beat", "BeatReply", "JobStore", "PurgeResult", "QueueCounts"]


@dataclass(frozen=True, slots=True)
class Beat:
    """One running job in a heartbeat: its fencing pair and optional progress (JSON)."""

    job_id: int
    attempt: int
    progress: Any = None
    stats: Any = None
    """The tree's resource use (rss_bytes, cpu_percent, processes), stored with the job."""


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
        ``lost`` (retried or failed per their policy), and fail pending jobs that waited past
        their ``queue_timeout_s`` as ``queue_timeout``. Returns the jobs it changed."""
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
        limit: int | None = None,
    ) -> builtins.list[Job]:
        """Jobs, newest first, optionally filtered by status and lease owner."""
        ...

    def counts(self) -> QueueCounts:
        """Counts by status and the oldest running/pending times, in one call."""
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

    def changed(self) -> bool:
        """A cheap hint: has anyone written to the store since the last call? Lets an idle
        supervisor wake for a new job without a full poll. False positives are fine."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...
