"""Store protocol v2, on every store: list filters and paging, queue positions, identity,
unique keys, delayed jobs, promotion by the reaper, activity times, and change hints.

Like the rest of the contract suite, time moves only through the ``clock`` fixture; the one
wait here (a hint crossing to another writer's watcher) is a wait on a queue with a deadline.
"""

from __future__ import annotations

import queue
import re
from typing import Any

import pytest

from supervisor.errors import JobNotFoundError
from supervisor.lifecycle import CancelMode, ErrorKind, JobSpec, Outcome, Status
from supervisor.store import Beat, JobStore
from supervisor.testing import ManualClock

pytestmark = pytest.mark.usefixtures("v2")

W = "worker-a"
LEASE = 30.0


def submit(store: JobStore, **fields: Any) -> int:
    if "command" not in fields:
        fields.setdefault("kind", "echo")
    return store.enqueue([JobSpec(**fields)])[0]


def finish(store: JobStore, job_id: int, **outcome: Any) -> None:
    [job] = [j for j in store.claim(W, 50, lease_s=LEASE) if j.id == job_id]
    store.finish(job.id, W, job.attempt, Outcome(**outcome))


def test_list_filters_by_kind_key_and_times_newest_first(store: JobStore, clock: ManualClock) -> None:
    """Each filter of list narrows the jobs; the order stays newest first; offset pages."""
    a = submit(store, kind="a", concurrency_key="k1")
    clock.advance(10)
    b = submit(store, kind="b", concurrency_key="k1")
    clock.advance(10)
    c = submit(store, command=("true",), concurrency_key="k2")
    t0 = clock() - 20
    assert [j.id for j in store.list(kinds={"a", "b"})] == [b, a]
    assert [j.id for j in store.list(concurrency_key="k1")] == [b, a]
    assert [j.id for j in store.list(created_after=t0 + 5)] == [c, b]
    assert [j.id for j in store.list(created_before=t0 + 15)] == [b, a]
    assert [j.id for j in store.list(created_after=t0 + 5, created_before=t0 + 15)] == [b]
    assert [j.id for j in store.list(limit=1, offset=1)] == [b]
    assert [j.id for j in store.list(offset=2)] == [a]
    assert store.list(offset=3) == []


def test_list_by_finish_time(store: JobStore, clock: ManualClock) -> None:
    """finished_after selects jobs finished at or after a time (the last hour's outcomes)."""
    old = submit(store)
    finish(store, old)
    clock.advance(3600)
    new = submit(store)
    finish(store, new, error_kind=ErrorKind.INVALID, error="bad")
    still_pending = submit(store)
    assert [j.id for j in store.list(finished_after=clock() - 60)] == [new]
    assert still_pending not in [j.id for j in store.list(finished_after=0)]


def test_queue_position_follows_claim_order(store: JobStore, clock: ManualClock) -> None:
    """Positions count pending jobs by priority, then age; a claimed job has none."""
    low = submit(store, priority=0)
    clock.advance(1)
    high = submit(store, priority=5)
    clock.advance(1)
    low2 = submit(store, priority=0)
    assert [store.queue_position(i) for i in (high, low, low2)] == [1, 2, 3]
    store.claim(W, 1, lease_s=LEASE)
    assert store.queue_position(high) is None
    assert [store.queue_position(i) for i in (low, low2)] == [1, 2]
    with pytest.raises(JobNotFoundError):
        store.queue_position(9999)


def test_identity_is_a_stable_random_id(store: JobStore) -> None:
    """identity() is the same on every call and looks like a random id."""
    first = store.identity()
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    submit(store)
    assert store.identity() == first


def test_unique_key_returns_the_existing_job_in_any_status(store: JobStore) -> None:
    """A second job with a unique key gets the first one's id, even after it completed, and
    within one batch."""
    first = submit(store, unique_key="schedule:nightly:2026-12-02T03:00")
    finish(store, first)
    assert store.get(first).status is Status.COMPLETED
    again = submit(store, unique_key="schedule:nightly:2026-12-02T03:00")
    assert again == first
    ids = store.enqueue([JobSpec(kind="echo", unique_key="u"), JobSpec(kind="echo", unique_key="u")])
    assert ids[0] == ids[1] != first
    assert len(store.list()) == 2


def test_a_delayed_job_is_claimable_only_from_its_run_after(store: JobStore, clock: ManualClock) -> None:
    """run_after in a spec holds the job back until the store's clock reaches it."""
    job_id = submit(store, run_after=clock() + 120)
    assert store.get(job_id).run_after == pytest.approx(clock() + 120)
    assert store.claim(W, 1, lease_s=LEASE) == []
    clock.advance(121)
    [job] = store.claim(W, 1, lease_s=LEASE)
    assert job.id == job_id


def test_reap_promotes_retries_whose_backoff_ended(store: JobStore, clock: ManualClock) -> None:
    """reap_stale moves due waiting_retry jobs to pending (with its event) and returns them."""
    job_id = submit(store, backoff_s=10.0, max_attempts=3)
    [job] = store.claim(W, 1, lease_s=LEASE)
    store.finish(job.id, W, job.attempt, Outcome(error_kind=ErrorKind.EXIT_CODE, error="exit code 1"))
    assert store.get(job_id).status is Status.WAITING_RETRY
    clock.advance(10.5)
    changed = store.reap_stale(5.0)
    assert [(j.id, j.status) for j in changed] == [(job_id, Status.PENDING)]
    assert store.events(job_id)[-1].reason == "backoff over"


def test_counts_agree_with_the_jobs_after_every_kind_of_change(store: JobStore, clock: ManualClock) -> None:
    """Counters kept incrementally equal a tally of the jobs after inserts, claims, settles,
    cancels, retries and purges."""
    ids = [submit(store) for _ in range(6)]
    [a, b] = store.claim(W, 2, lease_s=LEASE)
    store.finish(a.id, W, a.attempt, Outcome())
    store.finish(b.id, W, b.attempt, Outcome(error_kind=ErrorKind.INVALID, error="x"))
    store.request_cancel(ids[3], CancelMode.CANCEL)
    store.retry(b.id)
    store.purge(ids=[a.id])
    tally: dict[Status, int] = dict.fromkeys(Status, 0)
    for job in store.list():
        tally[job.status] += 1
    assert store.counts().by_status == tally


def test_activity_time_moves_with_output_or_progress_only(store: JobStore, clock: ManualClock) -> None:
    """A heartbeat marked active, or carrying progress, sets last_activity_at; a bare one
    does not."""
    submit(store)
    [job] = store.claim(W, 1, lease_s=LEASE)
    assert job.last_activity_at is None
    clock.advance(5)
    store.heartbeat(W, [Beat(job.id, job.attempt)], lease_s=LEASE)
    assert store.get(job.id).last_activity_at is None
    store.heartbeat(W, [Beat(job.id, job.attempt, active=True)], lease_s=LEASE)
    assert store.get(job.id).last_activity_at == pytest.approx(clock())
    clock.advance(5)
    store.heartbeat(W, [Beat(job.id, job.attempt, progress={"step": 2})], lease_s=LEASE)
    assert store.get(job.id).last_activity_at == pytest.approx(clock())


def test_repository_fields_round_trip(store: JobStore) -> None:
    """repo and ref are stored as given, and repo sets the concurrency key."""
    job_id = store.enqueue([JobSpec(kind="code", repo="octo/notes", ref="main")])[0]
    job = store.get(job_id)
    assert (job.repo, job.ref, job.concurrency_key) == ("octo/notes", "main", "github.com/octo/notes")


def test_watch_hints_another_writers_insert_and_due_time(
    store: JobStore, other: JobStore, clock: ManualClock
) -> None:
    """A watcher hears of a job inserted by another writer ("look now"), of a delayed one with
    its due time, and of a cancel request for a running job."""
    hints: queue.Queue[float | None] = queue.Queue()
    watch = store.watch(hints.put)
    assert watch is not None
    try:
        assert watch.live
        submit(other)
        assert hints.get(timeout=10) is None
        due = clock() + 300
        submit(other, run_after=due)
        assert hints.get(timeout=10) == pytest.approx(due)
        [job] = store.claim(W, 1, lease_s=LEASE)
        other.request_cancel(job.id, CancelMode.CANCEL)
        assert hints.get(timeout=10) is None
    finally:
        watch.close()
    assert not watch.live


def test_next_due_is_the_earliest_future_run_after_of_a_waiting_job(
    store: JobStore, clock: ManualClock
) -> None:
    """next_due names when a delayed job or a retry in backoff becomes claimable; None when
    nothing waits for a time."""
    assert store.next_due() is None
    submit(store)  # claimable now: not a future time
    assert store.next_due() is None
    submit(store, run_after=clock() + 50)
    submit(store, run_after=clock() + 20)
    assert store.next_due() == pytest.approx(clock() + 20)
    clock.advance(30)
    assert store.next_due() == pytest.approx(clock() + 20)
