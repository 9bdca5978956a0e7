"""RemoteStore over a scripted transport: retries that replay a write whose answer was lost
must not turn into false conflicts or double work (no server, no network)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bridge.stores.policy import RetryPolicy, ServerError
from bridge.stores.remote import RemoteStore
from supervisor.errors import IllegalTransitionError, StoreUnavailableError, UpdateConflictError
from supervisor.lifecycle import Job, JobSpec, Outcome, Status
from supervisor.store import Beat

REQ = httpx.Request("POST", "https://x.supabase.co/rest/v1/rpc/f")
LOST = httpx.ReadTimeout("timed out", request=REQ)  # the server committed; the answer is lost


def row(**changes: Any) -> dict[str, Any]:
    """A jobs row as the SQL functions return it (JSON: ISO times, enum values)."""
    job = Job(id=1, status=Status.PENDING, created_at=1_700_000_000.0, updated_at=1_700_000_000.0, kind="k")
    data = {**asdict(job), "run_after": 1_700_000_000.0, **changes}
    for name in ("created_at", "updated_at", "run_after"):
        data[name] = datetime.fromtimestamp(data[name], UTC).isoformat()
    return {k: (v.value if hasattr(v, "value") else v) for k, v in data.items()}


class Scripted(RemoteStore):
    """Each call of ``fn`` takes the next scripted answer (rows, or an exception to raise)."""

    def __init__(self, **script: list[Any]) -> None:
        super().__init__(name="Scripted store", retry=RetryPolicy(sleep=lambda s: None))
        self.script = script
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _send(self, fn: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.calls.append((fn, params))
        answer = self.script[fn].pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    def _secrets(self) -> list[str]:
        return ["hunter2"]

    def fns(self) -> list[str]:
        return [fn for fn, _ in self.calls]


def conflict() -> ServerError:
    return ServerError("ASC01", "job 1 is at version 2, not 1", status=400)


def test_update_whose_first_answer_was_lost_is_success() -> None:
    """The retry of an applied update conflicts with itself; the store re-reads the row, sees
    its own change at version + 1, and returns it."""
    store = Scripted(jobs_update=[LOST, conflict()], jobs_get=[[row(version=2, priority=7)]])
    job = store.update(1, 1, {"priority": 7})
    assert (job.version, job.priority) == (2, 7)
    assert store.fns() == ["jobs_update", "jobs_update", "jobs_get"]


def test_update_conflict_on_the_first_try_is_a_conflict() -> None:
    """A conflict without a retry before it is genuine: UpdateConflictError, no re-read."""
    store = Scripted(jobs_update=[conflict()])
    with pytest.raises(UpdateConflictError, match="version 2, not 1"):
        store.update(1, 1, {"priority": 7})
    assert store.fns() == ["jobs_update"]


def test_update_conflict_with_someone_elses_change_is_a_conflict() -> None:
    """After a retry, a row at version + 1 that does not hold our change is a real conflict."""
    store = Scripted(jobs_update=[LOST, conflict()], jobs_get=[[row(version=2, priority=3)]])
    with pytest.raises(UpdateConflictError):
        store.update(1, 1, {"priority": 7})


@pytest.mark.parametrize(
    ("fn", "call", "now"),
    [
        ("jobs_request_cancel", lambda s: s.request_cancel(1), Status.CANCELLED),
        ("jobs_retry", lambda s: s.retry(1), Status.PENDING),
    ],
)
def test_cancel_and_retry_replayed_after_a_lost_answer_succeed(
    fn: str, call: Callable[[RemoteStore], Job], now: Status
) -> None:
    """A cancel (or manual retry) whose repeat is refused as illegal because the first call
    did apply returns the job instead of an error."""
    refused = ServerError("AST01", "job 1 is already cancelled; nothing to cancel", status=400)
    store = Scripted(**{fn: [LOST, refused], "jobs_get": [[row(status=now.value)]]})
    assert call(store).status is now


def test_illegal_transition_on_the_first_try_is_raised() -> None:
    """Without a retry, an illegal transition is the caller's mistake and is raised."""
    store = Scripted(jobs_request_cancel=[ServerError("AST01", "job 1 is already completed", status=400)])
    with pytest.raises(IllegalTransitionError, match="already completed"):
        store.request_cancel(1)


def test_claim_and_enqueue_retries_reuse_their_ids() -> None:
    """A retried claim sends the same claim id (the server returns the jobs it already took),
    and a retried enqueue the same request id; a new call gets a new id."""
    store = Scripted(jobs_claim=[LOST, [], []], jobs_enqueue=[LOST, [{"job_ids": [5], "created": [False]}]])
    store.claim("w", 2, lease_s=30)
    store.claim("w", 2, lease_s=30)
    ids = [p["p_claim_id"] for fn, p in store.calls if fn == "jobs_claim"]
    assert ids[0] == ids[1] != ids[2]
    assert store.enqueue([JobSpec(kind="k")]) == [5]
    requests = [p["p_request_id"] for fn, p in store.calls if fn == "jobs_enqueue"]
    assert requests[0] == requests[1]


def test_heartbeat_sends_every_beat_in_one_call() -> None:
    """N beats are one call with aligned arrays; progress and stats are cleaned for Postgres."""
    replies = [{"job_id": i, "cancel_requested": None, "lease_lost": False} for i in (1, 2, 3)]
    store = Scripted(jobs_heartbeat=[replies])
    beats = [Beat(1, 1, {"p": "a\x00"}), Beat(2, 3), Beat(3, 1, stats={"rss_bytes": 1})]
    assert [r.job_id for r in store.heartbeat("w", beats, lease_s=30)] == [1, 2, 3]
    [(_, params)] = store.calls
    assert (params["p_ids"], params["p_attempts"]) == ([1, 2, 3], [1, 3, 1])
    assert params["p_progress"] == [{"p": "a\ufffd"}, None, None]
    assert params["p_stats"] == [None, None, {"rss_bytes": 1}]


def test_exhausted_retries_are_store_unavailable_without_secrets() -> None:
    """Six failed attempts become one StoreUnavailableError line; a cause whose text holds a
    secret is not chained (the CLI prints the chain)."""
    leaky = httpx.ConnectError("could not connect to postgres://u:hunter2@db", request=REQ)
    store = Scripted(jobs_finish=[leaky] * 6)
    with pytest.raises(StoreUnavailableError) as info:
        store.finish(1, "w", 1, Outcome())
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None
    assert len(store.calls) == 6
    assert "hunter2" not in repr(store)


def test_a_claim_that_failed_unavailable_is_replayed_by_the_next_claim() -> None:
    """When every try of a claim fails (its answer may have been lost after the commit), the
    worker's next claim sends the same claim id, so the server hands back what it took; after
    an answered claim, ids are fresh again. Other workers are not affected."""
    store = Scripted(jobs_claim=[LOST, LOST, LOST, [], [], []])
    with pytest.raises(StoreUnavailableError):
        store.claim("w", 2, lease_s=30)
    store.claim("other", 2, lease_s=30)
    store.claim("w", 2, lease_s=30)
    store.claim("w", 2, lease_s=30)
    ids = [(p["p_worker"], p["p_claim_id"]) for _, p in store.calls]
    assert ids[0] == ids[1] == ids[2] == ids[4]
    assert ids[3][1] != ids[0][1]
    assert ids[5][1] != ids[0][1]
