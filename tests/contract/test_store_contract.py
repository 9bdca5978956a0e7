"""The ``JobStore`` contract, run against every store registered in ``conftest.STORES``.

Time moves only through the ``clock`` fixture (the store's clock), so lease expiry and retry
backoff are tested without sleeping. Tests use only the protocol, never a store's internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from supervisor import lifecycle as lc
from supervisor.errors import (
    IllegalTransitionError,
    InvalidJobError,
    JobNotFoundError,
    LeaseLostError,
    UpdateConflictError,
)
from supervisor.lifecycle import CancelMode, DecidedBy, ErrorKind, Job, JobSpec, Outcome, Status
from supervisor.store import Beat, BeatReply, JobStore
from supervisor.testing import ManualClock

if TYPE_CHECKING:
    from tests.contract.conftest import StoreFactory

W = "worker-a"
W2 = "worker-b"
LEASE = 30.0


def spec(**fields: Any) -> JobSpec:
    if "command" not in fields:
        fields.setdefault("kind", "echo")
    return JobSpec(**fields)


def submit(store: JobStore, **fields: Any) -> int:
    return store.enqueue([spec(**fields)])[0]


def claim_one(store: JobStore, worker: str = W, **kw: Any) -> Job:
    jobs = store.claim(worker, 1, lease_s=LEASE, **kw)
    assert len(jobs) == 1, jobs
    return jobs[0]


def start_one(store: JobStore, worker: str = W, pid: int = 4242) -> Job:
    job = claim_one(store, worker)
    return store.mark_running(job.id, worker, job.attempt, pid)


def fail(store: JobStore, job: Job, kind: ErrorKind = ErrorKind.EXIT_CODE, **kw: Any) -> Job:
    assert job.lease_owner is not None
    return store.finish(job.id, job.lease_owner, job.attempt, Outcome(error_kind=kind, error="boom", **kw))


def succeed(store: JobStore, job: Job, **kw: Any) -> Job:
    assert job.lease_owner is not None
    return store.finish(job.id, job.lease_owner, job.attempt, Outcome(exit_code=0, **kw))


def transitions(store: JobStore, job_id: int) -> list[tuple[Status | None, Status]]:
    return [(e.from_status, e.to_status) for e in store.events(job_id)]


# -- enqueue and dedup -------------------------------------------------------------------


def test_enqueue_returns_ids_in_order(store: JobStore, clock: ManualClock) -> None:
    """A batch gets increasing ids in spec order, each a pending job built from its spec."""
    ids = store.enqueue([spec(kind="a"), spec(kind="b", priority=3), spec(command=("true",))])
    assert ids == sorted(set(ids))
    assert len(ids) == 3
    jobs = [store.get(i) for i in ids]
    assert [j.kind for j in jobs] == ["a", "b", None]
    assert jobs[1].priority == 3
    assert jobs[2].command == ("true",)
    for job in jobs:
        assert job.status is Status.PENDING
        assert (job.attempt, job.version) == (0, 1)
        assert job.created_at == job.run_after == clock.t


def test_enqueue_empty_batch_inserts_nothing(store: JobStore) -> None:
    """An empty batch returns no ids and leaves the store empty."""
    assert store.enqueue([]) == []
    assert store.list() == []


def test_ids_are_never_reused_after_purge(store: JobStore) -> None:
    """A purged job's id is not handed out again (logs and the state file refer to ids)."""
    old = submit(store)
    store.request_cancel(old)
    store.purge(ids=[old])
    assert submit(store) > old


def test_enqueue_batch_is_all_or_nothing(
    store: JobStore, store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while building the second job of a batch leaves no job of the batch behind."""
    if not store_factory.lifecycle_in_python:
        pytest.skip("this store runs the lifecycle on its server; no failure can be injected")
    real = lc.new_job
    calls = []

    def flaky(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real(*args, **kw)

    monkeypatch.setattr(lc, "new_job", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        store.enqueue([spec(kind="a"), spec(kind="b"), spec(kind="c")])
    monkeypatch.setattr(lc, "new_job", real)
    assert store.list() == []
    assert store.counts().by_status[Status.PENDING] == 0


def test_dedup_within_one_batch_returns_one_id(store: JobStore) -> None:
    """Two specs of one batch with the same dedup_key become one job."""
    ids = store.enqueue([spec(dedup_key="d"), spec(kind="other"), spec(dedup_key="d")])
    assert ids[0] == ids[2] != ids[1]
    assert len(store.list()) == 2


def test_dedup_returns_existing_pending_job(store: JobStore) -> None:
    """Submitting a dedup_key that a pending job has returns that job's id."""
    first = submit(store, dedup_key="d")
    assert submit(store, dedup_key="d", priority=9) == first
    assert store.get(first).priority == 0
    assert len(store.list()) == 1


def test_dedup_returns_existing_waiting_retry_job(store: JobStore) -> None:
    """A job waiting for its retry still absorbs a submit with its dedup_key."""
    first = submit(store, dedup_key="d")
    assert fail(store, claim_one(store)).status is Status.WAITING_RETRY
    assert submit(store, dedup_key="d") == first


def test_dedup_gives_a_new_job_once_the_old_one_is_terminal(store: JobStore) -> None:
    """After the deduplicated job is cancelled or completed, the same key makes a new job."""
    first = submit(store, dedup_key="d")
    store.request_cancel(first)
    second = submit(store, dedup_key="d")
    assert second != first
    succeed(store, claim_one(store))
    third = submit(store, dedup_key="d")
    assert third not in (first, second)


def test_dedup_does_not_match_a_live_job(store: JobStore) -> None:
    """A running job does not absorb a new submit: the key dedups only queued work."""
    first = submit(store, dedup_key="d")
    claim_one(store)
    assert submit(store, dedup_key="d") != first


# -- claim -------------------------------------------------------------------------------


def test_claim_orders_by_priority_then_age_then_id(store: JobStore, clock: ManualClock) -> None:
    """Claim takes the highest priority first, then the oldest, then the lowest id."""
    a = submit(store, priority=0)
    clock.advance(1)
    b = submit(store, priority=5)
    clock.advance(1)
    c = submit(store, priority=1)
    clock.advance(1)
    d = submit(store, priority=5)
    clock.advance(1)
    e, f = store.enqueue([spec(priority=0), spec(priority=0)])
    g = submit(store, priority=-3)
    assert [j.id for j in store.claim(W, 10, lease_s=LEASE)] == [b, d, c, a, e, f, g]


def test_claim_takes_the_lease_and_a_new_attempt(store: JobStore, clock: ManualClock) -> None:
    """A claimed job is preparing, leased to the worker until now + lease_s, at attempt 1."""
    job_id = submit(store)
    clock.advance(5)
    job = claim_one(store)
    assert job.id == job_id
    assert job.status is Status.PREPARING
    assert (job.lease_owner, job.lease_expires_at) == (W, clock.t + LEASE)
    assert (job.attempt, job.version) == (1, 2)
    assert store.get(job_id) == job


def test_claim_respects_the_limit(store: JobStore) -> None:
    """Claim returns at most ``limit`` jobs, none for a limit of 0."""
    store.enqueue([spec() for _ in range(5)])
    assert store.claim(W, 0, lease_s=LEASE) == []
    assert len(store.claim(W, 2, lease_s=LEASE)) == 2
    assert len(store.claim(W, 10, lease_s=LEASE)) == 3
    assert store.claim(W, 10, lease_s=LEASE) == []


def test_claim_takes_one_job_per_key_within_one_claim(store: JobStore) -> None:
    """One claim never takes two jobs of one concurrency key; keyless jobs are not limited."""
    k1, k2, m1, n1, n2 = store.enqueue(
        [spec(concurrency_key="k"), spec(concurrency_key="k"), spec(concurrency_key="m"), spec(), spec()]
    )
    assert [j.id for j in store.claim(W, 10, lease_s=LEASE)] == [k1, m1, n1, n2]
    assert store.get(k2).status is Status.PENDING


def test_claim_skips_keys_held_by_live_jobs(store: JobStore) -> None:
    """A key held by a preparing or running job (of any worker) blocks its other jobs."""
    k1, k2, k3 = store.enqueue([spec(concurrency_key="k") for _ in range(3)])
    assert claim_one(store, W).id == k1
    assert store.claim(W2, 5, lease_s=LEASE) == []
    running = store.mark_running(k1, W, 1, pid=10)
    assert store.claim(W2, 5, lease_s=LEASE) == []
    succeed(store, running)
    assert [j.id for j in store.claim(W2, 5, lease_s=LEASE)] == [k2]
    assert store.get(k3).status is Status.PENDING


def test_a_job_waiting_for_retry_does_not_hold_its_key(store: JobStore) -> None:
    """Once a keyed job fails into waiting_retry, the next job of its key may run."""
    k1, k2 = store.enqueue([spec(concurrency_key="k"), spec(concurrency_key="k")])
    fail(store, claim_one(store))
    assert store.get(k1).status is Status.WAITING_RETRY
    assert claim_one(store).id == k2


def test_claim_filters_by_kinds(store: JobStore) -> None:
    """With ``kinds``, claim takes only jobs of those kinds; an empty collection takes none."""
    a, b, cmd = store.enqueue([spec(kind="a"), spec(kind="b"), spec(command=("true",))])
    assert store.claim(W, 10, lease_s=LEASE, kinds=[]) == []
    assert [j.id for j in store.claim(W, 10, lease_s=LEASE, kinds={"b", "zzz"})] == [b]
    assert [j.id for j in store.claim(W, 10, lease_s=LEASE)] == [a, cmd]


def test_claim_skips_excluded_kinds_but_not_commands(store: JobStore) -> None:
    """``exclude_kinds`` skips those kinds (saturated locally) and still takes raw commands."""
    a, b, cmd = store.enqueue([spec(kind="a"), spec(kind="b"), spec(command=("true",))])
    assert [j.id for j in store.claim(W, 10, lease_s=LEASE, exclude_kinds={"a"})] == [b, cmd]
    assert [j.id for j in store.claim(W, 10, lease_s=LEASE)] == [a]


def test_claim_never_returns_a_job_twice(store: JobStore) -> None:
    """Claiming (and finishing) in rounds until the queue is empty yields every job exactly once."""
    keys = ["k1", "k2", None, "k3", None]
    ids = store.enqueue([spec(concurrency_key=keys[i % 5], priority=i % 3) for i in range(30)])
    seen: list[int] = []
    for round_ in range(100):
        worker = (W, W2)[round_ % 2]
        jobs = store.claim(worker, 4, lease_s=LEASE)
        if not jobs:
            break
        seen += [j.id for j in jobs]
        for job in jobs:
            succeed(store, job)
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))


# -- mark_running and heartbeat ----------------------------------------------------------


def test_mark_running_records_pid_and_start(store: JobStore, clock: ManualClock) -> None:
    """mark_running moves preparing → running with the pid and the store time as start."""
    submit(store)
    job = claim_one(store)
    clock.advance(2)
    running = store.mark_running(job.id, W, job.attempt, 4242)
    assert running.status is Status.RUNNING
    assert (running.pid, running.started_at, running.version) == (4242, clock.t, job.version + 1)
    assert store.get(job.id) == running


@pytest.mark.parametrize(("worker", "attempt"), [(W2, 1), (W, 2), (W, 0)])
def test_mark_running_is_fenced(store: JobStore, worker: str, attempt: int) -> None:
    """mark_running by another worker or attempt raises LeaseLostError and writes nothing."""
    submit(store)
    job = claim_one(store)
    with pytest.raises(LeaseLostError):
        store.mark_running(job.id, worker, attempt, 99)
    assert store.get(job.id) == job


def test_mark_running_of_a_missing_job_is_not_found(store: JobStore) -> None:
    """mark_running of an unknown id raises JobNotFoundError."""
    with pytest.raises(JobNotFoundError):
        store.mark_running(12345, W, 1, 99)


def test_heartbeat_extends_the_lease_without_bumping_version(store: JobStore, clock: ManualClock) -> None:
    """A heartbeat moves lease_expires_at to now + lease_s and stores progress; version stays."""
    submit(store)
    job = start_one(store)
    clock.advance(10)
    replies = store.heartbeat(W, [Beat(job.id, job.attempt, {"step": 3})], lease_s=60)
    assert replies == [BeatReply(job.id, None, lease_lost=False)]
    after = store.get(job.id)
    assert after.lease_expires_at == clock.t + 60
    assert after.progress == {"step": 3}
    assert (after.version, after.updated_at, after.status) == (job.version, job.updated_at, Status.RUNNING)
    store.heartbeat(W, [Beat(job.id, job.attempt)], lease_s=60)
    assert store.get(job.id).progress == {"step": 3}, "a beat without progress keeps the last one"


def test_heartbeat_reports_lease_lost_per_job(store: JobStore, clock: ManualClock) -> None:
    """In one call, a wrong attempt or an unknown id is lease_lost while a good beat renews."""
    store.enqueue([spec(), spec()])
    good, other = store.claim(W, 2, lease_s=LEASE)
    clock.advance(5)
    replies = store.heartbeat(W, [Beat(good.id, 1), Beat(other.id, 2), Beat(98765, 1)], lease_s=LEASE)
    assert replies == [
        BeatReply(good.id, None, lease_lost=False),
        BeatReply(other.id, None, lease_lost=True),
        BeatReply(98765, None, lease_lost=True),
    ]
    assert store.get(good.id).lease_expires_at == clock.t + LEASE
    assert store.get(other.id) == other, "nothing is written for a lost lease"
    assert store.heartbeat(W2, [Beat(good.id, 1)], lease_s=LEASE) == [BeatReply(good.id, None, True)]


def test_heartbeat_after_the_job_settled_is_lease_lost(store: JobStore) -> None:
    """Once a job has finished, a late heartbeat for it reports lease_lost."""
    submit(store)
    job = succeed(store, start_one(store))
    assert store.heartbeat(W, [Beat(job.id, 1)], lease_s=LEASE) == [BeatReply(job.id, None, True)]


# -- cancel ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(CancelMode))
def test_cancel_of_a_pending_job_is_immediate(store: JobStore, clock: ManualClock, mode: CancelMode) -> None:
    """Cancelling (or killing) a pending job makes it cancelled at once."""
    job_id = submit(store)
    clock.advance(3)
    job = store.request_cancel(job_id, mode)
    assert job.status is Status.CANCELLED
    assert (job.error_kind, job.finished_at) == (ErrorKind.CANCELLED, clock.t)
    assert store.claim(W, 5, lease_s=LEASE) == []


def test_cancel_of_a_waiting_retry_job_is_immediate(store: JobStore) -> None:
    """A job waiting for its retry is cancelled at once and never claimed again."""
    job_id = submit(store)
    fail(store, claim_one(store))
    assert store.request_cancel(job_id).status is Status.CANCELLED


def test_cancel_of_a_running_job_reaches_the_next_heartbeat(store: JobStore) -> None:
    """A running job stays running with cancel_requested, which its next heartbeat reports."""
    submit(store)
    job = start_one(store)
    flagged = store.request_cancel(job.id)
    assert (flagged.status, flagged.cancel_requested) == (Status.RUNNING, CancelMode.CANCEL)
    assert flagged.version == job.version + 1
    reply = store.heartbeat(W, [Beat(job.id, job.attempt)], lease_s=LEASE)
    assert reply == [BeatReply(job.id, CancelMode.CANCEL, lease_lost=False)]
    done = store.finish(job.id, W, job.attempt, Outcome(error_kind=ErrorKind.CANCELLED, signal=15))
    assert (done.status, done.cancel_requested) == (Status.CANCELLED, None)
    assert transitions(store, job.id)[-2:] == [
        (Status.RUNNING, Status.RUNNING),
        (Status.RUNNING, Status.CANCELLED),
    ]


def test_kill_is_not_softened_by_a_later_cancel(store: JobStore) -> None:
    """After a kill request, a cancel request leaves the mode at kill."""
    submit(store)
    job = start_one(store)
    store.request_cancel(job.id, CancelMode.KILL)
    assert store.request_cancel(job.id, CancelMode.CANCEL).cancel_requested is CancelMode.KILL
    reply = store.heartbeat(W, [Beat(job.id, job.attempt)], lease_s=LEASE)
    assert reply == [BeatReply(job.id, CancelMode.KILL, lease_lost=False)]


def test_cancel_of_a_terminal_job_is_illegal(store: JobStore) -> None:
    """Cancelling a completed job raises IllegalTransitionError and changes nothing."""
    submit(store)
    done = succeed(store, claim_one(store))
    with pytest.raises(IllegalTransitionError):
        store.request_cancel(done.id)
    assert store.get(done.id) == done


def test_cancel_of_a_missing_job_is_not_found(store: JobStore) -> None:
    """request_cancel of an unknown id raises JobNotFoundError."""
    with pytest.raises(JobNotFoundError):
        store.request_cancel(4040)


# -- finish and the retry policy ---------------------------------------------------------


def test_finish_success_records_the_outcome(store: JobStore, clock: ManualClock) -> None:
    """A successful finish completes the job with its result and output tail, lease released."""
    submit(store)
    job = start_one(store)
    clock.advance(7)
    done = succeed(store, job, result={"answer": 42}, output_tail="done ✓\n")
    assert done.status is Status.COMPLETED
    assert (done.result, done.output_tail, done.exit_code) == ({"answer": 42}, "done ✓\n", 0)
    assert (done.lease_owner, done.lease_expires_at, done.error_kind) == (None, None, None)
    assert done.finished_at == clock.t
    assert store.get(job.id) == done


def test_finish_replayed_by_the_same_attempt_is_idempotent(store: JobStore) -> None:
    """A finish repeated by the attempt that already settled the job (its first response lost)
    returns the recorded job and writes nothing; any other writer gets LeaseLostError."""
    submit(store)
    job = start_one(store)
    done = succeed(store, job, result=1)
    events = len(store.events(job.id))
    assert fail(store, job) == done
    assert store.get(job.id) == done
    assert len(store.events(job.id)) == events
    with pytest.raises(LeaseLostError):
        store.finish(job.id, W2, job.attempt, Outcome())


def test_failures_are_retried_with_backoff_then_failed(store: JobStore, clock: ManualClock) -> None:
    """A failing job waits in [now, now + backoff] and is claimable only once run_after has come;
    after max_attempts failures it is failed."""
    job_id = submit(store, max_attempts=3, backoff_s=10.0)
    for attempt in (1, 2):
        job = claim_one(store)
        assert job.attempt == attempt
        waiting = fail(store, job)
        assert waiting.status is Status.WAITING_RETRY
        assert clock.t <= waiting.run_after <= clock.t + 10.0 * 2 ** (attempt - 1)
        if waiting.run_after - 0.001 > clock.t:
            clock.t = waiting.run_after - 0.001
            assert store.claim(W, 5, lease_s=LEASE) == []
            assert store.get(job_id).status is Status.WAITING_RETRY
        clock.t = waiting.run_after
    last = claim_one(store)
    assert last.attempt == 3
    failed = fail(store, last)
    assert (failed.status, failed.error_kind, failed.attempts_used) == (Status.FAILED, ErrorKind.EXIT_CODE, 3)
    clock.advance(10_000)
    assert store.claim(W, 5, lease_s=LEASE) == []
    assert (Status.WAITING_RETRY, Status.PENDING) in transitions(store, job_id)


@pytest.mark.parametrize("kind", [ErrorKind.INVALID, ErrorKind.QUEUE_TIMEOUT])
def test_non_retryable_failures_fail_at_once(store: JobStore, kind: ErrorKind) -> None:
    """An invalid job or a queue timeout fails at once, attempts notwithstanding."""
    submit(store, max_attempts=5)
    failed = fail(store, claim_one(store), kind)
    assert (failed.status, failed.error_kind, failed.attempt) == (Status.FAILED, kind, 1)


def test_a_forgiven_attempt_is_retried_at_once_and_not_counted(store: JobStore, clock: ManualClock) -> None:
    """A forgiven failure (shutdown) waits no backoff and gives the attempt back."""
    submit(store, max_attempts=1)
    waiting = fail(store, start_one(store), ErrorKind.KILLED, forgive=True)
    assert (waiting.status, waiting.run_after, waiting.attempts_used) == (Status.WAITING_RETRY, clock.t, 0)
    assert claim_one(store).attempt == 2


def test_stale_holder_cannot_overwrite_the_new_holder(store: JobStore, clock: ManualClock) -> None:
    """After a reap and a new claim, the old attempt's finish and mark_running are refused and
    the new holder's outcome stands."""
    job_id = submit(store, backoff_s=0.0)
    old = claim_one(store, W)
    clock.advance(LEASE + 5.5)
    assert [j.id for j in store.reap_stale(5.0)] == [job_id]
    new = claim_one(store, W2)
    assert (new.attempt, new.lease_owner) == (2, W2)
    with pytest.raises(LeaseLostError):
        succeed(store, old)
    with pytest.raises(LeaseLostError):
        store.finish(job_id, W2, old.attempt, Outcome())
    with pytest.raises(LeaseLostError):
        store.mark_running(job_id, W, old.attempt, 1)
    assert store.get(job_id) == new
    done = succeed(store, new, result="mine")
    with pytest.raises(LeaseLostError):
        fail(store, old)
    assert store.get(job_id) == done


# -- reap_stale --------------------------------------------------------------------------


def test_reap_waits_for_lease_plus_grace_on_the_store_clock(store: JobStore, clock: ManualClock) -> None:
    """A live job is reaped as lost only once its lease plus the grace has passed."""
    job_id = submit(store)
    job = claim_one(store)
    clock.advance(LEASE + 5.0)
    assert store.reap_stale(5.0) == []
    clock.advance(0.001)
    [reaped] = store.reap_stale(5.0)
    assert (reaped.id, reaped.status, reaped.error_kind) == (job_id, Status.WAITING_RETRY, ErrorKind.LOST)
    assert reaped.lease_owner is None
    last = store.events(job_id)[-1]
    assert (last.decided_by, last.facts["lease_owner"]) == (DecidedBy.REAPER, W)
    assert last.attempt == job.attempt


def test_reap_spares_jobs_that_heartbeat(store: JobStore, clock: ManualClock) -> None:
    """A job whose lease is renewed is not reaped however long it runs."""
    submit(store)
    job = start_one(store)
    for _ in range(5):
        clock.advance(LEASE - 1)
        store.heartbeat(W, [Beat(job.id, job.attempt)], lease_s=LEASE)
        assert store.reap_stale(0.0) == []
    assert store.get(job.id).status is Status.RUNNING


def test_reap_fails_a_job_without_attempts_left(store: JobStore, clock: ManualClock) -> None:
    """A reaped job whose attempts are used up is failed, not retried."""
    submit(store, max_attempts=1)
    start_one(store)
    clock.advance(LEASE + 1)
    [reaped] = store.reap_stale(0.5)
    assert (reaped.status, reaped.error_kind) == (Status.FAILED, ErrorKind.LOST)


# -- update and manual retry -------------------------------------------------------------


def test_update_changes_editable_fields_and_bumps_version(store: JobStore) -> None:
    """An update with the current version stores the change, bumps version and logs a note."""
    older = submit(store)
    newer = submit(store)
    job = store.get(newer)
    updated = store.update(newer, job.version, {"priority": 7, "timeout_s": 90.0})
    assert (updated.priority, updated.timeout_s, updated.version) == (7, 90.0, job.version + 1)
    assert store.get(newer) == updated
    assert transitions(store, newer)[-1] == (Status.PENDING, Status.PENDING)
    assert [j.id for j in store.claim(W, 2, lease_s=LEASE)] == [newer, older]


def test_update_with_a_stale_version_conflicts(store: JobStore) -> None:
    """An update naming an old version raises UpdateConflictError and changes nothing."""
    job_id = submit(store)
    stale = store.get(job_id).version
    current = store.update(job_id, stale, {"priority": 1})
    with pytest.raises(UpdateConflictError):
        store.update(job_id, stale, {"priority": 2})
    assert store.get(job_id) == current


@pytest.mark.parametrize("changes", [{"kind": "other"}, {"status": "completed"}, {"max_attempts": 0}])
def test_update_refuses_bad_changes(store: JobStore, changes: dict[str, Any]) -> None:
    """A non-editable field or an invalid value raises InvalidJobError and changes nothing."""
    job_id = submit(store)
    before = store.get(job_id)
    with pytest.raises(InvalidJobError):
        store.update(job_id, before.version, changes)
    assert store.get(job_id) == before


def test_update_of_a_missing_job_is_not_found(store: JobStore) -> None:
    """update of an unknown id raises JobNotFoundError."""
    with pytest.raises(JobNotFoundError):
        store.update(777, 1, {"priority": 1})


def test_manual_retry_gives_a_fresh_budget(store: JobStore) -> None:
    """Retrying a failed job makes it pending with its budget back while attempt keeps growing."""
    job_id = submit(store, max_attempts=1)
    assert fail(store, claim_one(store)).status is Status.FAILED
    again = store.retry(job_id)
    assert (again.status, again.attempt, again.attempts_used, again.error_kind) == (
        Status.PENDING,
        1,
        0,
        None,
    )
    second = claim_one(store)
    assert second.attempt == 2
    assert fail(store, second).status is Status.FAILED


def test_manual_retry_of_a_cancelled_job(store: JobStore) -> None:
    """A cancelled job can be retried into pending."""
    job_id = submit(store)
    store.request_cancel(job_id)
    assert store.retry(job_id).status is Status.PENDING


@pytest.mark.parametrize("finish", [False, True])
def test_manual_retry_of_a_pending_or_completed_job_is_illegal(store: JobStore, finish: bool) -> None:
    """Only failed and cancelled jobs can be retried by hand."""
    job_id = submit(store)
    if finish:
        succeed(store, claim_one(store))
    with pytest.raises(IllegalTransitionError):
        store.retry(job_id)


# -- purge -------------------------------------------------------------------------------


def test_purge_by_ids_deletes_jobs_and_their_events(store: JobStore) -> None:
    """Purging a terminal job by id deletes it and its events; other jobs stay."""
    gone, kept = submit(store), submit(store)
    store.request_cancel(gone)
    store.request_cancel(kept)
    result = store.purge(ids=[gone])
    assert (result.deleted, result.cancel_requested) == ((gone,), ())
    with pytest.raises(JobNotFoundError):
        store.get(gone)
    with pytest.raises(JobNotFoundError):
        store.events(gone)
    assert store.get(kept).status is Status.CANCELLED


def test_purge_of_a_missing_id_deletes_nothing(store: JobStore) -> None:
    """An unknown id in a purge raises JobNotFoundError before anything is deleted."""
    job_id = submit(store)
    store.request_cancel(job_id)
    with pytest.raises(JobNotFoundError):
        store.purge(ids=[job_id, 55555])
    assert store.get(job_id).status is Status.CANCELLED


def test_purge_by_status(store: JobStore) -> None:
    """Purge by status deletes only jobs in those statuses."""
    done_id = submit(store)
    cancelled_id = submit(store)
    succeed(store, claim_one(store))
    store.request_cancel(cancelled_id)
    assert store.purge(statuses=[Status.COMPLETED]).deleted == (done_id,)
    assert [j.id for j in store.list()] == [cancelled_id]


def test_purge_older_than_uses_updated_at_on_the_store_clock(store: JobStore, clock: ManualClock) -> None:
    """older_than_s deletes jobs last updated at least that long ago, by the store's clock."""
    old, edge, young = submit(store), submit(store), submit(store)
    store.request_cancel(old)
    clock.advance(50)
    store.request_cancel(edge)
    clock.advance(50)
    store.request_cancel(young)
    clock.advance(50)
    result = store.purge(statuses=[Status.CANCELLED], older_than_s=100)
    assert result.deleted == (old, edge)
    assert [j.id for j in store.list()] == [young]


def test_purge_of_queued_jobs_cancels_then_deletes_them(store: JobStore) -> None:
    """A pending or waiting_retry job is purged (cancelled first, so never run)."""
    waiting = submit(store)
    fail(store, claim_one(store))
    pending = submit(store)
    assert store.get(waiting).status is Status.WAITING_RETRY
    assert store.purge(ids={pending, waiting}).deleted == tuple(sorted((pending, waiting)))
    assert store.list() == []


def test_purge_of_a_live_job_requests_its_cancel(store: JobStore) -> None:
    """A live job is not deleted: it gets a cancel request (once) and is reported as such."""
    submit(store)
    job = start_one(store)
    assert store.purge(ids=[job.id]).cancel_requested == (job.id,)
    assert store.get(job.id).cancel_requested is CancelMode.CANCEL
    events_before = len(store.events(job.id))
    again = store.purge(statuses=[Status.RUNNING])
    assert (again.deleted, again.cancel_requested) == ((), (job.id,))
    assert len(store.events(job.id)) == events_before
    reply = store.heartbeat(W, [Beat(job.id, job.attempt)], lease_s=LEASE)
    assert reply[0].cancel_requested is CancelMode.CANCEL


# -- events, get, counts, list -----------------------------------------------------------


def test_events_record_every_transition_in_order(store: JobStore, clock: ManualClock) -> None:
    """The log holds submit, claim, start and completion in order, with who decided and facts."""
    t0 = clock.t
    job_id = submit(store)
    clock.advance(1)
    job = claim_one(store)
    clock.advance(1)
    store.mark_running(job_id, W, job.attempt, 4242, {"pgid": 4242})
    clock.advance(1)
    succeed(store, store.get(job_id))
    events = store.events(job_id)
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, Status.PENDING),
        (Status.PENDING, Status.PREPARING),
        (Status.PREPARING, Status.RUNNING),
        (Status.RUNNING, Status.COMPLETED),
    ]
    assert [e.decided_by for e in events] == [
        DecidedBy.USER,
        DecidedBy.SCHEDULER,
        DecidedBy.SPAWN,
        DecidedBy.EXIT,
    ]
    assert [e.at for e in events] == [t0, t0 + 1, t0 + 2, t0 + 3]
    assert [e.worker for e in events] == [None, W, W, W]
    assert [e.attempt for e in events] == [0, 1, 1, 1]
    assert events[2].facts == {"pid": 4242, "pgid": 4242}
    assert events[3].facts["exit_code"] == 0
    assert all(e.job_id == job_id and e.reason for e in events)


def test_events_of_a_missing_job_are_not_found(store: JobStore) -> None:
    """events of an unknown id raises JobNotFoundError."""
    with pytest.raises(JobNotFoundError):
        store.events(31337)


def test_get_of_a_missing_job_is_not_found(store: JobStore) -> None:
    """get of an unknown id raises JobNotFoundError, which is also a LookupError."""
    with pytest.raises(LookupError):
        store.get(424242)
    with pytest.raises(JobNotFoundError):
        store.get(424242)


def test_counts_of_an_empty_store(store: JobStore, clock: ManualClock) -> None:
    """An empty store counts zero for every status and has no oldest times."""
    counts = store.counts()
    assert counts.by_status == dict.fromkeys(Status, 0)
    assert (counts.oldest_running_started_at, counts.oldest_pending_created_at) == (None, None)
    assert counts.now == clock.t


def test_counts_by_status_and_oldest_times(store: JobStore, clock: ManualClock) -> None:
    """counts gives every status, the oldest pending creation, and the oldest live job's start
    (its claim time while it is still preparing)."""
    t0 = clock.t
    for _ in range(4):
        submit(store)
        clock.advance(10)
    first = claim_one(store)  # t0 + 40, stays preparing for now
    clock.advance(10)
    second = claim_one(store)  # t0 + 50
    clock.advance(10)
    store.mark_running(second.id, W, second.attempt, 1)  # started at t0 + 60
    clock.advance(10)
    store.request_cancel(second.id)  # updated at t0 + 70; started_at stays
    cancelled = submit(store)
    store.request_cancel(cancelled)
    counts = store.counts()
    assert counts.by_status == {
        **dict.fromkeys(Status, 0),
        Status.PENDING: 2,
        Status.PREPARING: 1,
        Status.RUNNING: 1,
        Status.CANCELLED: 1,
    }
    assert counts.oldest_running_started_at == t0 + 40
    assert counts.oldest_pending_created_at == t0 + 20
    assert counts.now == clock.t
    clock.advance(10)
    store.mark_running(first.id, W, first.attempt, 2)  # started at t0 + 80
    assert store.counts().oldest_running_started_at == t0 + 60


def test_list_is_newest_first_with_filters(store: JobStore) -> None:
    """list returns newest first and filters by status, lease owner and limit."""
    a, b, c, d = store.enqueue([spec() for _ in range(4)])
    store.claim(W, 1, lease_s=LEASE)
    store.claim(W2, 1, lease_s=LEASE)
    store.request_cancel(d)
    assert [j.id for j in store.list()] == [d, c, b, a]
    assert [j.id for j in store.list(limit=2)] == [d, c]
    assert [j.id for j in store.list(statuses=[Status.PREPARING])] == [b, a]
    assert [j.id for j in store.list(statuses={Status.PENDING, Status.CANCELLED})] == [d, c]
    assert [j.id for j in store.list(lease_owner=W2)] == [b]
    assert [j.id for j in store.list(statuses=[Status.PREPARING], lease_owner=W, limit=5)] == [a]
    assert store.list(statuses=[]) == []
    assert store.list(lease_owner="nobody") == []


# -- JSON round trip, clock, hints -------------------------------------------------------

NESTED: Any = {
    "text": "héllo wörld · 中文 · 🙂",
    "nested": {"list": [1, 2.5, None, True, False, {"deep": ["x", {"y": []}]}], "empty": {}},
    "escapes": 'quote " backslash \\ newline \n tab \t nul-free',
    "big": 2**53,
}


def test_json_fields_round_trip(store: JobStore) -> None:
    """Payload, progress and result (nested, unicode) and command tuples come back equal."""
    cmd = ("python3", "-c", "print('ünïcode')", "--flag=a b")
    job_id, list_id, none_id = store.enqueue(
        [spec(command=cmd, payload=NESTED), spec(payload=[1, "two", 3.0]), spec(payload=None)]
    )
    got = store.get(job_id)
    assert got.payload == NESTED
    assert got.command == cmd
    assert isinstance(got.command, tuple)
    assert store.get(list_id).payload == [1, "two", 3.0]
    assert store.get(none_id).payload is None
    assert claim_one(store).id == job_id
    job = store.mark_running(job_id, W, 1, 5)
    store.heartbeat(W, [Beat(job_id, 1, progress={"pct": 12.5, "note": "ça va"})], lease_s=LEASE)
    assert store.get(job_id).progress == {"pct": 12.5, "note": "ça va"}
    done = succeed(store, job, result=NESTED, output_tail="… 終わり\n")
    assert store.get(job_id) == done
    assert done.result == NESTED


def test_now_is_the_store_clock(store: JobStore, clock: ManualClock) -> None:
    """now() reads the store's clock."""
    assert store.now() == clock.t
    clock.advance(12.5)
    assert store.now() == clock.t


def test_close_is_idempotent(store: JobStore) -> None:
    """close() may be called more than once."""
    store.close()
    store.close()


def test_reap_fails_pending_jobs_past_their_queue_timeout(store: JobStore, clock: ManualClock) -> None:
    """A pending job that waited past its queue timeout fails as queue_timeout when reaped;
    one still within it, and one without a timeout, stay pending."""
    late, fresh, patient = store.enqueue([spec(queue_timeout_s=60.0), spec(queue_timeout_s=600.0), spec()])
    clock.advance(61)
    reaped = store.reap_stale(0)
    assert [j.id for j in reaped] == [late]
    job = store.get(late)
    assert (job.status, job.error_kind, job.attempt) == (Status.FAILED, ErrorKind.QUEUE_TIMEOUT, 0)
    assert store.get(fresh).status is Status.PENDING
    assert store.get(patient).status is Status.PENDING
    assert transitions(store, late)[-1] == (Status.PENDING, Status.FAILED)


def test_heartbeat_stores_resource_stats(store: JobStore) -> None:
    """Stats sent with a heartbeat are kept with the job; a beat without stats keeps them."""
    submit(store)
    job = start_one(store)
    stats = {"rss_bytes": 123456, "cpu_percent": 12.5, "processes": 3}
    store.heartbeat(W, [Beat(job.id, job.attempt, stats=stats)], lease_s=LEASE)
    store.heartbeat(W, [Beat(job.id, job.attempt)], lease_s=LEASE)
    assert store.get(job.id).stats == stats
