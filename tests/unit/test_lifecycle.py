"""The pure state machine: legal moves, retry policy, fencing, spec validation."""

from __future__ import annotations

import random
import statistics

import pytest

from supervisor import lifecycle as lc
from supervisor.errors import IllegalTransitionError, InvalidJobError, LeaseLostError
from supervisor.lifecycle import CancelMode, ErrorKind, JobSpec, Outcome, Status

NOW = 1_000.0
RNG = random.Random(7)


def pending(**spec_fields: object) -> lc.Job:
    spec = JobSpec(**{"command": ("true",), **spec_fields})  # type: ignore[arg-type]
    job, _ = lc.new_job(spec, job_id=1, now=NOW)
    return job


def running(**spec_fields: object) -> lc.Job:
    job, _ = lc.claim(pending(**spec_fields), worker="w", now=NOW, lease_s=30)
    job, _ = lc.start(job, worker="w", attempt=job.attempt, pid=42, now=NOW)
    return job


ALL_MOVES = [(a, b) for a in Status for b in Status]
LEGAL = {
    ("pending", "preparing"),
    ("pending", "cancelled"),
    ("pending", "failed"),
    ("waiting_retry", "cancelled"),
    ("waiting_retry", "pending"),
    ("preparing", "running"),
    ("failed", "pending"),
    ("cancelled", "pending"),
    *(
        (a, b)
        for a in ("preparing", "running")
        for b in ("completed", "waiting_retry", "failed", "cancelled")
    ),
}


@pytest.mark.parametrize(("src", "dst"), ALL_MOVES)
def test_transition_table_matches_design(src: Status, dst: Status) -> None:
    """Exactly the moves of DESIGN.md's table are legal; every other one raises."""
    job = lc.Job(id=1, status=src, created_at=NOW, updated_at=NOW)
    if (src.value, dst.value) in LEGAL:
        new, event = lc.transition(job, dst, now=NOW + 1, reason="r", decided_by=lc.DecidedBy.USER)
        assert (new.status, new.version, event.from_status, event.to_status) == (dst, 2, src, dst)
    else:
        with pytest.raises(IllegalTransitionError):
            lc.transition(job, dst, now=NOW, reason="r", decided_by=lc.DecidedBy.USER)


def test_claim_takes_lease_and_bumps_attempt() -> None:
    """A claim starts a new attempt (the fencing token) and a lease on the store's clock."""
    job, event = lc.claim(pending(), worker="w1", now=NOW, lease_s=30)
    assert (job.status, job.attempt, job.lease_owner, job.lease_expires_at) == (
        Status.PREPARING,
        1,
        "w1",
        NOW + 30,
    )
    assert event.worker == "w1" and event.attempt == 1


def test_success_completes_with_result() -> None:
    """Exit code 0 completes the job and keeps its result and output tail."""
    job, event = lc.settle(
        running(),
        Outcome(result={"n": 1}, output_tail="ok", exit_code=0),
        worker="w",
        attempt=1,
        now=NOW + 5,
        rng=RNG,
    )
    assert (job.status, job.result, job.output_tail, job.lease_owner) == (
        Status.COMPLETED,
        {"n": 1},
        "ok",
        None,
    )
    assert event.facts["exit_code"] == 0


def test_retryable_failure_waits_with_jittered_backoff_then_fails() -> None:
    """A crash waits for a full-jitter backoff while attempts remain, then fails for good."""
    job = running(max_attempts=2, backoff_s=10)
    crash = Outcome(error_kind=ErrorKind.EXIT_CODE, error="exit code 1", exit_code=1)
    job, event = lc.settle(job, crash, worker="w", attempt=1, now=NOW, rng=RNG)
    assert job.status is Status.WAITING_RETRY and NOW <= job.run_after <= NOW + 10
    assert "retry in" in event.reason
    job, _ = lc.promote(job, now=job.run_after)
    job, _ = lc.claim(job, worker="w", now=job.run_after, lease_s=30)
    job, event = lc.settle(job, crash, worker="w", attempt=2, now=NOW + 20, rng=RNG)
    assert job.status is Status.FAILED and "2 of 2 attempts used" in event.reason


@pytest.mark.parametrize("kind", [ErrorKind.INVALID, ErrorKind.QUEUE_TIMEOUT])
def test_non_retryable_failure_fails_at_once(kind: ErrorKind) -> None:
    """Invalid jobs and queue timeouts are not retried even with attempts left."""
    job, _ = lc.settle(
        running(max_attempts=5), Outcome(error_kind=kind), worker="w", attempt=1, now=NOW, rng=RNG
    )
    assert job.status is Status.FAILED


def test_forgiven_attempt_does_not_use_budget() -> None:
    """An attempt interrupted by shutdown is retried at once without using the budget."""
    job, _ = lc.settle(
        running(max_attempts=1),
        Outcome(error_kind=ErrorKind.KILLED, forgive=True),
        worker="w",
        attempt=1,
        now=NOW,
        rng=RNG,
    )
    assert (job.status, job.run_after, job.attempts_used) == (Status.WAITING_RETRY, NOW, 0)


def test_fencing_refuses_stale_writer() -> None:
    """A write by a worker or attempt that no longer holds the lease raises LeaseLostError."""
    job = running()
    for worker, attempt in (("other", 1), ("w", 2)):
        with pytest.raises(LeaseLostError):
            lc.settle(job, Outcome(), worker=worker, attempt=attempt, now=NOW, rng=RNG)
        with pytest.raises(LeaseLostError):
            lc.heartbeat(job, worker=worker, attempt=attempt, now=NOW, lease_s=30)


def test_heartbeat_extends_lease_without_version_bump() -> None:
    """A heartbeat renews the lease and stores progress but leaves version alone."""
    job = running()
    beat = lc.heartbeat(job, worker="w", attempt=1, now=NOW + 9, lease_s=30, progress={"p": 1})
    assert (beat.lease_expires_at, beat.progress, beat.version) == (NOW + 39, {"p": 1}, job.version)


def test_cancel_pending_is_immediate_and_running_is_flagged() -> None:
    """Cancel ends a pending job at once and only flags a running one; kill is never softened."""
    job, _ = lc.request_cancel(pending(), now=NOW)
    assert (job.status, job.error_kind) == (Status.CANCELLED, ErrorKind.CANCELLED)
    job, event = lc.request_cancel(running(), now=NOW, mode=CancelMode.KILL)
    assert (job.status, job.cancel_requested) == (Status.RUNNING, CancelMode.KILL)
    assert event.from_status == event.to_status == Status.RUNNING
    job, _ = lc.request_cancel(job, now=NOW)
    assert job.cancel_requested is CancelMode.KILL


def test_cancel_of_terminal_job_is_refused() -> None:
    """A completed job cannot be cancelled."""
    done, _ = lc.settle(running(), Outcome(), worker="w", attempt=1, now=NOW, rng=RNG)
    with pytest.raises(IllegalTransitionError, match="already completed"):
        lc.request_cancel(done, now=NOW)


def test_manual_retry_gives_fresh_budget_and_keeps_attempt_growing() -> None:
    """A manual retry restores the budget while the attempt counter (fencing token) grows."""
    failed, _ = lc.settle(
        running(max_attempts=1),
        Outcome(error_kind=ErrorKind.EXIT_CODE),
        worker="w",
        attempt=1,
        now=NOW,
        rng=RNG,
    )
    again, _ = lc.manual_retry(failed, now=NOW + 1)
    claimed, _ = lc.claim(again, worker="w", now=NOW + 2, lease_s=30)
    assert (again.status, claimed.attempt, claimed.attempts_used) == (Status.PENDING, 2, 1)


def test_queue_timeout_fails_a_pending_job_that_waited_too_long() -> None:
    """A pending job past its queue timeout fails as queue_timeout without ever being claimed."""
    job = pending(queue_timeout_s=60)
    assert not lc.is_expired(job, NOW + 60)
    assert lc.is_expired(job, NOW + 61)
    failed, event = lc.expire(job, now=NOW + 61)
    assert (failed.status, failed.error_kind, failed.attempt) == (Status.FAILED, ErrorKind.QUEUE_TIMEOUT, 0)
    assert "queue timeout" in event.reason


def test_reap_settles_expired_lease_as_lost() -> None:
    """The reaper settles a job whose supervisor vanished as lost, retryable."""
    job, event = lc.reap(running(), now=NOW + 100, rng=RNG)
    assert (job.status, job.error_kind, event.decided_by) == (
        Status.WAITING_RETRY,
        ErrorKind.LOST,
        lc.DecidedBy.REAPER,
    )


def test_backoff_is_full_jitter_statistically() -> None:
    """Backoff delays are uniform in [0, min(cap, base*2**(n-1))]: mean within 8% of half."""
    rng = random.Random(1)
    for attempt in (1, 2, 3, 6):
        ceiling = min(100.0, 3.0 * 2 ** (attempt - 1))
        samples = [lc.backoff_delay(attempt, 3.0, 100.0, rng) for _ in range(4000)]
        assert all(0 <= s <= ceiling for s in samples)
        assert abs(statistics.fmean(samples) - ceiling / 2) <= 0.08 * ceiling / 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "exactly one of 'kind' and 'command'"),
        ({"kind": "a", "command": ["x"]}, "exactly one"),
        ({"command": []}, "must not be empty"),
        ({"command": "ls"}, "list of strings"),
        ({"kind": "a", "priority": "high"}, "'priority' must be an integer"),
        ({"kind": "a", "max_attempts": 0}, "between 1 and 1000"),
        ({"kind": "a", "timeout_s": -1}, "positive"),
        ({"kind": "a", "payload": {"x": float("nan")}}, "not plain JSON"),
        ({"kind": "a", "payload": "x" * (1 << 20)}, "the limit is"),
        ({"kind": "a", "bogus": 1}, "unknown job field 'bogus'"),
        ({"kind": "a\nb"}, "printable"),
        ({"kind": "a", "key": "k", "concurrency_key": "k"}, "not both"),
    ],
)
def test_bad_specs_are_refused_with_the_field(data: dict[str, object], message: str) -> None:
    """Malformed specs raise InvalidJobError naming what is wrong."""
    with pytest.raises(InvalidJobError, match=message):
        JobSpec.from_dict(data)


def test_deep_payload_is_refused() -> None:
    """A payload nested deeper than 64 levels is refused, not a RecursionError."""
    deep: object = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(InvalidJobError, match="deeper"):
        JobSpec(kind="a", payload=deep)


def test_spec_from_dict_accepts_key_alias() -> None:
    """'key' (the CLI's --key) is the concurrency key."""
    spec = JobSpec.from_dict({"kind": "a", "key": "repo", "timeout_s": 5})
    assert (spec.concurrency_key, spec.timeout_s) == ("repo", 5.0)
