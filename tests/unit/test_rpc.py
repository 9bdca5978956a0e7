"""The pure JSON-RPC layer: envelopes, error codes, batches, params, every method, the models."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.jsonrpc.backend import Bridge
from bridge.jsonrpc.dispatch import Dispatcher, encode
from bridge.jsonrpc.protocol import (
    METHODS,
    NOTIFICATIONS,
    EventModel,
    GetResult,
    HealthModel,
    JobChangedParams,
    JobModel,
    LogsResult,
    MirrorModel,
    PruneWorkspacesResult,
    SubmitParams,
    schema_document,
)
from bridge.jsonrpc.stdio import read_lines, serve
from bridge.service import JobService, utf8_bounds
from bridge.views import event_json, health_json, job_json
from supervisor.errors import DataDirLockedError, StoreUnavailableError, UpdateConflictError
from supervisor.health import HealthReport, check_health
from supervisor.keys import parse_repo
from supervisor.lifecycle import CancelMode, ErrorKind, Job, JobSpec, Outcome, Status
from supervisor.runner import JobChange
from supervisor.settings import Settings
from supervisor.testing import ManualClock, MemoryStore
from supervisor.workspaces import YOUNG_TREE_S, Workspaces, WorkspaceSettings
from tests.gitserver import age_tree, make_repo


class FailingStore(MemoryStore):
    """A MemoryStore whose ``enqueue`` raises ``fail`` while it is set."""

    fail: Exception | None = None

    def enqueue(self, specs: Any) -> list[int]:
        if self.fail is not None:
            raise self.fail
        return super().enqueue(specs)


class FakeBackend:
    """A ``dispatch.Backend`` that records what the dispatcher asked of it, beside a real
    ``JobService`` on a MemoryStore (``service``; ``fail`` makes its store's enqueue raise)."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = FailingStore(clock=ManualClock(time.time()))  # still: two health calls agree
        self.settings = Settings(data_dir=tmp_path)
        self.service = JobService(self.settings, self.store)
        self.mode: Any = "no_run"
        self.worker_id = "w"
        self.locked = False
        self.changes: list[tuple[int, Status | None, Status, str]] = []
        self.stopped: tuple[bool, bool | None] | None = None
        self.events: frozenset[str] = frozenset()

    @property
    def fail(self) -> Exception | None:
        return self.store.fail

    @fail.setter
    def fail(self, exc: Exception | None) -> None:
        self.store.fail = exc

    def check_writable(self) -> None:
        if self.locked:
            raise DataDirLockedError("another supervisor is running on /x (pid 1)")

    def changed(self, job: Job, before: Status | None, reason: str) -> None:
        self.changes.append((job.id, before, job.status, reason))

    def health(self) -> HealthReport:
        """The report the service gives (for comparing with the `health` answer)."""
        return self.service.health()

    def shutdown(self, *, drain: bool, leave_agents: bool | None) -> bool:
        self.stopped = (drain, leave_agents)
        return bool(leave_agents)

    def subscribe(self, events: frozenset[str]) -> None:
        self.events |= events

    def unsubscribe(self, events: frozenset[str]) -> frozenset[str]:
        self.events -= events
        return frozenset(self.events)


@pytest.fixture
def backend(tmp_path: Path) -> FakeBackend:
    return FakeBackend(tmp_path)


@pytest.fixture
def rpc(backend: FakeBackend) -> Dispatcher:
    return Dispatcher(backend.service, backend)


class Waker:
    """Stands for a supervisor running in the process: counts its wake-ups."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def call(rpc: Dispatcher, method: str, params: Any = None, rid: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        message["params"] = params
    out = rpc.handle(json.dumps(message).encode())
    assert out is not None and out.endswith(b"\n") and out.count(b"\n") == 1
    return json.loads(out)


def result(rpc: Dispatcher, method: str, params: Any = None) -> Any:
    reply = call(rpc, method, params)
    assert "error" not in reply, reply
    return reply["result"]


def error(rpc: Dispatcher, method: str, params: Any = None) -> dict[str, Any]:
    reply = call(rpc, method, params)
    assert "result" not in reply, reply
    return reply["error"]


def raw(rpc: Dispatcher, line: bytes) -> Any:
    out = rpc.handle(line)
    return None if out is None else json.loads(out)


def running_job(store: MemoryStore, **spec: Any) -> Job:
    store.enqueue([JobSpec(command=("sleep", "9"), **spec)])
    [job] = store.claim("w", 1, lease_s=30)
    return store.mark_running(job.id, "w", job.attempt, pid=4242)


def failed_job(store: MemoryStore) -> Job:
    job = running_job(store, max_attempts=1)
    return store.finish(job.id, "w", job.attempt, Outcome(error_kind=ErrorKind.EXIT_CODE, exit_code=3))


# -- envelope and error codes -------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [b"{", b"\xff\xfe{}", b'{"a": NaN}', b'{"a": 1e999}', b"9" * 5000, b"[" * 100_000 + b"]" * 100_000],
    ids=["truncated", "not-utf8", "nan", "infinite", "huge-int", "deep"],
)
def test_unparsable_lines_answer_parse_error_with_null_id(rpc: Dispatcher, line: bytes) -> None:
    """Text that is not UTF-8 JSON (or not representable back) gets -32700 and id null."""
    reply = raw(rpc, line)
    assert reply["error"]["code"] == -32700 and reply["id"] is None


@pytest.mark.parametrize(
    ("message", "rid"),
    [
        (1, None),
        ("health", None),
        (None, None),
        ({"jsonrpc": "1.0", "id": 7, "method": "health"}, 7),
        ({"id": 7, "method": "health"}, 7),
        ({"jsonrpc": "2.0", "id": 7}, 7),
        ({"jsonrpc": "2.0", "id": 7, "method": 5}, 7),
        ({"jsonrpc": "2.0", "id": 7, "method": "health", "params": "x"}, 7),
        ({"jsonrpc": "2.0", "id": True, "method": "health"}, None),
        ({"jsonrpc": "2.0", "id": {}, "method": "health"}, None),
        ({"jsonrpc": "2.0", "method": 1, "params": "bar"}, None),
    ],
)
def test_malformed_requests_answer_invalid_request(rpc: Dispatcher, message: Any, rid: Any) -> None:
    """Not a JSON-RPC 2.0 request object → -32600, echoing the id only when it is valid."""
    reply = raw(rpc, json.dumps(message).encode())
    assert reply["error"]["code"] == -32600 and reply["id"] == rid


def test_unknown_method_answers_method_not_found(rpc: Dispatcher) -> None:
    """A method that does not exist → -32601 naming it."""
    err = error(rpc, "frobnicate")
    assert err["code"] == -32601 and err["data"]["method"] == "frobnicate"


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("get", {}, "id"),
        ("get", {"id": "5"}, "id"),
        ("get", {"id": 0}, "id"),
        ("get", {"id": 2**64}, "id"),
        ("list", {"limit": 5000}, "limit"),
        ("list", {"status": "nope"}, "status.0"),
        ("submit", {"command": ["a", 1]}, "command.1"),
        ("submit", {"command": ["a"], "priority": 1.5}, "priority"),
        ("submit", {"command": ["a"], "bogus": 1}, "bogus"),
        ("submit", {"command": ["a"], "timeout_s": "9"}, "timeout_s"),
        ("logs", {"id": 1, "limit": 1}, "limit"),
        ("health", {"verbose": True}, "verbose"),
        ("shutdown", {"drain": "yes"}, "drain"),
        ("subscribe", {"events": ["job.exploded"]}, "events.0"),
        ("purge", {"ids": []}, "ids"),
    ],
)
def test_bad_params_answer_invalid_params_naming_the_field(
    rpc: Dispatcher, method: str, params: dict[str, Any], field: str
) -> None:
    """Wrong params → -32602 whose message and data name the field and the reason."""
    err = error(rpc, method, params)
    assert err["code"] == -32602
    assert err["data"]["field"] == field and err["data"]["reason"]
    assert f"{field}:" in err["message"]


def test_params_by_position_are_refused(rpc: Dispatcher) -> None:
    """An array of params is valid JSON-RPC but not supported here → -32602."""
    assert error(rpc, "get", [1])["code"] == -32602


def test_not_found_illegal_transition_and_invalid_job_codes(rpc: Dispatcher, backend: FakeBackend) -> None:
    """Domain errors map to their stable codes: -32001, -32002, -32005."""
    assert error(rpc, "get", {"id": 99})["code"] == -32001
    job_id = backend.store.enqueue([JobSpec(command=("true",))])[0]
    backend.store.force(job_id, status=Status.COMPLETED)
    assert error(rpc, "cancel", {"id": job_id})["code"] == -32002
    both = error(rpc, "submit", {"kind": "k", "command": ["true"]})
    assert both["code"] == -32005 and "exactly one" in both["message"]
    assert error(rpc, "submit", {"kind": "nope"})["code"] == -32005


def test_store_errors_say_whether_a_retry_may_work(rpc: Dispatcher, backend: FakeBackend) -> None:
    """StoreUnavailableError → -32003 with retryable true; a conflict → -32004."""
    backend.fail = StoreUnavailableError("store down")
    err = error(rpc, "submit", {"command": ["true"]})
    assert (err["code"], err["data"]["retryable"], err["message"]) == (-32003, True, "store down")
    backend.fail = UpdateConflictError("stale version")
    assert error(rpc, "submit", {"command": ["true"]})["code"] == -32004


def test_locked_data_dir_refuses_changes_but_answers_reads(rpc: Dispatcher, backend: FakeBackend) -> None:
    """While another supervisor holds the data dir: writes → -32006, reads still work."""
    backend.locked = True
    for method, params in [("submit", {"command": ["true"]}), ("cancel", {"id": 1}), ("reconcile", None)]:
        err = error(rpc, method, params)
        assert err["code"] == -32006 and "another supervisor" in err["message"]
    assert result(rpc, "list") == []
    assert result(rpc, "health")["pending"] == 0


def test_unexpected_exception_is_an_internal_error_not_a_crash(rpc: Dispatcher, backend: FakeBackend) -> None:
    """A bug in a method → -32603, and the next request is answered normally."""
    backend.fail = RuntimeError("boom")
    err = error(rpc, "submit", {"command": ["true"]})
    assert err["code"] == -32603 and "boom" in err["message"]
    assert result(rpc, "list") == []


def test_ids_are_echoed_as_given(rpc: Dispatcher) -> None:
    """String, number and null ids come back unchanged."""
    for rid in ["abc", 7, 2.5, None]:
        assert call(rpc, "list", rid=rid)["id"] == rid


# -- batches and notifications ------------------------------------------------------------
def test_batch_answers_requests_in_order_and_skips_notifications(rpc: Dispatcher) -> None:
    """A batch → an array of responses for the requests only, in order."""
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "submit", "params": {"command": ["true"]}},
        {"jsonrpc": "2.0", "method": "submit", "params": {"command": ["true"]}},
        {"jsonrpc": "2.0", "id": "b", "method": "nope"},
        1,
        {"jsonrpc": "2.0", "id": "c", "method": "list"},
    ]
    replies = raw(rpc, json.dumps(batch).encode())
    assert [r["id"] for r in replies] == ["a", "b", None, "c"]
    assert replies[0]["result"] == {"id": 1}
    assert [r["error"]["code"] for r in replies[1:3]] == [-32601, -32600]
    assert [j["id"] for j in replies[3]["result"]] == [2, 1]  # the notification ran too


def test_batch_of_notifications_gets_no_answer(rpc: Dispatcher, backend: FakeBackend) -> None:
    """Only notifications (even failing ones) → nothing is written back."""
    batch = [{"jsonrpc": "2.0", "method": "submit", "params": {"command": ["true"]}}] * 2
    batch.append({"jsonrpc": "2.0", "method": "get", "params": {"id": 99}})
    assert rpc.handle(json.dumps(batch).encode()) is None
    assert len(backend.store.list()) == 2


def test_empty_and_oversized_batches_are_invalid_requests(rpc: Dispatcher) -> None:
    """[] → one -32600 object (not an array); more than 1,000 requests → one -32600."""
    assert raw(rpc, b"[]")["error"]["code"] == -32600
    big = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "health"} for i in range(1001)])
    assert raw(rpc, big.encode())["error"]["code"] == -32600


# -- methods ------------------------------------------------------------------------------
def test_submit_takes_a_batch_line_spec(rpc: Dispatcher, backend: FakeBackend) -> None:
    """submit's params are a `submit --batch` line: fields, defaults, `key` alias."""
    spec = {"command": ["echo", "hi"], "payload": {"x": [1]}, "priority": 3, "key": "repo", "timeout_s": 5}
    job_id = result(rpc, "submit", spec)["id"]
    job = backend.store.get(job_id)
    assert (job.command, job.payload, job.priority, job.concurrency_key, job.timeout_s) == (
        ("echo", "hi"),
        {"x": [1]},
        3,
        "repo",
        5.0,
    )
    assert job.max_attempts == 3  # JobSpec's default: omitted fields are not sent as null


def test_get_is_show_json(rpc: Dispatcher, backend: FakeBackend) -> None:
    """get answers exactly job_json + events, the object of `show --json`."""
    job = running_job(backend.store)
    expected = job_json(backend.store.get(job.id))
    expected["events"] = [event_json(e) for e in backend.store.events(job.id)]
    assert result(rpc, "get", {"id": job.id}) == json.loads(json.dumps(expected))


def test_list_filters_limits_and_pages_newest_first(rpc: Dispatcher, backend: FakeBackend) -> None:
    """list: status (one or several), limit and offset, newest first, as list --json."""
    ids = backend.store.enqueue([JobSpec(command=("true",)) for _ in range(5)])
    backend.store.request_cancel(ids[1])
    assert [j["id"] for j in result(rpc, "list", {"limit": 2})] == [5, 4]
    assert [j["id"] for j in result(rpc, "list", {"limit": 2, "offset": 3})] == [2, 1]
    assert [j["id"] for j in result(rpc, "list", {"status": "cancelled"})] == [2]
    assert [j["id"] for j in result(rpc, "list", {"status": ["cancelled", "pending"], "offset": 4})] == [1]
    assert result(rpc, "list", {"limit": 1})[0] == job_json(backend.store.get(5))


def test_cancel_kill_and_retry_report_the_change(rpc: Dispatcher, backend: FakeBackend) -> None:
    """cancel of a pending job cancels it (and notifies); kill flags a running one; retry
    makes a failed job pending."""
    [pending] = backend.store.enqueue([JobSpec(command=("true",))])
    assert result(rpc, "cancel", {"id": pending})["status"] == "cancelled"
    running = running_job(backend.store)
    killed = result(rpc, "kill", {"id": running.id})
    assert (killed["status"], killed["cancel_requested"]) == ("running", CancelMode.KILL.value)
    failed = failed_job(backend.store)
    assert failed.status is Status.FAILED
    assert result(rpc, "retry", {"id": failed.id})["status"] == "pending"
    assert [(c[1], c[2]) for c in backend.changes] == [
        (Status.PENDING, Status.CANCELLED),
        (Status.RUNNING, Status.RUNNING),
        (Status.FAILED, Status.PENDING),
    ]


def test_purge_follows_the_cli_rules(rpc: Dispatcher, backend: FakeBackend) -> None:
    """purge needs ids, status or older_than_s, refuses ids with status, and with only
    older_than_s deletes finished jobs alone."""
    ids = backend.store.enqueue([JobSpec(command=("true",)) for _ in range(3)])
    backend.store.request_cancel(ids[0])
    assert error(rpc, "purge", {})["data"]["field"] == "ids"
    assert error(rpc, "purge", {"ids": [1], "status": "failed"})["data"]["field"] == "status"
    assert result(rpc, "purge", {"older_than_s": 0}) == {"deleted": [ids[0]], "cancel_requested": []}
    assert result(rpc, "purge", {"ids": [ids[1]]})["deleted"] == [ids[1]]
    assert [j.id for j in backend.store.list()] == [ids[2]]


def test_health_is_health_json(rpc: Dispatcher, backend: FakeBackend) -> None:
    """health answers health_json of the backend's report, the object of `health --json`."""
    backend.store.enqueue([JobSpec(command=("true",))])
    answer, report = result(rpc, "health"), json.loads(json.dumps(health_json(backend.health())))
    for read in (answer, report):  # measured at each read: other writers on the disk move it
        assert isinstance(read["disk"].pop("free_bytes"), int)
    assert answer == report


def _log(backend: FakeBackend, job: Job, data: bytes) -> None:
    path = Path(backend.settings.data_dir) / "logs" / f"{job.id}-{job.attempt}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_logs_tail_and_paging_cut_on_character_boundaries(rpc: Dispatcher, backend: FakeBackend) -> None:
    """logs: the tail by default, pages by offset, never half a UTF-8 character, and eof."""
    job = running_job(backend.store)
    _log(backend, job, "é".encode() * 10 + "😀".encode()[:2])  # ends inside a 4-byte character
    tail = result(rpc, "logs", {"id": job.id, "limit": 17})  # starts at byte 5, inside an é
    LogsResult.model_validate(tail)
    assert (tail["data"], tail["offset"], tail["next_offset"], tail["eof"]) == ("é" * 7, 6, 20, False)
    page = result(rpc, "logs", {"id": job.id, "offset": 0, "limit": 17})  # ends inside the 9th é
    assert (page["data"], page["next_offset"], page["eof"]) == ("é" * 8, 16, False)
    page = result(rpc, "logs", {"id": job.id, "offset": page["next_offset"], "limit": 16})
    assert (page["data"], page["next_offset"], page["eof"]) == ("éé", 20, False)
    backend.store.force(job.id, status=Status.FAILED)  # finished: the half character is final
    done = result(rpc, "logs", {"id": job.id, "offset": 20})
    assert (done["data"], done["next_offset"], done["eof"], done["size"]) == ("\ufffd", 22, True, 22)


def test_logs_of_a_job_without_a_log_is_not_found(rpc: Dispatcher, backend: FakeBackend) -> None:
    """A job that never ran, or whose log file is missing → -32001."""
    [pending] = backend.store.enqueue([JobSpec(command=("true",))])
    assert "not run yet" in error(rpc, "logs", {"id": pending})["message"]
    job = running_job(backend.store)
    assert error(rpc, "logs", {"id": job.id})["code"] == -32001


def test_shutdown_subscribe_and_reconcile_reach_the_backend(rpc: Dispatcher, backend: FakeBackend) -> None:
    """shutdown records the stop request; subscribe adds events and reports the mode."""
    assert result(rpc, "subscribe", {"events": ["job.changed"]}) == {
        "events": ["job.changed"],
        "mode": "no_run",
        "worker_id": "w",
    }
    assert backend.events == {"job.changed"}
    assert result(rpc, "reconcile") == {
        "ran": True,
        "message": "reconciled 0 agents; outbox depth 0",
        "decisions": [],
    }
    assert result(rpc, "shutdown", {"leave_agents": True}) == {"stopping": True, "leave_agents": True}
    assert backend.stopped == (True, True)


def test_reconcile_does_nothing_while_a_supervisor_runs_here(rpc: Dispatcher, backend: FakeBackend) -> None:
    """With a supervisor running in the process, reconcile answers ran false and why."""
    backend.service.supervisor = Waker()
    answer = result(rpc, "reconcile")
    assert (answer["ran"], answer["decisions"]) == (False, [])
    assert answer["message"].startswith("this bridge's supervisor reconciled when it started")


def test_workspaces_and_prune_are_the_cli_json(rpc: Dispatcher, backend: FakeBackend, tmp_path: Path) -> None:
    """``workspaces`` lists the mirror and the attempts holding worktrees; ``workspaces.prune``
    removes a settled attempt's worktree, keeps a live one's, and is refused while locked."""
    assert result(rpc, "workspaces") == []
    repo = make_repo(tmp_path / "src" / "app")
    live = running_job(backend.store)
    spaces = Workspaces(backend.settings.data_dir / "workspaces", settings=WorkspaceSettings())
    kept = spaces.prepare(parse_repo(str(repo)), None, job_id=live.id, attempt=live.attempt)
    gone = spaces.prepare(parse_repo(str(repo)), None, job_id=live.id + 100, attempt=1)
    [mirror] = result(rpc, "workspaces")
    MirrorModel.model_validate(mirror)
    assert mirror["repository"] == f"file://{repo}"
    assert sorted(mirror["jobs"], key=lambda h: h["job_id"]) == [
        {"job_id": live.id, "attempt": live.attempt},
        {"job_id": live.id + 100, "attempt": 1},
    ]
    for workspace in (kept, gone):
        age_tree(workspace.path.parent, YOUNG_TREE_S + 60)
    backend.locked = True
    assert error(rpc, "workspaces.prune")["code"] == -32006 and gone.path.exists()
    backend.locked = False
    report = result(rpc, "workspaces.prune")
    PruneWorkspacesResult.model_validate(report)
    assert (report["trees_removed"], report["trees_kept"]) == (
        [[live.id + 100, 1]],
        [[live.id, live.attempt]],
    )
    assert kept.path.is_dir() and not gone.path.exists()
    assert [h["job_id"] for h in result(rpc, "workspaces")[0]["jobs"]] == [live.id]


def test_unsubscribe_removes_events_and_answers_what_is_left(rpc: Dispatcher, backend: FakeBackend) -> None:
    """unsubscribe takes events out of the set (default: all) and answers the rest."""
    result(rpc, "subscribe", {})
    left = result(rpc, "unsubscribe", {"events": ["health.alert"]})["events"]
    assert left == ["bridge.mode", "job.changed"]
    assert backend.events == {"bridge.mode", "job.changed"}
    assert result(rpc, "unsubscribe", {})["events"] == []
    assert backend.events == frozenset()
    assert error(rpc, "unsubscribe", {"events": []})["code"] == -32602


# -- models and schema --------------------------------------------------------------------
def test_result_models_name_the_same_fields_as_the_views(backend: FakeBackend) -> None:
    """JobModel, EventModel, HealthModel describe exactly what views.py produces."""
    job = running_job(backend.store)
    data = job_json(job)
    assert set(JobModel.model_fields) == set(data)
    JobModel.model_validate(data)
    data["events"] = [event_json(e) for e in backend.store.events(job.id)]
    GetResult.model_validate(data)
    assert {f.alias or name for name, f in EventModel.model_fields.items()} == set(data["events"][0])
    report = check_health(backend.store, backend.settings, worker_id="w")
    assert HealthModel.model_validate(health_json(report)).root == report


def test_submit_params_are_the_job_spec_fields_with_its_defaults() -> None:
    """SubmitParams has JobSpec's fields (plus the aliases from_dict takes) and its defaults."""
    spec_fields = {f.name: f for f in fields(JobSpec)}
    assert set(SubmitParams.model_fields) == set(spec_fields) | {"key", "repo", "owner"}
    for name in ("priority", "max_attempts", "backoff_s"):
        assert SubmitParams.model_fields[name].default == spec_fields[name].default


def test_schema_document_covers_every_method_notification_and_code() -> None:
    """bridge --schema: every method's params/result and every notification resolve to a $def."""
    doc = schema_document()
    json.dumps(doc)
    assert set(doc["methods"]) == set(METHODS) and set(doc["notifications"]) == set(NOTIFICATIONS)
    refs = [m[k]["$ref"] for m in doc["methods"].values() for k in ("params", "result")]
    refs += [n["params"]["$ref"] for n in doc["notifications"].values()]
    assert all(ref.removeprefix("#/$defs/") in doc["$defs"] for ref in refs)
    assert {"-32700", "-32600", "-32601", "-32602", "-32001", "-32006"} <= set(doc["errors"])
    assert JobChangedParams.model_json_schema(by_alias=True)["required"][1] == "from"


def test_encode_never_emits_nan_bad_utf8_or_a_raw_newline() -> None:
    """NaN becomes null, a lone surrogate an escape, and newlines stay escaped."""
    line = encode({"result": float("nan"), "text": "a\nb\u2028", "bad": "\ud800"})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert json.loads(line) == {"result": None, "text": "a\nb\u2028", "bad": "\ud800"}


@pytest.mark.parametrize(
    ("data", "skip_head", "hold_tail", "bounds"),
    [
        (b"abc", True, True, (0, 3)),
        ("é".encode()[1:] + b"x", True, False, (1, 2)),
        (b"x" + "😀".encode()[:3], False, True, (0, 1)),
        (b"x" + "😀".encode()[:3], False, False, (0, 4)),
        ("😀".encode(), True, True, (0, 4)),
        (b"\x80\x80\x80\x80", True, True, (3, 4)),
    ],
)
def test_utf8_bounds(data: bytes, skip_head: bool, hold_tail: bool, bounds: tuple[int, int]) -> None:
    """A partial character is cut from the head and held back from the tail, at most 3 bytes."""
    assert utf8_bounds(data, skip_head=skip_head, hold_tail=hold_tail) == bounds


# -- the server's backend, without a supervisor ---------------------------------------------
def test_backend_health_is_a_snapshot_until_a_change(tmp_path: Path) -> None:
    """The bridge's service: two health calls share one report; a submit refreshes it."""
    b = Bridge(Settings(data_dir=tmp_path), ListSink(), run=False, store=MemoryStore())
    first = b.service.health()
    assert b.service.health() is first
    b.service.submit([JobSpec(command=("true",))])
    assert b.service.health().pending == 1


def test_backend_sends_only_subscribed_notifications(tmp_path: Path) -> None:
    """job.changed reaches the host only after subscribe, as one notification line."""
    sink = ListSink()
    b = Bridge(Settings(data_dir=tmp_path), sink, run=False, store=MemoryStore())
    change = JobChange(7, Status.RUNNING, Status.COMPLETED, "completed", 1, {"step": 3})
    b._on_change(change)
    assert sink.lines == []
    b.subscribe(frozenset({"job.changed"}))
    b._on_change(change)
    [line] = sink.lines
    assert json.loads(line) == {
        "jsonrpc": "2.0",
        "method": "job.changed",
        "params": {
            "id": 7,
            "from": "running",
            "to": "completed",
            "reason": "completed",
            "attempt": 1,
            "progress": {"step": 3},
        },
    }
    assert b.unsubscribe(frozenset({"job.changed"})) == frozenset()
    b._on_change(change)
    assert len(sink.lines) == 1, "a notification was sent after unsubscribe"


# -- the line reader ----------------------------------------------------------------------
def chunks(*parts: bytes, size: int = 7) -> Any:
    data = b"".join(parts)
    pieces = iter([data[i : i + size] for i in range(0, len(data), size)])
    return lambda n: next(pieces, b"")


def test_read_lines_splits_across_chunks_and_strips_crlf() -> None:
    """Lines split at any chunk boundary come out whole; CRLF and a last unterminated line too."""
    lines = list(read_lines(chunks(b'{"a":1}\r\n', b"\n", b"second line\n", b"tail"), cap=64, chunk=7))
    assert lines == [b'{"a":1}', b"", b"second line", b"tail"]


def test_read_lines_drops_an_overlong_line_without_holding_it() -> None:
    """A 10 MiB line → one None while memory stays near the cap; the next line is intact."""
    total = 10 << 20
    sent = 0

    def read(n: int) -> bytes:
        nonlocal sent
        if sent < total:
            sent += n
            return b"a" * n
        if sent == total:
            sent += 1
            return b"\nnext\n"
        return b""

    tracemalloc.start()
    try:
        lines = list(read_lines(read, cap=1 << 20, chunk=1 << 16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lines == [None, b"next"]
    assert peak < 3 << 20


def test_read_lines_cap_is_inclusive() -> None:
    """A line of exactly the cap is kept; one byte more is dropped."""
    assert list(read_lines(chunks(b"x" * 10 + b"\n" + b"y" * 11 + b"\n"), cap=10)) == [b"x" * 10, None]


# -- fuzzing ------------------------------------------------------------------------------
class ListSink:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def put(self, line: bytes, *, droppable: bool = False) -> None:
        self.lines.append(line)

    def wait_below(self, count: int = 0) -> None:
        pass


def assert_responses(out: bytes) -> Iterator[dict[str, Any]]:
    body = json.loads(out)
    for reply in body if isinstance(body, list) else [body]:
        assert reply["jsonrpc"] == "2.0" and "id" in reply
        assert ("result" in reply) != ("error" in reply)
        yield reply


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | JSON,
        "id": JSON,
        "method": st.sampled_from(sorted(METHODS)) | JSON,
        "params": JSON | st.dictionaries(st.sampled_from(["id", "limit", "status", "command", "x"]), JSON),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.binary(max_size=200))
def test_random_bytes_always_get_a_well_formed_answer(rpc: Dispatcher, line: bytes) -> None:
    """Any bytes → a JSON-RPC response line (or nothing), never an exception."""
    out = rpc.handle(line)
    if out is not None:
        list(assert_responses(out))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=REQUESTS | st.lists(REQUESTS, max_size=5) | JSON)
def test_malformed_objects_never_stop_the_next_request(rpc: Dispatcher, message: Any) -> None:
    """Random request-shaped objects → well-formed answers, and a valid request still works."""
    out = rpc.handle(json.dumps(message).encode())
    if out is not None:
        list(assert_responses(out))
    assert call(rpc, "get", {"id": 10**9})["error"]["code"] == -32001


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.binary(max_size=64).filter(lambda b: b"\n" not in b and b.strip()), max_size=20))
def test_the_line_loop_answers_every_line_then_the_valid_request(
    rpc: Dispatcher, garbage: list[bytes]
) -> None:
    """Through serve(): one answer per non-blank garbage line, then the valid request's answer."""
    valid = b'{"jsonrpc":"2.0","id":"last","method":"list","params":{"limit":1}}'
    sink = ListSink()
    serve(rpc, sink, chunks(*(g + b"\n" for g in garbage), valid + b"\n", size=5))
    assert len(sink.lines) == len(garbage) + 1
    for line in sink.lines[:-1]:
        list(assert_responses(line))
    assert json.loads(sink.lines[-1]) == {"jsonrpc": "2.0", "id": "last", "result": []}
