"""The dashboard's routes (bridge/dashboard/app.py) in process, over a MemoryStore."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.dashboard.app import Options, create_app
from bridge.dashboard.auth import SECURITY_HEADERS, Auth
from bridge.service import JobService
from supervisor.datadir import DataDir
from supervisor.errors import StoreUnavailableError
from supervisor.lifecycle import Job, JobSpec
from supervisor.settings import KindConfig, Settings
from supervisor.testing import ManualClock, MemoryStore

AUTH = Auth("t0ken", 8123)
BASE = "http://127.0.0.1:8123"
ORIGIN = {"Origin": BASE}


class DownStore(MemoryStore):
    """A MemoryStore whose ``get`` can fail as an unreachable store does."""

    down = False

    def get(self, job_id: int) -> Job:
        if self.down:
            raise StoreUnavailableError("store down")
        return super().get(job_id)


@pytest.fixture
def store() -> DownStore:
    return DownStore(ManualClock())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, kinds={"summarize": KindConfig(argv=["summarize"])})


class Client:
    """httpx over ASGI, called synchronously: one event loop for the whole test. (Starlette's
    TestClient now wants the httpx2 package, which this project does not use.)"""

    def __init__(self, app: Any) -> None:
        self._runner = asyncio.Runner()
        self._http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE, headers={"Authorization": "Bearer t0ken"}
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._http.get(path, **kwargs))

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._http.post(path, **kwargs))

    def close(self) -> None:
        self._runner.run(self._http.aclose())
        self._runner.close()


@pytest.fixture
def client(store: DownStore, settings: Settings) -> Iterator[Client]:
    """A client of the app with the token as a Bearer header."""
    http = Client(create_app(JobService(settings, store), AUTH, Options("store", "sqlite", 1.0)))
    try:
        yield http
    finally:
        http.close()


def test_reads_answer_in_the_views_shapes(client: Client, store: DownStore) -> None:
    """Jobs, one job with its events, health and info come back as the CLI's --json shapes;
    info names the store's kind, never its URL."""
    store.enqueue([JobSpec(command=("true",)), JobSpec(command=("false",), priority=3)])
    page = client.get("/api/jobs", params={"limit": 1}).json()
    assert [j["id"] for j in page["jobs"]] == [2] and page["has_more"] is True
    assert page["jobs"][0]["priority"] == 3
    detail = client.get("/api/jobs/1").json()
    assert detail["status"] == "pending" and [e["to"] for e in detail["events"]] == ["pending"]
    assert detail["queue_position"] == 2  # job 2 has the higher priority
    client.post("/api/jobs/1/cancel", headers=ORIGIN)
    assert "queue_position" not in client.get("/api/jobs/1").json()
    assert client.get("/api/health").json()["pending"] == 1
    info = client.get("/api/info").json()
    assert info == {
        "mode": "store",
        "store": "sqlite",
        "kinds": ["summarize"],
        "refresh_s": 1.0,
        "statuses": ["pending", "preparing", "running", "waiting_retry", "completed", "failed", "cancelled"],
    }


def test_errors_map_to_statuses(client: Client, store: DownStore) -> None:
    """Unknown job 404, a refused transition 409, a bad parameter 400, an unknown action 404,
    a job without a log 404, an unreachable store 503: each a JSON ``error``."""
    store.enqueue([JobSpec(command=("true",))])
    cases = [
        (client.get("/api/jobs/99"), 404, "no job"),
        (client.post("/api/jobs/1/retry", headers=ORIGIN), 409, "pending"),
        (client.get("/api/jobs", params={"status": "done"}), 400, "status:"),
        (client.get("/api/jobs/1/log", params={"offset": "-5"}), 400, "offset:"),
        (client.post("/api/jobs/1/explode", headers=ORIGIN), 404, "no action"),
        (client.get("/api/jobs/1/log"), 404, "has not run yet"),
    ]
    for answer, status, text in cases:
        assert answer.status_code == status, answer.text
        assert text in answer.json()["error"]
    store.down = True
    down = client.get("/api/jobs/1")
    assert down.status_code == 503 and down.json() == {"error": "store down", "type": "StoreUnavailableError"}


def test_actions_change_the_job(client: Client, store: DownStore) -> None:
    """cancel, retry, kill and purge answer with the changed job (purge: none) and a message."""
    store.enqueue([JobSpec(command=("true",))])
    cancelled = client.post("/api/jobs/1/cancel", headers=ORIGIN).json()
    assert cancelled["job"]["status"] == "cancelled" and cancelled["message"] == "job 1: cancel requested"
    assert client.post("/api/jobs/1/retry", headers=ORIGIN).json()["job"]["status"] == "pending"
    assert client.post("/api/jobs/1/kill", headers=ORIGIN).json()["job"]["status"] == "cancelled"
    purged = client.post("/api/jobs/1/purge", headers=ORIGIN).json()
    assert purged == {"job": None, "message": "job 1 purged"}
    assert client.get("/api/jobs/1").status_code == 404


def test_purge_of_a_running_job_requests_its_cancel(client: Client, store: DownStore) -> None:
    """Purging a live job keeps it until it stopped: the answer shows the cancel request."""
    store.enqueue([JobSpec(command=("true",))])
    [job] = store.claim("w", 1, lease_s=30)
    store.mark_running(job.id, "w", job.attempt, pid=4242)
    answer = client.post("/api/jobs/1/purge", headers=ORIGIN).json()
    assert answer["job"]["cancel_requested"] == "cancel" and "still running" in answer["message"]


def test_log_route_serves_the_tail_then_what_follows(
    client: Client, store: DownStore, settings: Settings
) -> None:
    """Without an offset the log route answers the tail; from ``next_offset`` it answers what
    the agent wrote since; ``live`` says whether more may come."""
    store.enqueue([JobSpec(command=("true",))])
    [job] = store.claim("w", 1, lease_s=30)
    store.mark_running(job.id, "w", job.attempt, pid=4242)
    path = DataDir.at(settings.data_dir).log_path(job.id, job.attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("first line\n")
    tail = client.get("/api/jobs/1/log").json()
    assert tail["text"] == "first line\n" and tail["live"] is True and tail["attempt"] == 1
    with path.open("a") as f:
        f.write("second ✓\n")
    more = client.get("/api/jobs/1/log", params={"offset": tail["next_offset"]}).json()
    assert more["text"] == "second ✓\n" and more["offset"] == tail["next_offset"] and more["eof"]


def test_page_and_files_are_served_with_security_headers(client: Client) -> None:
    """The page, its script and an error all carry the security headers; unknown files are 404."""
    for answer in (client.get("/"), client.get("/static/dashboard.js"), client.get("/api/jobs/99")):
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value, (answer.url, name)
    assert client.get("/static/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../service.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404


def test_static_files_load_nothing_from_the_network() -> None:
    """The shipped page, script and style sheet name no URL outside this server (the SVG
    namespace is an identifier, not a fetch)."""
    import re
    from importlib import resources

    static = resources.files("bridge.dashboard").joinpath("static")
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        text = static.joinpath(name).read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "innerHTML" not in text, name  # store values go in as text, never as markup


def test_chart_route_counts_the_last_hour(client: Client, store: DownStore) -> None:
    """/api/throughput answers 60 one-minute buckets per final status, ending now."""
    store.enqueue([JobSpec(command=("true",))])
    client.post("/api/jobs/1/cancel", headers=ORIGIN)
    chart = client.get("/api/throughput").json()
    assert len(chart["completed"]) == 60 and chart["bucket_s"] == 60
    assert sum(chart["cancelled"]) in (0, 1)  # the ManualClock's epoch may be outside the hour
    assert chart["truncated"] is False


def test_metrics_route_serves_prometheus_text(client: Client, store: DownStore) -> None:
    """/metrics answers the text format with the store's counts."""
    store.enqueue([JobSpec(command=("true",))])
    answer = client.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'agent_supervisor_jobs{status="pending"} 1.0' in answer.text


def test_a_crashed_background_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """If the feed's task ends with an error (a bug), the error is logged, not lost."""
    from bridge.dashboard.app import _report_crash

    async def boom() -> None:
        raise RuntimeError("bug in the feed")

    async def main() -> None:
        task = asyncio.create_task(boom(), name="dashboard-feed")
        task.add_done_callback(_report_crash)
        with contextlib.suppress(RuntimeError):
            await task
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop

    with caplog.at_level("ERROR", logger="agent_supervisor.dashboard"):
        asyncio.run(main())
    assert "dashboard task dashboard-feed crashed" in caplog.text and "bug in the feed" in caplog.text
