"""``MemoryStore``: the ``JobStore`` in a dict, and ``ManualClock`` (see ``supervisor.testing``)."""

from __future__ import annotations

import builtins
import itertools
import random
import threading
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from supervisor import lifecycle as lc
from supervisor.errors import (
    JobNotFoundError,
    LeaseLostError,
    UpdateConflictError,
)
from supervisor.lifecycle import TERMINAL, CancelMode, Event, Job, JobSpec, Outcome, Status
from supervisor.store import Beat, BeatReply, LocalWatch, PurgeResult, QueueCounts, Wake

__all__ = ["ManualClock", "MemoryStore"]


class ManualClock:
    """A clock that moves only when told: ``clock()`` reads it, ``advance(s)`` moves it.

    It is a ``supervisor.clock.Clock`` too (``monotonic()`` and ``time()`` read the same value),
    so one object can be a store's clock and a supervisor's."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class MemoryStore:
    """A ``JobStore`` in a dict, for unit tests and as the reference model."""

    def __init__(
        self, clock: Callable[[], float] | None = None, seed: int | None = None, *, shared: bool = False
    ) -> None:
        import time

        self.shared = shared
        self._clock = clock or time.time
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._jobs: dict[int, Job] = {}
        self._events: dict[int, list[Event]] = {}
        self._ids = itertools.count(1)
        self._identity = uuid.uuid4().hex
        self._watchers: list[LocalWatch] = []

    # -- helpers -------------------------------------------------------------------------
    def _put(self, job: Job, event: Event | None) -> Job:
        self._jobs[job.id] = job
        if event is not None:
            self._events.setdefault(job.id, []).append(event)
            if job.status not in lc.LIVE or job.cancel_requested is not None:
                self._hint(job)  # not for claims and starts: nobody waits for those
        return job

    def _hint(self, job: Job | None) -> None:
        """Tell watchers: the job became claimable at its run_after, or look now."""
        due = None
        if job is not None and job.status in (Status.PENDING, Status.WAITING_RETRY):
            due = job.run_after if job.run_after > self._clock() else None
        for watch in list(self._watchers):
            watch.wake(due)

    def _get(self, job_id: int) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFoundError(f"no job with id {job_id}") from None

    # -- JobStore ------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def enqueue(self, specs: Sequence[JobSpec]) -> list[int]:
        with self._lock:
            now = self.now()
            ids: list[int] = []
            staged: dict[str, int] = {}
            unique: dict[str, int] = {}
            new: list[tuple[Job, Event]] = []
            for spec in specs:
                existing = self._find_unique(spec.unique_key, unique)
                if existing is None:
                    existing = self._find_dedup(spec.dedup_key, staged)
                if existing is not None:
                    ids.append(existing)
                    continue
                job, event = lc.new_job(spec, job_id=next(self._ids), now=now)
                new.append((job, event))
                if spec.dedup_key is not None:
                    staged[spec.dedup_key] = job.id
                if spec.unique_key is not None:
                    unique[spec.unique_key] = job.id
                ids.append(job.id)
            for job, event in new:  # all or nothing: store only once every spec has its row
                self._put(job, event)
            return ids

    def _find_unique(self, key: str | None, staged: dict[str, int]) -> int | None:
        if key is None:
            return None
        if key in staged:
            return staged[key]
        return next((j.id for j in self._jobs.values() if j.unique_key == key), None)

    def _find_dedup(self, key: str | None, staged: dict[str, int]) -> int | None:
        if key is None:
            return None
        if key in staged:
            return staged[key]
        for job in self._jobs.values():
            if job.dedup_key == key and job.status in (Status.PENDING, Status.WAITING_RETRY):
                return job.id
        return None

    def claim(
        self,
        worker: str,
        limit: int,
        *,
        lease_s: float,
        kinds: Collection[str] | None = None,
        exclude_kinds: Collection[str] = (),
    ) -> list[Job]:
        with self._lock:
            now = self.now()
            for job in list(self._jobs.values()):
                if job.status is Status.WAITING_RETRY and job.run_after <= now:
                    self._put(*lc.promote(job, now=now))
            busy = {
                j.concurrency_key
                for j in self._jobs.values()
                if j.status in lc.LIVE and j.concurrency_key is not None
            }
            ready = sorted(
                (
                    j
                    for j in self._jobs.values()
                    if j.status is Status.PENDING
                    and j.run_after <= now
                    and (kinds is None or j.kind in kinds)
                    and (j.kind is None or j.kind not in exclude_kinds)
                ),
                key=lambda j: (-j.priority, j.created_at, j.id),
            )
            taken: list[Job] = []
            for job in ready:
                if len(taken) >= limit:
                    break
                if job.concurrency_key is not None:
                    if job.concurrency_key in busy:
                        continue
                    busy.add(job.concurrency_key)
                taken.append(self._put(*lc.claim(job, worker=worker, now=now, lease_s=lease_s)))
            return taken

    def mark_running(
        self, job_id: int, worker: str, attempt: int, pid: int, facts: dict[str, Any] | None = None
    ) -> Job:
        with self._lock:
            job = self._get(job_id)
            return self._put(
                *lc.start(job, worker=worker, attempt=attempt, pid=pid, now=self.now(), facts=facts)
            )

    def heartbeat(self, worker: str, beats: Sequence[Beat], *, lease_s: float) -> list[BeatReply]:
        with self._lock:
            now = self.now()
            replies = []
            for beat in beats:
                job = self._jobs.get(beat.job_id)
                try:
                    if job is None:
                        raise LeaseLostError(f"job {beat.job_id} is gone")
                    job = lc.heartbeat(
                        job,
                        worker=worker,
                        attempt=beat.attempt,
                        now=now,
                        lease_s=lease_s,
                        progress=beat.progress,
                        stats=beat.stats,
                        active=beat.active,
                    )
                except LeaseLostError:
                    replies.append(BeatReply(beat.job_id, None, lease_lost=True))
                    continue
                self._jobs[job.id] = job
                replies.append(BeatReply(job.id, job.cancel_requested, lease_lost=False))
            return replies

    def finish(self, job_id: int, worker: str, attempt: int, outcome: Outcome) -> Job:
        with self._lock:
            job = self._get(job_id)
            if lc.is_replayed_finish(job, worker, attempt):
                return job
            return self._put(
                *lc.settle(job, outcome, worker=worker, attempt=attempt, now=self.now(), rng=self._rng)
            )

    def update(self, job_id: int, expected_version: int, changes: dict[str, Any]) -> Job:
        with self._lock:
            job = self._get(job_id)
            if job.version != expected_version:
                raise UpdateConflictError(f"job {job_id} is at version {job.version}, not {expected_version}")
            new, event = lc.apply_update(job, changes, now=self.now())
            return self._put(new, event)

    def reap_stale(self, grace_s: float) -> list[Job]:
        with self._lock:
            now = self.now()
            stale = [
                j
                for j in self._jobs.values()
                if j.status in lc.LIVE
                and j.lease_expires_at is not None
                and j.lease_expires_at + grace_s < now
            ]
            reaped = [self._put(*lc.reap(j, now=now, rng=self._rng)) for j in stale]
            waiting = sorted((j for j in self._jobs.values() if lc.is_expired(j, now)), key=lambda j: j.id)
            expired = [self._put(*lc.expire(j, now=now)) for j in waiting]
            due = sorted(
                (j for j in self._jobs.values() if j.status is Status.WAITING_RETRY and j.run_after <= now),
                key=lambda j: j.id,
            )
            changed = reaped + expired + [self._put(*lc.promote(j, now=now)) for j in due]
            return list({j.id: j for j in changed}.values())  # a job reaped then promoted: once

    def request_cancel(self, job_id: int, mode: CancelMode = CancelMode.CANCEL) -> Job:
        with self._lock:
            return self._put(*lc.request_cancel(self._get(job_id), now=self.now(), mode=mode))

    def retry(self, job_id: int) -> Job:
        with self._lock:
            return self._put(*lc.manual_retry(self._get(job_id), now=self.now()))

    def get(self, job_id: int) -> Job:
        with self._lock:
            return self._get(job_id)

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
        with self._lock:
            jobs = [
                j
                for j in self._jobs.values()
                if (statuses is None or j.status in statuses)
                and (lease_owner is None or j.lease_owner == lease_owner)
                and (kinds is None or j.kind in kinds)
                and (concurrency_key is None or j.concurrency_key == concurrency_key)
                and (created_after is None or j.created_at >= created_after)
                and (created_before is None or j.created_at < created_before)
                and (finished_after is None or (j.finished_at or -1.0) >= finished_after)
            ]
            jobs.sort(key=lambda j: j.id, reverse=True)
            jobs = jobs[max(offset, 0) :]
            return jobs[: max(limit, 0)] if limit is not None else jobs

    def next_due(self) -> float | None:
        with self._lock:
            now = self.now()
            waiting = (Status.PENDING, Status.WAITING_RETRY)
            return min(
                (j.run_after for j in self._jobs.values() if j.status in waiting and j.run_after > now),
                default=None,
            )

    def queue_position(self, job_id: int) -> int | None:
        with self._lock:
            job = self._get(job_id)
            if job.status is not Status.PENDING:
                return None
            order = sorted(
                (j for j in self._jobs.values() if j.status is Status.PENDING),
                key=lambda j: (-j.priority, j.created_at, j.id),
            )
            return next(n for n, j in enumerate(order, 1) if j.id == job_id)

    def identity(self) -> str:
        return self._identity

    def watch(self, wake: Wake) -> LocalWatch:
        watch = LocalWatch(wake, self._watchers.remove)
        with self._lock:
            self._watchers.append(watch)
        return watch

    def counts(self) -> QueueCounts:
        with self._lock:
            by_status = dict.fromkeys(Status, 0)
            for job in self._jobs.values():
                by_status[job.status] += 1
            running = [j.started_at or j.updated_at for j in self._jobs.values() if j.status in lc.LIVE]
            pending = [j.created_at for j in self._jobs.values() if j.status is Status.PENDING]
            return QueueCounts(by_status, min(running, default=None), min(pending, default=None), self.now())

    def purge(
        self,
        *,
        ids: Collection[int] | None = None,
        statuses: Collection[Status] | None = None,
        older_than_s: float | None = None,
    ) -> PurgeResult:
        with self._lock:
            now = self.now()
            if ids is not None:
                for job_id in ids:
                    self._get(job_id)
            chosen = [
                j
                for j in self._jobs.values()
                if (ids is None or j.id in ids)
                and (statuses is None or j.status in statuses)
                and (older_than_s is None or j.updated_at <= now - older_than_s)
            ]
            deleted, flagged = [], []
            for job in chosen:
                if job.status in lc.LIVE:
                    if job.cancel_requested is None:
                        self._put(*lc.request_cancel(job, now=now))
                    flagged.append(job.id)
                    continue
                if job.status not in TERMINAL:
                    self._put(*lc.request_cancel(job, now=now))
                del self._jobs[job.id]
                self._events.pop(job.id, None)
                deleted.append(job.id)
            if deleted:
                self._hint(None)
            return PurgeResult(tuple(sorted(deleted)), tuple(sorted(flagged)))

    def events(self, job_id: int) -> builtins.list[Event]:
        with self._lock:
            self._get(job_id)
            return list(self._events.get(job_id, []))

    def close(self) -> None:
        for watch in list(self._watchers):
            watch.close()

    # -- test hooks ----------------------------------------------------------------------
    def force(self, job_id: int, **changes: Any) -> Job:
        """Change a row behind the state machine's back (simulate an expired lease, say)."""
        with self._lock:
            return self._put(replace(self._get(job_id), **changes), None)
