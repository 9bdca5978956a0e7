"""The supervisor: the public face of the loop, for hosts and the command line.

``Supervisor`` runs ``supervisor.loop.Loop`` (the driver: claim jobs, run their agents, keep
the store and the state file true) on the caller's thread (``run``), on a thread of its own
(``start``) or under an asyncio host (``run_async``), and is safe to poke from any thread:
``submit``, ``wake``, ``request_stop``/``stop``, ``reload``, ``subscribe``. Signal handlers are
installed only by ``run`` on the main thread (``supervisor.signals``).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.admission import Gate, GateState
from supervisor.clock import SYSTEM_CLOCK, Clock
from supervisor.errors import ConfigError, StoreUnavailableError
from supervisor.events import JobChange, Subscription
from supervisor.job import Job, JobSpec, Status
from supervisor.loop import Control, Loop
from supervisor.processes import Processes
from supervisor.reconcile import Decision
from supervisor.recovery import read_worker_id
from supervisor.settings import Settings
from supervisor.signals import on_stop_signals
from supervisor.store import JobStore
from supervisor.submission import resolve_spec

if TYPE_CHECKING:
    import asyncio

__all__ = ["JobChange", "Subscription", "Supervisor", "read_worker_id", "resolve_spec"]

log = logging.getLogger("agent_supervisor")


class Supervisor:
    """Runs agents for jobs from ``store`` under ``settings``; one per data dir.

    ``run()`` blocks until stopped (or until the queue is empty with ``until_idle``);
    ``start()`` runs the same loop in a background thread and ``run_async()`` awaits it from
    an asyncio loop. ``request_stop()``, ``stop()``, ``reload()``, ``submit()`` and ``wake()``
    are safe from any thread. Signal handlers are installed only by ``run()`` on the main
    thread, and restored when it returns. ``subreaper`` (Linux) makes escaped descendants of
    agents re-parent to this process so they are reaped; enable it only when this process is
    not a host with children of its own (the CLI and the stdio bridge do). ``clock`` and
    ``processes`` are the seams tests replace (``supervisor.testing``).
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        processes: Processes | None = None,
        on_change: Callable[[JobChange], None] | None = None,
        install_signal_handlers: bool = True,
        subreaper: bool = False,
    ) -> None:
        if processes is None:
            from supervisor.procs import OsProcesses  # the OS layer, only for a real run

            processes = OsProcesses(clock)
        self.settings = settings
        self.store = store
        self.processes = processes
        self._clock = clock
        self._on_change = on_change
        self._install_signals = install_signal_handlers
        self._subreaper = subreaper
        self._rng = random.Random()
        self._subscriptions: set[Subscription] = set()
        self._control = Control()
        self._loop: Loop | None = None
        """The current run's loop; after it ends, the last one (its outbox depth, its gate)."""
        self._thread: threading.Thread | None = None

    # -- public API ----------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> int:
        """Enqueue a job (kind checked, defaults filled) and wake the loop to claim it."""
        [job_id] = self.store.enqueue([resolve_spec(spec, self.settings)])
        self.wake()
        return job_id

    def wake(self) -> None:
        """Make the loop look at the store now instead of at its next poll."""
        loop = self._loop
        if loop is not None:
            loop.wake()

    def request_stop(self, *, drain: bool = True, leave_agents: bool = False) -> None:
        """Stop claiming, then stop. Running agents get ``drain_timeout_s`` to finish (none
        with ``drain=False``) and are then stopped and recorded — or, with ``leave_agents``,
        are left running for the next start to adopt (a host reload)."""
        control = self._control
        deadline = self._clock.monotonic() + (self.settings.drain_timeout_s if drain else 0.0)
        control.drain_at = min(control.drain_at, deadline) if control.stopping else deadline
        control.leave_agents = leave_agents
        control.stopping = True
        loop = self._loop
        if loop is not None:
            loop.session.waiter.wake()

    def start(self, *, until_idle: bool = False) -> threading.Thread:
        """Run the loop in a daemon thread (for hosts); ``stop()`` ends it. Errors of opening
        (e.g. ``DataDirLockedError``) are raised here, in the caller's thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this supervisor is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                loop = self._open()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run(until_idle)
            except StoreUnavailableError as exc:  # until_idle on a store that stays down
                log.error("supervisor stopped: %s", exc)
            except Exception:
                log.exception("supervisor loop crashed")
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="agent-supervisor", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self._thread

    def stop(self, *, drain: bool = True, leave_agents: bool = False, timeout: float | None = None) -> None:
        """``request_stop`` and wait for the background thread to end."""
        self.request_stop(drain=drain, leave_agents=leave_agents)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, *, until_idle: bool = False) -> None:
        """Open the data dir, reconcile, and supervise until stopped (or idle). SIGINT/SIGTERM
        stop it gracefully (a second one: no drain) when it owns the main thread."""
        loop = self._open()
        try:
            if self._install_signals:
                with on_stop_signals(lambda _sig: self.request_stop(drain=not self._control.stopping)):
                    loop.run(until_idle)
            else:
                loop.run(until_idle)
        finally:
            loop.close()

    async def run_async(self, *, until_idle: bool = False) -> None:
        """``run`` for an asyncio host: the loop runs in its own thread; cancelling this
        coroutine stops the supervisor gracefully and waits for it."""
        import asyncio

        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        thread = self.start(until_idle=until_idle)

        def join() -> None:
            thread.join()
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=join, name="agent-supervisor-join", daemon=True).start()
        try:
            await done.wait()
        except asyncio.CancelledError:
            self.request_stop()
            await asyncio.shield(done.wait())
            raise

    def reload(self, settings: Settings) -> None:
        """Apply new settings (intervals, concurrency, kinds, limits) to the running loop.

        The data dir and the store cannot change while running: stop, then start anew.
        """
        if (
            Path(settings.data_dir) != Path(self.settings.data_dir)
            or settings.store_url != self.settings.store_url
        ):
            raise ConfigError("data_dir and store cannot change on reload; stop and start a new supervisor")
        self.settings = settings
        loop = self._loop
        if loop is not None:
            loop.reloaded()

    def subscribe(
        self, *, maxsize: int = 1000, loop: asyncio.AbstractEventLoop | None = None
    ) -> Subscription:
        """A stream of the job changes this supervisor causes (see ``Subscription``)."""
        sub = Subscription(self._subscriptions.discard, maxsize, loop)
        self._subscriptions.add(sub)
        return sub

    def reconcile(self) -> list[Decision]:
        """Only reconcile: settle what a previous run left behind, then release the data dir.
        Agents that would be adopted keep running and stay in the state file."""
        loop = self._open()
        self._control.leave_agents = True
        loop.close()
        return loop.decisions

    @property
    def running_jobs(self) -> list[int]:
        """Jobs whose agent this supervisor runs now."""
        loop = self._loop
        return loop.pool.job_ids if loop is not None else []

    @property
    def outbox_depth(self) -> int:
        """Outcomes waiting for the store."""
        loop = self._loop
        return loop.sync.depth if loop is not None else 0

    @property
    def worker_id(self) -> str:
        """This data dir's worker id ("" before the first start)."""
        return self._loop.worker_id if self._loop is not None else ""

    @property
    def gate(self) -> Gate:
        """The admission gate's last answer."""
        return self._loop.gate if self._loop is not None else Gate(GateState.OPEN, None, 0)

    @property
    def last_reconcile(self) -> list[Decision]:
        """What the last start decided about the agents a previous run left behind."""
        return self._loop.decisions if self._loop is not None else []

    # -- one run -------------------------------------------------------------------------
    def _open(self) -> Loop:
        self._control = Control()
        self._loop = Loop.open(
            settings=lambda: self.settings,
            store=self.store,
            processes=self.processes,
            clock=self._clock,
            control=self._control,
            emit=self._emit,
            rng=self._rng,
            subreaper=self._subreaper,
        )
        return self._loop

    def _emit(self, job: Job, before: Status | None, reason: str) -> None:
        change = JobChange(job.id, before, job.status, reason, job.attempt, job.progress, job.kind)
        for sub in list(self._subscriptions):
            sub.put(change)
        if self._on_change is None:
            return
        try:
            self._on_change(change)
        except Exception:
            log.exception("on_change callback failed for job %d", job.id)
