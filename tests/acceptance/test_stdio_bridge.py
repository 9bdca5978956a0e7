"""`agent-supervisor bridge` as a plugin host runs it: a subprocess spoken to over its pipes."""

from __future__ import annotations

import itertools
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, agent_code, cli, cli_env, kill_tagged, tagged_processes, wait_until

FAST = {
    "AGENT_SUPERVISOR_DRAIN_TIMEOUT_S": "0.2",
    "AGENT_SUPERVISOR_STOP_GRACE_S": "0.5",
    "AGENT_SUPERVISOR_WAKE_POLL_S": "0.02",
}


class Bridge:
    """A bridge subprocess: a thread parses its stdout into messages; requests await their id."""

    def __init__(self, data_dir: Path, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "bridge", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(data_dir, **{**FAST, **env}),
            cwd=ROOT,
        )
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.responses: dict[Any, dict[str, Any]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.not_json: list[bytes] = []
        self.arrivals: list[Any] = []  # every message, in the order it came
        self.stderr = b""
        self._ids = itertools.count(1)
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                self.not_json.append(line)
                continue
            self.arrivals.append(message)
            self.inbox.put(message)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line

    def send(self, data: bytes | dict[str, Any] | list[Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data if isinstance(data, bytes) else json.dumps(data).encode() + b"\n")
        self.proc.stdin.flush()

    def _pump(self, done: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := done()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; stderr: {self.stderr[-2000:]!r}"
                )
            try:
                message = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if isinstance(message, dict) and "method" in message and "id" not in message:
                self.notifications.append(message)
            else:
                key = (
                    message.get("id")
                    if isinstance(message, dict)
                    else json.dumps([m.get("id") for m in message])
                )
                self.responses[key] = message
        return found

    def call(self, method: str, params: Any = None, timeout: float = 15) -> dict[str, Any]:
        """Send a request and return its whole response (result or error)."""
        rid = f"req-{next(self._ids)}"
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, **({"params": params} if params else {})})
        return self._pump(lambda: self.responses.pop(rid, None), timeout, f"the answer to {method}")

    def result(self, method: str, params: Any = None) -> Any:
        reply = self.call(method, params)
        assert "result" in reply, reply
        return reply["result"]

    def next_response(self, timeout: float = 15) -> dict[str, Any]:
        return self._pump(
            lambda: self.responses.pop(next(iter(self.responses), None), None), timeout, "a response"
        )

    def notified(self, method: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
        """The first notification ``method`` whose params include ``match`` (already seen or to come)."""

        def find() -> dict[str, Any] | None:
            for n in self.notifications:
                if n["method"] == method and all(n["params"].get(k) == v for k, v in match.items()):
                    return n["params"]  # type: ignore[no-any-return]
            return None

        return self._pump(find, timeout, f"{method} {match}")  # type: ignore[no-any-return]

    def close_stdin_and_wait(self, timeout: float = 15) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.wait(timeout)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return code


@contextmanager
def bridge(data_dir: Path, *args: str, **env: str) -> Iterator[Bridge]:
    """A bridge that is SIGKILLed (with its agents) if the test did not stop it; agents a
    stopped bridge left for adoption live on until the test ends (the ``_reap`` fixture)."""
    b = Bridge(data_dir, *args, **env)
    try:
        yield b
    finally:
        if b.proc.poll() is None:
            b.proc.kill()
            kill_tagged(data_dir.parent)
        b.wait(10)
        for stream in (b.proc.stdin, b.proc.stdout, b.proc.stderr):
            if stream is not None:
                with suppress(OSError):  # stdin: a broken pipe if the bridge died first
                    stream.close()
        assert not b.not_json, f"stdout carried non-protocol lines: {b.not_json[:3]}"


def sleeper() -> list[str]:
    return list(agent_code("import time; time.sleep(60)"))


def test_submit_then_job_changed_notifications_to_completed(tmp_path: Path) -> None:
    """subscribe + submit: job.changed preparing → running → completed, then get and logs agree."""
    with bridge(tmp_path / "d") as b:
        assert b.result("subscribe")["mode"] == "run"
        job_id = b.result("submit", {"command": ["sh", "-c", "echo hello"]})["id"]
        done = b.notified("job.changed", id=job_id, to="completed")
        assert done["attempt"] == 1
        steps = [n["params"]["to"] for n in b.notifications if n["params"].get("id") == job_id]
        assert steps == ["preparing", "running", "completed"]
        job = b.result("get", {"id": job_id})
        assert (job["status"], job["exit_code"]) == ("completed", 0)
        assert [e["to"] for e in job["events"]] == ["pending", "preparing", "running", "completed"]
        assert b.result("logs", {"id": job_id})["data"] == "hello\n"
        assert b.close_stdin_and_wait() == 0


def test_answers_come_before_the_notifications_they_cause(tmp_path: Path) -> None:
    """A batch of 20 submits is answered before the first job.changed of any of its jobs."""
    with bridge(tmp_path / "d", AGENT_SUPERVISOR_CONCURRENCY="4") as b:
        b.result("subscribe", {"events": ["job.changed"]})
        batch = [
            {"jsonrpc": "2.0", "id": f"s{i}", "method": "submit", "params": {"command": ["true"]}}
            for i in range(20)
        ]
        b.send(batch)
        replies = b._pump(
            lambda: b.responses.pop(json.dumps([f"s{i}" for i in range(20)]), None), 15, "the batch"
        )
        ids = {r["result"]["id"] for r in replies}
        b.notified("job.changed", id=max(ids), to="completed")
        first_note = next(i for i, m in enumerate(b.arrivals) if isinstance(m, dict) and m.get("method"))
        assert b.arrivals.index(replies) < first_note


def test_cancel_a_running_job_stops_its_agent(tmp_path: Path) -> None:
    """cancel of a running job: job.changed to cancelled, and its agent process is gone."""
    # heartbeat_s 1: a cancel right after a heartbeat waits for the next one (see the report
    # on runner.py's early beat), and the default 10 s would make this test slow, not wrong.
    with bridge(tmp_path / "d", AGENT_SUPERVISOR_HEARTBEAT_S="1") as b:
        b.result("subscribe", {"events": ["job.changed"]})
        keep = b.result("submit", {"command": sleeper()})["id"]
        victim = b.result("submit", {"command": sleeper()})["id"]
        b.notified("job.changed", id=victim, to="running")
        answer = b.result("cancel", {"id": victim})
        assert answer["cancel_requested"] == "cancel"
        b.notified("job.changed", id=victim, to="cancelled")
        wait_until(
            lambda: all(
                p.environ().get("AGENT_SUPERVISOR_JOB_ID") != str(victim) for p in tagged_processes(tmp_path)
            ),
            5,
            message="the cancelled agent to be gone",
        )
        assert b.result("get", {"id": keep})["status"] == "running"
        assert b.result("kill", {"id": keep})["cancel_requested"] == "kill"
        b.notified("job.changed", id=keep, to="cancelled")


def test_ten_thousand_malformed_lines_then_a_valid_request(tmp_path: Path) -> None:
    """10,000 bad lines in a row get 10,000 error answers, then the valid request its result."""
    junk = [b"{", b"[1,2]", b'{"jsonrpc":"1.0","id":1,"method":"list"}', b"\xff\xfe", b"null", b'"x"', b"[]"]
    lines = b"".join(junk[i % len(junk)] + b"\n" for i in range(10_000))
    valid = b'{"jsonrpc":"2.0","id":"last","method":"list","params":{"limit":1}}\n'
    with bridge(tmp_path / "d", "--no-run") as b:
        # Write from a thread: the bridge answers while we write, and a full pipe either way
        # would otherwise block both sides.
        threading.Thread(target=b.send, args=(lines + valid,), daemon=True).start()
        answers: list[Any] = []
        deadline = time.monotonic() + 60
        while (message := b.inbox.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            if isinstance(message, dict) and message.get("id") == "last":
                break
            answers.append(message)
        assert message == {"jsonrpc": "2.0", "id": "last", "result": []}
        assert len(answers) == 10_000
        errors = [e for a in answers for e in (a if isinstance(a, list) else [a])]
        assert {e["error"]["code"] for e in errors} == {-32700, -32600}
        assert {e["id"] for e in errors} == {None, 1}  # only the 1.0 request had a usable id


def test_a_two_mib_line_is_rejected_and_the_next_request_works(tmp_path: Path) -> None:
    """A line over 1 MiB → -32600 "line too long" with id null; the server answers on."""
    with bridge(tmp_path / "d", "--no-run") as b:
        threading.Thread(target=b.send, args=(b'{"x":"' + b"a" * (2 << 20) + b'"}\n',), daemon=True).start()
        rejected = b.next_response()
        assert (rejected["id"], rejected["error"]["code"]) == (None, -32600)
        assert "line too long" in rejected["error"]["message"]
        assert b.result("health")["pending"] == 0


def test_eof_stops_cleanly_and_leaves_no_agent_with_kill_policy(tmp_path: Path) -> None:
    """stdin EOF with orphan_policy kill: exit 0, agents stopped and recorded, none left."""
    data = tmp_path / "d"
    with bridge(data, AGENT_SUPERVISOR_ORPHAN_POLICY="kill") as b:
        b.result("subscribe", {"events": ["job.changed"]})
        job_id = b.result("submit", {"command": sleeper()})["id"]
        b.notified("job.changed", id=job_id, to="running")
        assert b.close_stdin_and_wait(timeout=20) == 0
        assert not tagged_processes(tmp_path)
    shown = json.loads(cli(data, "show", str(job_id), "--json", env=cli_env(data)).stdout)
    assert shown["status"] not in ("preparing", "running")


def test_eof_with_adopt_policy_leaves_the_agent_to_the_next_bridge(tmp_path: Path) -> None:
    """A host reload: the first bridge exits at EOF leaving its agent; the next one adopts it
    and records its exit exactly once, without running the job again."""
    data, release = tmp_path / "d", tmp_path / "release"
    code = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.02)\nprint('done')"
    with bridge(data) as first:
        first.result("subscribe", {"events": ["job.changed"]})
        job_id = first.result("submit", {"command": list(agent_code(code))})["id"]
        first.notified("job.changed", id=job_id, to="running")
        assert first.close_stdin_and_wait() == 0
    assert tagged_processes(tmp_path), "the agent should have been left running"
    with bridge(data) as second:
        second.result("subscribe", {"events": ["job.changed"]})
        release.touch()
        second.notified("job.changed", id=job_id, to="completed")
        job = second.result("get", {"id": job_id})
        assert (job["attempt"], job["exit_code"], job["output_tail"]) == (1, 0, "done\n")
        assert second.close_stdin_and_wait() == 0


def test_shutdown_request_answers_then_exits(tmp_path: Path) -> None:
    """shutdown: the answer comes first, then the process exits 0 with stdin still open."""
    with bridge(tmp_path / "d") as b:
        assert b.result("shutdown", {"leave_agents": False}) == {"stopping": True, "leave_agents": False}
        assert b.wait() == 0


def test_sigterm_stops_gracefully(tmp_path: Path) -> None:
    """SIGTERM stops the bridge like EOF: exit 0, no agent left."""
    with bridge(tmp_path / "d", AGENT_SUPERVISOR_ORPHAN_POLICY="kill") as b:
        b.result("subscribe", {"events": ["job.changed"]})
        job_id = b.result("submit", {"command": sleeper()})["id"]
        b.notified("job.changed", id=job_id, to="running")
        b.proc.send_signal(signal.SIGTERM)
        assert b.wait(20) == 0
        assert not tagged_processes(tmp_path)


def test_second_bridge_on_a_data_dir_reads_refuses_changes_then_takes_over(tmp_path: Path) -> None:
    """Two bridges on one data dir: the second answers reads, refuses changes with -32006
    (and says so on stderr), and runs jobs as soon as the first exits."""
    data = tmp_path / "d"
    with bridge(data) as first:
        # It answers only once it has started its supervisor, so it holds the lock now.
        assert first.result("subscribe", {"events": ["bridge.mode"]})["mode"] == "run"
        with bridge(data) as second:
            assert second.result("subscribe")["mode"] == "locked"
            refused = second.call("submit", {"command": ["true"]})["error"]
            assert refused["code"] == -32006 and "another supervisor is running" in refused["message"]
            assert second.result("list") == []
            wait_until(lambda: b"another supervisor" in second.stderr, 5, message="the warning on stderr")
            assert first.close_stdin_and_wait() == 0
            assert second.notified("bridge.mode", mode="run")["worker_id"]
            job_id = second.result("submit", {"command": ["true"]})["id"]
            second.notified("job.changed", id=job_id, to="completed")


def test_health_alert_when_a_job_gets_stuck(tmp_path: Path) -> None:
    """A subscriber gets health.alert "stuck" once a job outlives its stuck_after_s."""
    with bridge(tmp_path / "d", AGENT_SUPERVISOR_HEARTBEAT_S="0.3") as b:
        b.result("subscribe", {"events": ["health.alert"]})
        job_id = b.result("submit", {"command": sleeper(), "stuck_after_s": 0.3})["id"]
        alert = b.notified("health.alert", kind="stuck", job_id=job_id)
        assert f"job {job_id}" in alert["message"]


def test_no_run_mode_queues_but_runs_nothing_and_can_reconcile(tmp_path: Path) -> None:
    """--no-run: submit queues, subscribe reports no_run, reconcile runs (it takes the lock)."""
    with bridge(tmp_path / "d", "--no-run") as b:
        assert b.result("subscribe")["mode"] == "no_run"
        job_id = b.result("submit", {"command": ["true"]})["id"]
        assert b.result("get", {"id": job_id})["status"] == "pending"
        assert b.result("reconcile")["ran"] is True
        assert b.close_stdin_and_wait() == 0


def test_schema_flag_prints_the_json_schema(tmp_path: Path) -> None:
    """bridge --schema prints one JSON Schema document naming every method."""
    out = cli(tmp_path, "bridge", "--schema")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {"submit", "get", "list", "cancel", "logs", "subscribe", "shutdown"} <= set(doc["methods"])


@pytest.fixture(autouse=True)
def _reap(tmp_path: Path) -> Iterator[None]:
    yield
    kill_tagged(tmp_path)
