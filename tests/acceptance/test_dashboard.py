"""``agent-supervisor dashboard`` and ``metrics`` as a user runs them: a subprocess, spoken to
over HTTP (no browser; tests/acceptance/test_dashboard_browser.py drives one)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.support import ROOT, cli, cli_env, kill_tagged, tagged_processes, wait_until


@dataclass
class Dashboard:
    """A running ``dashboard`` subprocess and what it printed."""

    proc: subprocess.Popen[str]
    url: str
    base: str
    port: int
    token: str
    stdout: str = ""
    stderr: str = ""


@contextmanager
def dashboard_process(
    data: Path, *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> Iterator[Dashboard]:
    """``python -m bridge dashboard ARGS`` until its URL is printed; stopped with SIGTERM (then
    SIGKILL) on exit, its agents reaped. ``stdout``/``stderr`` hold its output afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "dashboard", *args],
        env=env or cli_env(data),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("dashboard: "):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"the dashboard did not print its URL: {line!r}\n{err[-3000:]}")
        url = line.removeprefix("dashboard: ").strip()
        parts = urlsplit(url)
        board = Dashboard(
            proc, url, f"{parts.scheme}://{parts.netloc}", parts.port or 0, parts.query.removeprefix("token=")
        )
        yield board
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        out, err = proc.communicate(timeout=10)
        kill_tagged(data)
    board.stdout, board.stderr = line + out, err


def submit(data: Path, *args: str) -> int:
    out = cli(data, "submit", *args)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Dashboard]:
    """A dashboard without a supervisor (it follows the store) on a data dir with one job."""
    data = tmp_path / "d"
    submit(data, "--", "true")
    with dashboard_process(data, "--refresh", "0.3") as b:
        yield b


def test_every_route_needs_the_token(board: Dashboard) -> None:
    """No token or a wrong one: 401 on the page, its files, the API, the stream and /metrics."""
    with httpx.Client(base_url=board.base, timeout=10) as http:
        for path in ("/", "/static/dashboard.js", "/api/jobs", "/api/jobs/1", "/api/events", "/metrics"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, params={"token": "wrong"}).status_code == 401, path
            assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert http.post("/api/jobs/1/cancel", headers={"Origin": board.base}).status_code == 401
        assert "token required" in http.get("/api/jobs").text


def test_printed_url_sets_a_strict_cookie_and_drops_the_token(board: Dashboard) -> None:
    """The printed URL answers 303 to ``/`` with an HttpOnly SameSite=Strict cookie that then
    opens the page and the API; the page names its files and nothing from the network."""
    with httpx.Client(base_url=board.base, timeout=10) as http:
        first = http.get(board.url.removeprefix(board.base))
        assert first.status_code == 303 and first.headers["location"] == "/"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script src="/static/dashboard.js"' in page.text
        assert not re.search(r'(src|href)="(https?:)?//', page.text)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        jobs = http.get("/api/jobs").json()
        assert [j["id"] for j in jobs["jobs"]] == [1] and jobs["has_more"] is False


def test_actions_refuse_foreign_origins(board: Dashboard) -> None:
    """A POST with the cookie but a foreign Origin, or no Origin, is 403 and changes nothing;
    from the page's own origin it cancels the job."""
    with httpx.Client(base_url=board.base, timeout=10) as http:
        http.get(board.url.removeprefix(board.base))  # the cookie
        refused = http.post("/api/jobs/1/cancel", headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403
        assert http.post("/api/jobs/1/cancel").status_code == 403
        assert http.get("/api/jobs/1").json()["status"] == "pending"
        done = http.post("/api/jobs/1/cancel", headers={"Origin": board.base})
        assert done.status_code == 200, done.text
        assert done.json()["job"]["status"] == "cancelled"
        again = http.post("/api/jobs/1/cancel", headers={"Origin": board.base})
        assert again.status_code == 409 and "already cancelled" in again.json()["error"]


def test_foreign_host_header_is_refused(board: Dashboard) -> None:
    """A request naming another host (a DNS-rebinding page) is 403 even with the right token."""
    with httpx.Client(base_url=board.base, timeout=10) as http:
        answer = http.get(
            "/api/jobs",
            headers={"Host": f"evil.example:{board.port}", "Authorization": f"Bearer {board.token}"},
        )
        assert answer.status_code == 403


def test_listens_on_loopback_only_and_never_logs_the_token(tmp_path: Path) -> None:
    """The server's only listening socket is on 127.0.0.1, and its token appears once in its
    output: in the printed URL, never in a log line (requests with ?token= included)."""
    data = tmp_path / "d"
    with dashboard_process(data, "--refresh", "0.3") as board:
        with httpx.Client(base_url=board.base, timeout=10) as http:
            http.get(board.url.removeprefix(board.base))
            http.get("/api/jobs", params={"token": board.token})
            http.get("/nowhere", params={"token": board.token})
        listening = [
            c
            for c in psutil.Process(board.proc.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]
        assert listening[0].laddr.port == board.port
    assert board.stdout.count(board.token) == 1
    assert board.token not in board.stderr


def test_open_hands_the_browser_a_private_file_not_the_token(tmp_path: Path) -> None:
    """--open starts the browser ($BROWSER) on a file:// page that redirects to the URL: the
    token is not on the browser's command line, and the page is gone when the server stops."""
    seen = tmp_path / "browser-argv"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {seen}.tmp && mv {seen}.tmp {seen}\n')
    browser.chmod(0o700)
    data = tmp_path / "d"
    with dashboard_process(data, "--open", env=cli_env(data, BROWSER=f"{browser} %s")) as board:
        wait_until(seen.exists, 15, message="the browser to be started")
        argument = seen.read_text()
        assert argument.startswith("file:///") and board.token not in argument
        page = Path(urlsplit(argument).path)
        assert f'url={board.url}"' in page.read_text()
    assert not page.exists()


def test_sigterm_with_run_drains_the_agents_and_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM to ``dashboard --run`` stops the server and lets the running agent finish
    (drain, as ``run`` does: it completes), then exits 0 with no agent left behind."""
    data = tmp_path / "d"
    with dashboard_process(data, "--run", "--refresh", "0.3") as board:
        job_id = submit(data, "--", "sleep", "2")
        with httpx.Client(base_url=board.base, headers={"Authorization": f"Bearer {board.token}"}) as http:
            wait_until(lambda: http.get(f"/api/jobs/{job_id}").json()["status"] == "running", 20)
        board.proc.send_signal(signal.SIGTERM)
        assert board.proc.wait(20) == 0
        assert not tagged_processes(tmp_path)
    assert json.loads(cli(data, "show", str(job_id), "--json").stdout)["status"] == "completed"


def test_store_mode_streams_changes_made_elsewhere(board: Dashboard, tmp_path: Path) -> None:
    """Without a supervisor in the process, the event stream still reports a job submitted by
    another process: a state event whose jobs_version grew and whose health counts it."""
    with httpx.Client(base_url=board.base, timeout=10) as http:
        headers = {"Authorization": f"Bearer {board.token}"}
        with http.stream("GET", "/api/events", headers=headers) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            states = _states(stream.iter_lines())
            first = next(states)
            assert first["mode"] == "store" and first["health"]["pending"] == 1
            submit(tmp_path / "d", "--", "true")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                state = next(states)
                if state["health"]["pending"] == 2:
                    assert state["jobs_version"] > first["jobs_version"]
                    break
            else:
                pytest.fail("no state event counted the new job")


def _states(lines: Iterator[str]) -> Iterator[dict[str, object]]:
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "state":
            yield json.loads(line.removeprefix("data: "))


def test_metrics_route_and_command_agree(board: Dashboard, tmp_path: Path) -> None:
    """/metrics and ``agent-supervisor metrics`` print the same families in Prometheus text
    format, counting the store's jobs; without --run the in-process counters are absent and
    the HELP texts say where each value comes from."""
    with httpx.Client(base_url=board.base, timeout=10) as http:
        page = http.get("/metrics", headers={"Authorization": f"Bearer {board.token}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    command = cli(tmp_path / "d", "metrics")
    assert command.returncode == 0, command.stderr
    for text in (page.text, command.stdout):
        assert 'agent_supervisor_jobs{status="pending"} 1.0' in text
        assert "agent_supervisor_up 1.0" in text
        assert "# TYPE agent_supervisor_job_duration_last_hour_seconds histogram" in text
        assert "so present with or without a supervisor in this process" in text
        assert "agent_supervisor_job_starts_total" not in text
    assert _families(page.text) == _families(command.stdout)


def _families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_without_the_extra_the_commands_say_what_to_install(tmp_path: Path) -> None:
    """With the extra's libraries missing, dashboard and metrics fail in one line naming the
    pip command (a sitecustomize hides the packages from the subprocess)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn', 'prometheus_client'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    env = cli_env(tmp_path / "d", PYTHONPATH=f"{hide}{os.pathsep}{ROOT}")
    for command in ("dashboard", "metrics"):
        out = cli(tmp_path / "d", command, env=env)
        assert out.returncode == 1, out.stderr
        assert out.stderr.count("\n") == 1
        assert "pip install 'agent-supervisor[dashboard]'" in out.stderr


@pytest.mark.postgres
def test_dashboard_follows_a_postgres_store(pg_dsn: str, tmp_path: Path) -> None:
    """On a Postgres store, without a supervisor: the jobs page (filtered by repository), the
    chart, /metrics and a cancel from the page's origin all work as on SQLite."""
    from bridge.stores.postgres import PostgresStore
    from supervisor.errors import StoreError

    probe = PostgresStore(pg_dsn)
    try:
        probe.list(kinds={"any"}, limit=1)
    except StoreError as exc:  # as the contract suite does (tests/contract/conftest.py, v2)
        pytest.skip(f"this store gets protocol v2's filters with issue 10: {exc}")
    finally:
        probe.close()
    data = tmp_path / "d"
    env = cli_env(data, AGENT_SUPERVISOR_STORE=pg_dsn)
    ids = [
        int(cli(data, "submit", *args, env=env).stdout)
        for args in (("--repo", "octo/notes", "--", "true"), ("--", "true"))
    ]
    with dashboard_process(data, "--refresh", "0.3", env=env) as board:
        headers = {"Authorization": f"Bearer {board.token}", "Origin": board.base}
        with httpx.Client(base_url=board.base, headers=headers, timeout=10) as http:
            assert [j["id"] for j in http.get("/api/jobs").json()["jobs"]] == ids[::-1]
            by_repo = http.get("/api/jobs", params={"repo": "https://github.com/Octo/Notes"}).json()
            assert [j["id"] for j in by_repo["jobs"]] == [ids[0]]
            cancelled = http.post(f"/api/jobs/{ids[1]}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["job"]["status"] == "cancelled"
            chart = http.get("/api/throughput").json()
            assert sum(chart["cancelled"]) == 1
            text = http.get("/metrics").text
            assert "agent_supervisor_up 1.0" in text
            assert 'agent_supervisor_jobs{status="pending"} 1.0' in text
