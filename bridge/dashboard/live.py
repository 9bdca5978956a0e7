"""The dashboard's live feed: one watcher per server, many server-sent-event streams.

``Feed.run`` is the only task that looks at the store for the live view, however many pages
are open: while at least one stream listens it reads health (``JobService.health``: counts,
admission, agents, alerts) and the live jobs every ``refresh_s``, and publishes a
``Snapshot``; each stream waits for the next one (``Feed.next``). A snapshot's
``jobs_version`` grows each time the jobs moved (a status count, or a live job's status,
version or progress): a page that sees a new one re-reads its table and the job it shows,
even if it missed the snapshots between; otherwise it only redraws the queue panel (agents'
memory, ages).

Changes reach the feed sooner than ``refresh_s`` from two places: the supervisor running in
this process (``dashboard --run``: its ``Subscription``, read by ``consume``) and the page's
own actions (``poke``). Both make the watcher look again at once, after ``min_gap_s`` so a
burst of changes costs one look. Changes made by other processes (a CLI ``submit``, another
supervisor on the same store) are seen at the next look, within ``refresh_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from bridge.service import JobService
from bridge.views import health_json, iso
from supervisor.errors import JobNotFoundError, SupervisorError
from supervisor.events import JobChange
from supervisor.health import HealthReport
from supervisor.lifecycle import LIVE, Job

__all__ = ["ChangeObserver", "Feed", "Snapshot", "fingerprint"]

log = logging.getLogger("agent_supervisor.dashboard")

_MAX_LIVE: Final = 10_000
"""Live jobs read per look at most: they are bounded by the supervisors' concurrency anyway."""


class ChangeObserver(Protocol):
    """What ``Feed.consume`` tells of each change (``metrics.Recorder``)."""

    def observe(self, change: JobChange) -> bool:
        """Count ``change``; True when it ended an attempt (``observe_job`` follows)."""
        ...

    def observe_job(self, job: Job) -> None:
        """The job whose attempt just ended, as read after the change."""
        ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What every open page is told at each look: the queue's health and whether jobs moved."""

    version: int
    at: float
    jobs_version: int
    """Grows each time the jobs moved; equal in two snapshots: the same jobs."""
    health: dict[str, Any] | None
    """``health --json``'s object; its counts are None while the store is unreachable."""
    error: str | None = None
    """Why the store could not be read (then the jobs are not compared: ``jobs_version``
    stays); ``health`` is None only if even health failed."""

    def as_json(self, mode: str) -> dict[str, Any]:
        """The ``state`` event's data (``mode``: ``run`` or ``store``)."""
        return {
            "version": self.version,
            "at": iso(self.at),
            "jobs_version": self.jobs_version,
            "mode": mode,
            "health": self.health,
            "error": self.error,
        }


def fingerprint(report: HealthReport, live: list[Job]) -> tuple[Any, ...]:
    """What must differ between two looks for the jobs to have moved: the counts by status,
    and each live job's status, version and progress (a heartbeat changes only the progress)."""
    counts = (
        report.pending,
        report.running,
        report.waiting_retry,
        report.completed,
        report.failed,
        report.cancelled,
    )
    return counts, tuple((j.id, j.status, j.version, repr(j.progress)) for j in live)


class Feed:
    """The watcher of the module docstring; create it, and call everything but ``run``'s
    thread work, on the server's event loop."""

    def __init__(
        self,
        service: JobService,
        *,
        refresh_s: float,
        min_gap_s: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.refresh_s = refresh_s
        self.min_gap_s = min_gap_s
        self._clock = clock
        self.latest: Snapshot | None = None
        self._listeners = 0
        self._wake = asyncio.Event()
        self._published = asyncio.Event()
        self._dirty = False
        self.closed = False
        """Set by ``close``: the event streams end."""

    def close(self) -> None:
        """The server is stopping: every waiting stream wakes and ends. Event loop only."""
        self.closed = True
        self._published.set()

    def poke(self) -> None:
        """Something changed (an action, a supervisor's change): look now. Event loop only."""
        self._dirty = True
        self._wake.set()

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """While inside, the watcher looks every ``refresh_s`` (it rests when nobody listens)."""
        self._listeners += 1
        self._wake.set()
        try:
            yield
        finally:
            self._listeners -= 1

    async def next(self, after: int, timeout: float) -> Snapshot | None:
        """The first snapshot newer than version ``after``; None after ``timeout`` seconds."""
        published = self._published
        latest = self.latest
        if latest is not None and latest.version > after:
            return latest
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(published.wait(), timeout)
        latest = self.latest
        return latest if latest is not None and latest.version > after else None

    async def run(self) -> None:
        """Look and publish until cancelled (the server's lifespan owns this task)."""
        previous: tuple[Any, ...] | None = None
        while True:
            if not self._listeners:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.clear()
            dirty, self._dirty = self._dirty, False
            report, live, error = await asyncio.to_thread(self._look)
            health = health_json(report) if report is not None else None
            if live is None or report is None:
                self._publish(changed=dirty, health=health, error=error)
            else:
                now = fingerprint(report, live)
                self._publish(changed=dirty or now != previous, health=health, error=None)
                previous = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_s)
            await asyncio.sleep(self.min_gap_s)  # a burst of changes: one look for all of them

    async def consume(
        self, changes: AsyncIterable[JobChange], observer: ChangeObserver | None = None
    ) -> None:
        """Read the in-process supervisor's changes until the stream ends: each makes the
        watcher look at once, and goes to ``observer`` (the metrics), which is also handed
        the job of each attempt that ended (one ``get``, for its duration)."""
        async for change in changes:
            self.service.note_change()  # the service's health snapshot is stale now
            self.poke()
            if observer is None or not observer.observe(change):
                continue
            try:
                job = await asyncio.to_thread(self.service.store.get, change.job_id)
            except JobNotFoundError:
                continue  # purged meanwhile: nothing to time
            except SupervisorError as exc:
                log.warning("cannot read job %d for its duration: %s", change.job_id, exc)
                continue
            observer.observe_job(job)

    def _look(self) -> tuple[HealthReport | None, list[Job] | None, str | None]:
        """Health (which reports an unreachable store rather than failing: issue 11) and the
        live jobs; the error that kept either from being read."""
        try:
            report = self.service.health()
        except SupervisorError as exc:
            return None, None, str(exc)
        try:
            live = self.service.list(LIVE, limit=_MAX_LIVE)
        except SupervisorError as exc:
            return report, None, str(exc)
        return report, live, None

    def _publish(self, *, changed: bool, health: dict[str, Any] | None, error: str | None) -> None:
        latest = self.latest
        version, jobs = (latest.version, latest.jobs_version) if latest is not None else (0, 0)
        self.latest = Snapshot(version + 1, self._clock(), jobs + 1 if changed else jobs, health, error)
        published, self._published = self._published, asyncio.Event()
        published.set()
