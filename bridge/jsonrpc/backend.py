"""The ``dispatch.Backend`` of the stdio server: the process around the dispatcher. It owns
the ``JobService`` the methods call, the supervisor it runs (handed to the service while it
runs), the data-dir lock it may wait for, and the notifications it sends.

Threads (besides the main one, which calls the ``Backend`` methods while dispatching):

- the supervisor's loop (``Supervisor.start``), unless ``--no-run``; its ``on_change``
  callback becomes ``job.changed``;
- the alert watcher, once a host subscribes to ``health.alert``: it wakes on job changes and
  every few seconds, because alerts like "stuck" appear with time, not with an event;
- the lock waiter, while another supervisor holds the data dir: it blocks in ``flock`` and
  takes over the moment that supervisor exits (a host reload spawns the new bridge first).

Notifications go to the writer under ``order``, the lock the line loop holds while it
dispatches a line and queues its answer: an answer always precedes the notifications its
request caused.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, Protocol

from bridge.compose import build_store, build_supervisor
from bridge.jsonrpc.dispatch import notification
from bridge.jsonrpc.protocol import Mode
from bridge.service import JobService
from supervisor.datadir import DataDirLock, prepare_data_dir
from supervisor.errors import DataDirLockedError, SupervisorError
from supervisor.lifecycle import Job, Status
from supervisor.runner import JobChange, Supervisor, read_worker_id
from supervisor.settings import Settings
from supervisor.store import JobStore

__all__ = ["Bridge", "Sink"]

log = logging.getLogger("agent_supervisor.bridge")

_HEALTH_TTL_S: Final = 0.5
"""How stale a cached health report may be. Measured: check_health takes ~3 ms on 10,000 jobs
(a GROUP BY over all rows), above the 2 ms round-trip budget of a host polling it; the cache is
also dropped on every job change this process sees."""
_ALERT_MIN_GAP_S: Final = 0.2


class Sink(Protocol):
    """Where lines for the host go (``stdio.Writer``; a list in tests)."""

    def put(self, line: bytes, *, droppable: bool = False) -> None: ...

    def wait_below(self, count: int = ...) -> None: ...


class Bridge:
    """The ``dispatch.Backend`` of the real server: the service, the supervisor, notifications."""

    def __init__(self, settings: Settings, writer: Sink, *, run: bool, store: JobStore | None = None) -> None:
        self.settings = settings
        self.service = JobService(
            settings, store if store is not None else build_store(settings), health_ttl_s=_HEALTH_TTL_S
        )
        """What the methods call; its ``supervisor`` is ours while that runs."""
        self.order = threading.RLock()
        """Held while a line is dispatched and its answer queued, and to queue a notification."""
        self._writer = writer
        self._run = run
        self._state = threading.Lock()  # mode, supervisor, subscriptions
        self._life = threading.Lock()  # starting vs closing a supervisor
        self._sup: Supervisor | None = None
        self._thread: threading.Thread | None = None
        self._mode: Mode = "no_run"
        self._locked_reason = ""
        self._events: frozenset[str] = frozenset()
        self._alerts_fresh = False
        self._closing = False
        self._closed = False
        self._poke = threading.Event()
        self._watcher: threading.Thread | None = None
        self.stop_request: tuple[bool, bool | None] | None = None
        """(drain, leave_agents) once the host asked to stop."""

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> None:
        """Start the supervisor (unless --no-run); a locked data dir makes this bridge read-only."""
        if self._run:
            self._start_supervisor()

    def _start_supervisor(self) -> None:
        with self._life:
            if self._closing:
                return
            sup = build_supervisor(
                self.settings,
                store=self.service.store,
                on_change=self._on_change,
                install_signal_handlers=False,  # the bridge owns the signals (run_bridge)
                subreaper=True,  # this process is nothing but the supervisor and its agents
            )
            try:
                thread = sup.start()
            except DataDirLockedError as exc:
                with self._state:
                    self._mode, self._locked_reason = "locked", str(exc)
                log.warning(
                    "%s: this bridge answers reads, refuses changes (code -32006), and takes over "
                    "when that supervisor exits",
                    exc,
                )
                threading.Thread(target=self._wait_for_lock, name="bridge-lock-waiter", daemon=True).start()
                self._mode_changed(f"data dir locked: {exc}")
                return
            with self._state:
                self._sup, self._thread, self._mode = sup, thread, "run"
                self.service.supervisor = sup  # submits and changes now wake its loop
        self.service.note_change()
        self._mode_changed(f"running agents as worker {sup.worker_id}")

    def _wait_for_lock(self) -> None:
        """Block until the data dir's flock is free (the holder exited), then start ours.

        The kernel wakes us (``DataDirLock.wait_until_free``), no polling. We let go at once
        and let ``Supervisor.start`` take it; if a third bridge wins that race we are locked
        out again and wait again.
        """
        try:
            DataDirLock(prepare_data_dir(Path(self.settings.data_dir))).wait_until_free()
            self._start_supervisor()
        except (SupervisorError, OSError) as exc:
            log.error("cannot take over the data dir: %s", exc)

    def close(self, *, drain: bool = True, leave_agents: bool | None = None) -> None:
        """Stop the supervisor (drain, then stop or leave its agents), the watcher, the store."""
        with self._life:
            if self._closed:
                return
            self._closing = self._closed = True
            sup, thread = self._sup, self._thread
            self.service.supervisor = None
        self._poke.set()
        if sup is not None and thread is not None:
            leave = self._leave(leave_agents)
            log.info("stopping: %s", "leaving agents for adoption" if leave else "draining agents")
            sup.stop(drain=drain, leave_agents=leave, timeout=self._stop_timeout())
            if thread.is_alive():
                log.error("the supervisor did not stop in time; its agents are reconciled on next start")
        if self._watcher is not None:
            self._watcher.join(5.0)
        self.service.store.close()

    def interrupt(self) -> None:
        """A second signal while stopping: no more draining (safe in a signal handler)."""
        if self._sup is not None:
            self._sup.request_stop(drain=False)

    def _leave(self, leave_agents: bool | None) -> bool:
        if self.mode != "run":
            return False
        return leave_agents if leave_agents is not None else self.settings.orphan_policy == "adopt"

    def _stop_timeout(self) -> float:
        return self.settings.drain_timeout_s + self.settings.stop_grace_s + 30.0

    # -- dispatch.Backend ----------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        with self._state:
            thread, crashed = self._thread, False
            if self._mode == "run" and thread is not None and not thread.is_alive() and not self._closing:
                # Its loop crashed (the traceback is on stderr already); the store still answers.
                # Every change request reads the mode first (check_writable), so the service
                # never wakes a loop that is gone.
                self._mode, crashed = "no_run", True
                self.service.supervisor = None
            mode = self._mode
        if crashed:
            log.error("the supervisor stopped unexpectedly; jobs wait until the bridge restarts")
            self._mode_changed("the supervisor stopped unexpectedly (see stderr); restart the bridge")
        return mode

    @property
    def worker_id(self) -> str | None:
        sup = self._sup
        return sup.worker_id if sup is not None and self.mode == "run" else read_worker_id(self.settings)

    def check_writable(self) -> None:
        if self.mode == "locked":
            raise DataDirLockedError(
                f"{self._locked_reason}; this bridge only reads until that supervisor exits"
            )

    def changed(self, job: Job, before: Status | None, reason: str) -> None:
        if job.status is not before:
            self._job_changed(job.id, before, job.status, reason, job.attempt, job.progress)

    def shutdown(self, *, drain: bool, leave_agents: bool | None) -> bool:
        self.stop_request = (drain, leave_agents)
        return self._leave(leave_agents)

    def subscribe(self, events: frozenset[str]) -> None:
        with self._state:
            if "health.alert" in events - self._events:
                self._alerts_fresh = True  # alerts present now are sent again, once
            self._events |= events
            start = "health.alert" in events and self._watcher is None
            if start:
                self._watcher = threading.Thread(target=self._watch_alerts, name="bridge-alerts", daemon=True)
        if start and self._watcher is not None:
            self._watcher.start()
        self._poke.set()

    def unsubscribe(self, events: frozenset[str]) -> frozenset[str]:
        with self._state:
            self._events -= events
            return self._events

    # -- notifications -------------------------------------------------------------------
    def _on_change(self, change: JobChange) -> None:
        """The supervisor thread's callback: one job.changed, and a fresh look at health."""
        self.service.note_change()
        self._poke.set()
        self._job_changed(
            change.job_id,
            change.from_status,
            change.to_status,
            change.reason,
            change.attempt,
            change.progress,
        )

    def _job_changed(
        self, job_id: int, before: Status | None, after: Status, reason: str, attempt: int, progress: Any
    ) -> None:
        params = {"id": job_id, "from": before, "to": after, "reason": reason, "attempt": attempt}
        self._notify("job.changed", {**params, "progress": progress})

    def _mode_changed(self, message: str) -> None:
        self._notify("bridge.mode", {"mode": self.mode, "worker_id": self.worker_id, "message": message})

    def _notify(self, method: str, params: dict[str, Any]) -> None:
        if method in self._events:
            line = notification(method, params)
            with self.order:
                self._writer.put(line, droppable=True)

    def _watch_alerts(self) -> None:
        seen: set[tuple[str, int | None]] = set()
        interval = max(_ALERT_MIN_GAP_S, min(5.0, self.settings.heartbeat_s))
        while not self._closing:
            self._poke.wait(interval)
            self._poke.clear()
            if self._closing:
                return
            if self._alerts_fresh:  # (re)subscribed: what is present now counts as new
                self._alerts_fresh = False
                seen = set()
            try:
                alerts = {(a.kind, a.job_id): a for a in self.service.health().alerts}
            except SupervisorError as exc:
                log.warning("health check for alerts failed: %s", exc)
                alerts = {}
            for key in alerts.keys() - seen:
                self._notify("health.alert", asdict(alerts[key]))
            seen = set(alerts)
            time.sleep(_ALERT_MIN_GAP_S)  # debounce: a burst of job changes costs one check
