"""The dashboard's routes: the page, its JSON API, the live stream and ``/metrics``.

Every handler parses, calls ``JobService`` in a worker thread (the stores block), and renders
with ``bridge.views`` shapes; the rules stay in the service. Errors are translated at this
boundary by one table (``_STATUS``), the same for every route:

===================================================  ======
``QueryError``, ``UsageError``, ``InvalidJobError``  400
``JobNotFoundError``, ``LogNotFoundError``           404
``IllegalTransitionError`` (and conflicts)           409
``StoreUnavailableError``                            503
any other ``SupervisorError``                        500
===================================================  ======

Routes (all behind ``auth.Guard``; README, "Dashboard and metrics"):

- ``GET /`` the page; ``GET /static/{name}`` its script and style sheet;
- ``GET /api/info``: mode, store kind, registered kinds, refresh interval;
- ``GET /api/health``: ``health --json``'s object;
- ``GET /api/jobs?status=&kind=&repo=&created_after=&created_before=&limit=&offset=``:
  ``{jobs: [list --json items], offset, limit, has_more}``;
- ``GET /api/jobs/{id}``: ``show --json``'s object (with ``events``; ``queue_position``
  when pending);
- ``GET /api/jobs/{id}/log?offset=&limit=&attempt=``: a chunk of the attempt's log as text;
- ``POST /api/jobs/{id}/cancel|kill|retry|purge``: ``{job, message}``;
- ``GET /api/throughput``: finishes per minute over the last hour;
- ``GET /api/events``: ``text/event-stream`` of ``state`` events (``live.Snapshot``);
- ``GET /metrics``: Prometheus text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Generic, Literal, TypeVar

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bridge.dashboard import metrics
from bridge.dashboard.auth import Auth, Guard
from bridge.dashboard.live import Feed
from bridge.dashboard.queries import JobQuery, QueryError, Throughput, page_jobs, throughput
from bridge.service import JobService, LogNotFoundError, UsageError
from bridge.views import detail_json, health_json, job_json
from supervisor.errors import (
    IllegalTransitionError,
    InvalidJobError,
    JobNotFoundError,
    LeaseLostError,
    StoreUnavailableError,
    SupervisorError,
    UpdateConflictError,
)
from supervisor.events import Subscription
from supervisor.lifecycle import LIVE, CancelMode, Status

__all__ = ["Options", "create_app"]

log = logging.getLogger("agent_supervisor.dashboard")

T = TypeVar("T")

_STATUS: Final[tuple[tuple[type[Exception], int], ...]] = (
    (QueryError, 400),
    (UsageError, 400),
    (InvalidJobError, 400),
    (JobNotFoundError, 404),
    (LogNotFoundError, 404),
    (IllegalTransitionError, 409),
    (UpdateConflictError, 409),
    (LeaseLostError, 409),
    (StoreUnavailableError, 503),
    (SupervisorError, 500),
)
_STATIC: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_ACTIONS: Final = frozenset({"cancel", "kill", "retry", "purge"})
_TAIL_BYTES: Final = 64 * 1024
"""A log view opens on this much of the end of the log."""
_MAX_LOG_CHUNK: Final = 256 * 1024
_KEEPALIVE_S: Final = 15.0
"""A comment line on an idle event stream: proxies and browsers drop silent connections."""
_CHART_TTL_S: Final = 10.0
"""The chart (and the last-hour metrics) are read at most this often, however many pages ask:
one-minute buckets need no fresher data, and the read is the dashboard's dearest (README)."""


@dataclass(frozen=True, slots=True)
class Options:
    """How the server was started: shown on the page, decide the feed's sources."""

    mode: Literal["run", "store"]
    """``run``: a supervisor runs in this process; ``store``: the page follows the store."""
    store_kind: str
    """``sqlite``, ``postgres`` or ``supabase``: never the URL, which may hold a password."""
    refresh_s: float


class _Cached(Generic[T]):
    """``compute()`` at most every ``ttl_s`` seconds, for any number of threads."""

    def __init__(
        self, compute: Callable[[], T], ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._compute = compute
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._value: tuple[float, T] | None = None

    def __call__(self) -> T:
        with self._lock:
            if self._value is None or self._clock() - self._value[0] >= self._ttl_s:
                self._value = (self._clock(), self._compute())
            return self._value[1]


def create_app(
    service: JobService,
    auth: Auth,
    options: Options,
    *,
    changes: Subscription | None = None,
) -> Starlette:
    """The dashboard over ``service``; ``changes``: the in-process supervisor's stream (its
    changes reach the page at once and feed the ``*_total`` metrics)."""
    feed = Feed(service, refresh_s=options.refresh_s)
    # The window ends at this machine's time, not the store's: with a clock kept by NTP they
    # agree to far less than a one-minute bucket, and a remote store is spared a round trip.
    last_hour: _Cached[Throughput] = _Cached(lambda: throughput(service, time.time()), _CHART_TTL_S)
    registry, recorder = metrics.build_registry(service.health, last_hour, in_process=changes is not None)
    page = resources.files("bridge.dashboard").joinpath("static/index.html").read_bytes()
    static = {
        name: (resources.files("bridge.dashboard").joinpath(f"static/{name}").read_bytes(), media)
        for name, media in _STATIC.items()
    }

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def static_file(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            return JSONResponse({"error": "no such file"}, status_code=404)
        return Response(found[0], media_type=found[1])

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "mode": options.mode,
                "store": options.store_kind,
                "kinds": sorted(service.settings.kinds),
                "refresh_s": options.refresh_s,
                "statuses": [s.value for s in Status],
            }
        )

    async def health(request: Request) -> Response:
        return JSONResponse(health_json(await call(service.health)))

    async def jobs(request: Request) -> Response:
        query = JobQuery.parse({k: request.query_params.getlist(k) for k in request.query_params})
        return JSONResponse((await call(page_jobs, service, query)).as_json())

    async def job(request: Request) -> Response:
        detail = await call(service.get, _job_id(request))
        data = detail_json(detail)
        if detail.job.status is Status.PENDING:  # its place in the queue: one more count
            [queued] = await call(service.queued, [detail.job.id])
            data["queue_position"] = queued.queue_position
        return JSONResponse(data)

    async def log(request: Request) -> Response:
        params = request.query_params
        offset = _optional_int(params.get("offset"), "offset")
        limit = _optional_int(params.get("limit"), "limit") or (
            _TAIL_BYTES if offset is None else _MAX_LOG_CHUNK
        )
        chunk = await call(
            service.logs,
            _job_id(request),
            attempt=_optional_int(params.get("attempt"), "attempt"),
            offset=offset,
            limit=min(limit, _MAX_LOG_CHUNK),
        )
        return JSONResponse(
            {
                "attempt": chunk.attempt,
                "offset": chunk.offset,
                "next_offset": chunk.next_offset,
                "size": chunk.size,
                "eof": chunk.eof,
                "live": chunk.job.status in LIVE and chunk.attempt == chunk.job.attempt,
                "text": chunk.data.decode("utf-8", errors="replace"),
            }
        )

    async def act(request: Request) -> Response:
        job_id, action = _job_id(request), request.path_params["action"]
        if action not in _ACTIONS:
            return JSONResponse({"error": f"no action {action!r}"}, status_code=404)
        if action == "purge":
            result = await call(service.purge, ids=[job_id])
            feed.poke()
            if result.cancel_requested:
                message = f"job {job_id} is still running: cancel requested, purged once it stops"
                return JSONResponse(
                    {"job": job_json((await call(service.get, job_id)).job), "message": message}
                )
            return JSONResponse({"job": None, "message": f"job {job_id} purged"})
        if action == "retry":
            [outcome] = await call(service.retry, [job_id])
        else:
            mode = CancelMode.KILL if action == "kill" else CancelMode.CANCEL
            [outcome] = await call(service.cancel, [job_id], mode)
        changed = outcome.unwrap()
        feed.poke()
        return JSONResponse({"job": job_json(changed), "message": f"job {job_id}: {outcome.reason}"})

    async def chart(request: Request) -> Response:
        return JSONResponse((await call(last_hour)).as_json())

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            async with feed.listening():
                yield "retry: 2000\n\n"
                seen = 0
                while not feed.closed:
                    snapshot = await feed.next(seen, _KEEPALIVE_S)
                    if snapshot is None:
                        yield ": keep-alive\n\n"
                        continue
                    seen = snapshot.version
                    data = json.dumps(snapshot.as_json(options.mode), separators=(",", ":"))
                    yield f"event: state\nid: {snapshot.version}\ndata: {data}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def metrics_page(request: Request) -> Response:
        return Response(await call(metrics.render, registry), media_type=metrics.CONTENT_TYPE)

    async def error(request: Request, exc: Exception) -> Response:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=status)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(feed.run(), name="dashboard-feed")]
        if changes is not None:
            tasks.append(asyncio.create_task(feed.consume(changes, recorder), name="dashboard-changes"))
        for task in tasks:
            task.add_done_callback(_report_crash)
        try:
            yield
        finally:
            feed.close()
            if changes is not None:
                changes.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/static/{name}", static_file),
            Route("/api/info", info),
            Route("/api/health", health),
            Route("/api/jobs", jobs),
            Route("/api/jobs/{id:int}", job),
            Route("/api/jobs/{id:int}/log", log),
            Route("/api/jobs/{id:int}/{action:str}", act, methods=["POST"]),
            Route("/api/throughput", chart),
            Route("/api/events", events),
            Route("/metrics", metrics_page),
        ],
        middleware=[Middleware(Guard, auth=auth)],
        exception_handlers={kind: error for kind, _ in _STATUS},
        lifespan=lifespan,
    )
    app.state.feed = feed
    return app


def _report_crash(task: asyncio.Task[None]) -> None:
    """A background task that ended by itself is a bug: say so (the page stops being live)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("dashboard task %s crashed", task.get_name(), exc_info=task.exception())


def _job_id(request: Request) -> int:
    job_id = request.path_params["id"]
    assert isinstance(job_id, int)  # the route's int converter
    return job_id


def _optional_int(text: str | None, name: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        raise QueryError(f"{name}: not a whole number: {text!r}") from None
    if value < 0:
        raise QueryError(f"{name}: must be >= 0, got {value}")
    return value
