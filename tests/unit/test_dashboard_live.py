"""The live feed (bridge/dashboard/live.py): one watcher, snapshots, and the jobs' version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from bridge.dashboard.live import Feed, Snapshot
from bridge.service import JobService
from supervisor.errors import StoreUnavailableError
from supervisor.events import JobChange
from supervisor.lifecycle import Job, JobSpec, Status
from supervisor.settings import Settings
from supervisor.store import Beat
from supervisor.testing import ManualClock, MemoryStore

T = TypeVar("T")
WAIT_S = 5.0


class FlakyStore(MemoryStore):
    """A MemoryStore that can be made unreachable for counts and lists (what the feed reads)."""

    down = False

    def counts(self):  # type: ignore[no-untyped-def]
        if self.down:
            raise StoreUnavailableError("store down")
        return super().counts()

    def list(self, **kwargs):  # type: ignore[no-untyped-def]
        if self.down:
            raise StoreUnavailableError("store down")
        return super().list(**kwargs)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore(ManualClock())


@pytest.fixture
def service(store: FlakyStore, tmp_path: Path) -> JobService:
    return JobService(Settings(data_dir=tmp_path), store)


def running(feed: Feed, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` while the feed's watcher runs with one listener."""

    async def main() -> T:
        task = asyncio.create_task(feed.run())
        try:
            async with feed.listening():
                return await asyncio.wait_for(body(), 30)
        finally:
            task.cancel()

    return asyncio.run(main())


async def next_snapshot(feed: Feed, after: int) -> Snapshot:
    snapshot = await feed.next(after, WAIT_S)
    assert snapshot is not None, "no snapshot in time"
    return snapshot


def test_jobs_version_grows_only_when_jobs_move(service: JobService, store: FlakyStore) -> None:
    """Looks that find the same jobs keep jobs_version; a new job, or a change of a live job's
    progress, makes it grow; every snapshot carries health."""
    feed = Feed(service, refresh_s=0.01, min_gap_s=0)

    async def body() -> None:
        first = await next_snapshot(feed, 0)
        assert first.health is not None and first.health["pending"] == 0
        same = await next_snapshot(feed, first.version)
        assert same.jobs_version == first.jobs_version
        store.enqueue([JobSpec(command=("true",))])
        moved = await next_snapshot(feed, same.version)
        while moved.health is not None and moved.health["pending"] == 0:  # a look already under way
            moved = await next_snapshot(feed, moved.version)
        assert moved.jobs_version == first.jobs_version + 1
        [job] = store.claim("w", 1, lease_s=30)
        store.mark_running(job.id, "w", job.attempt, pid=1)
        started = await next_snapshot(feed, moved.version)
        while started.jobs_version == moved.jobs_version:
            started = await next_snapshot(feed, started.version)
        store.heartbeat("w", [Beat(job.id, job.attempt, progress={"done": 1, "total": 2})], lease_s=30)
        later = await next_snapshot(feed, started.version)
        while later.jobs_version == started.jobs_version:
            later = await next_snapshot(feed, later.version)
        assert later.jobs_version == started.jobs_version + 1

    running(feed, body)


def test_watcher_rests_while_nobody_listens(service: JobService) -> None:
    """Without a listener the watcher reads nothing; the first listener gets a snapshot."""
    feed = Feed(service, refresh_s=0.01, min_gap_s=0)

    async def main() -> None:
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.sleep(0.1)  # give an eager watcher time to look: it must not
            assert feed.latest is None
            async with feed.listening():
                assert await next_snapshot(feed, 0)
        finally:
            task.cancel()

    asyncio.run(main())


def test_unreachable_store_is_a_snapshot_with_an_error(service: JobService, store: FlakyStore) -> None:
    """While the store is unreachable a snapshot still carries health (without counts) and says
    why; jobs_version stays; the feed goes on and recovers when the store answers again."""
    store.down = True
    feed = Feed(service, refresh_s=0.01, min_gap_s=0)

    async def body() -> None:
        broken = await next_snapshot(feed, 0)
        assert broken.error == "store down"
        assert broken.health is not None and broken.health["pending"] is None
        again = await next_snapshot(feed, broken.version)
        assert again.error == "store down" and again.jobs_version == broken.jobs_version
        store.down = False
        healed = await next_snapshot(feed, again.version)
        while healed.error is not None:
            healed = await next_snapshot(feed, healed.version)
        assert healed.health is not None and healed.health["pending"] == 0

    running(feed, body)


class Observer:
    """Stands for the metrics recorder: says every change to a terminal status ended an attempt."""

    def __init__(self) -> None:
        self.changes: list[JobChange] = []
        self.jobs: list[Job] = []

    def observe(self, change: JobChange) -> bool:
        self.changes.append(change)
        return change.to_status is Status.COMPLETED

    def observe_job(self, job: Job) -> None:
        self.jobs.append(job)


def test_supervisor_changes_wake_the_watcher_and_reach_the_observer(
    service: JobService, store: FlakyStore
) -> None:
    """Each change of the in-process supervisor makes the watcher look at once (a new
    jobs_version even if its look found nothing new) and goes to the observer, which gets the
    job of each finished attempt read from the store; a purged job is skipped."""
    [job_id] = store.enqueue([JobSpec(command=("true",))])
    feed = Feed(service, refresh_s=60, min_gap_s=0)  # only a wake-up can bring a second look
    observer = Observer()

    async def changes() -> AsyncIterator[JobChange]:
        yield JobChange(job_id, Status.RUNNING, Status.COMPLETED, "exit code 0", 1)
        yield JobChange(999, Status.RUNNING, Status.COMPLETED, "exit code 0", 1)  # gone: skipped

    async def body() -> None:
        first = await next_snapshot(feed, 0)
        await feed.consume(changes(), observer)
        woken = await next_snapshot(feed, first.version)
        assert woken.jobs_version == first.jobs_version + 1

    running(feed, body)
    assert [c.job_id for c in observer.changes] == [job_id, 999]
    assert [j.id for j in observer.jobs] == [job_id]


def test_close_ends_every_wait(service: JobService) -> None:
    """After close() a waiting stream returns at once instead of at its keep-alive timeout."""
    feed = Feed(service, refresh_s=60, min_gap_s=0)

    async def main() -> Snapshot | None:
        waiter = asyncio.create_task(feed.next(0, 60))
        await asyncio.sleep(0)
        feed.close()
        return await asyncio.wait_for(waiter, 5)

    assert asyncio.run(main()) is None and feed.closed
