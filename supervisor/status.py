"""``status.json``: what only the live supervisor knows, for ``health`` in other processes.

The running supervisor rewrites the file in its data dir when what it reports changes (at most
once a second) and at least every ``EVERY_S`` as a sign of life; ``supervisor.health`` reads it
(``read_status``) and trusts it only while it is fresh (``FRESH_S``) and its writer's process
lives. One JSON object (``build_status`` makes it from the loop's parts):

- ``pid``, ``worker_id``, ``updated_at`` (epoch seconds);
- ``admission``: ``state``, ``reason``, ``reason_key``, ``since``, ``never_fit`` (kinds whose
  memory estimate this machine can never give);
- ``memory``: ``available_bytes``, ``total_bytes``, ``reserve_bytes``; ``enforcement``;
- ``agents``: per running agent ``job_id``, ``kind``, its latest tree sample (``rss_bytes``,
  ``cpu_percent``, ``processes``), ``memory_max_bytes``, ``pids_max``, ``progress``,
  ``started_at``, ``timeout_at``, ``last_activity_at``;
- ``observed_peak_rss_bytes`` and ``observed_cpu_percent`` (lists over recent attempts),
  ``max_concurrent``, ``outbox_depth``;
- ``store``: ``push`` (hints arrive without polling), ``unreachable_since``, ``last_error``;
- ``disk``: ``files_bytes``, ``files``, ``swept_at`` (the last retention sweep),
  ``free_bytes``, ``total_bytes``, ``write_error`` (why the last state or outbox write failed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from supervisor.datadir import DataDir, write_private
from supervisor.retention import disk_use

if TYPE_CHECKING:
    from supervisor.attempt import Attempt
    from supervisor.clock import Clock
    from supervisor.loop import Loop
    from supervisor.settings import Settings

__all__ = ["EVERY_S", "FRESH_S", "StatusWriter", "build_status", "previous_write_time"]

log = logging.getLogger("agent_supervisor")

_MIN_S: Final = 1.0
EVERY_S: Final = 10.0
"""The longest time between two writes: an idle supervisor wakes for this, and only this."""
FRESH_S: Final = 3 * EVERY_S
"""A status older than this is from a supervisor that is gone."""


class StatusWriter:
    """Rewrites ``status.json`` when due; one per run of a supervisor."""

    def __init__(self, datadir: DataDir) -> None:
        self._path = datadir.status_file
        self._next = 0.0
        self._last_write = float("-inf")
        self._key: object = None

    def next_due(self) -> float:
        """When a write may next be due (the loop wakes for the sign of life)."""
        return max(self._next, self._last_write + EVERY_S)

    def write_if_due(self, now: float, build: Callable[[], tuple[object, dict[str, Any]]]) -> None:
        """Write the status if it changed (at most once a second) or has not been written for
        ``EVERY_S``. ``build`` returns (what decides "changed", the status object)."""
        if now < self._next:
            return
        key, status = build()
        if key == self._key and now < self._last_write + EVERY_S:
            return
        self._key, self._next, self._last_write = key, now + _MIN_S, now
        try:  # not fsynced: a sign of life, rewritten often, never needed after a crash
            write_private(self._path, json.dumps(status).encode())
        except OSError as exc:
            log.debug("status file: %s", exc)


def previous_write_time(datadir: DataDir) -> float | None:
    """When the previous run last reported in (its ``status.json``), if it left one."""
    try:
        value = json.loads(datadir.status_file.read_bytes()).get("updated_at")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def build_status(
    loop: Loop, settings: Settings, clock: Clock, enforcement: str | None
) -> tuple[object, dict[str, Any]]:
    """(what decides "changed", the status object) of a running loop, for ``write_if_due``."""
    pool, sync, gate = loop.pool, loop.sync, loop.gate
    agents = [_agent_row(a, clock) for a in pool]
    report = loop.retention_report
    disk = disk_use(loop.session.datadir.root)
    write_error = loop.write_error or sync.write_error
    status: dict[str, Any] = {
        "pid": os.getpid(),
        "worker_id": loop.worker_id,
        "updated_at": clock.time(),
        "admission": {
            "state": gate.state.value,
            "reason": gate.reason,
            "reason_key": gate.reason_key,
            "since": loop.gate_since,
            "never_fit": sorted(gate.never_fit),
        },
        "memory": {
            "available_bytes": loop.machine.available_bytes,
            "total_bytes": loop.machine.total_bytes,
            "reserve_bytes": settings.memory_reserve_bytes,
        },
        "enforcement": enforcement,
        "agents": agents,
        "observed_peak_rss_bytes": [p for p, _ in pool.observed],
        "observed_cpu_percent": [c for _, c in pool.observed],
        "max_concurrent": settings.concurrency,
        "outbox_depth": sync.depth,
        "escapees_unattributed": pool.unattributed_escapees,
        "store": {"push": loop.pushed, "unreachable_since": sync.down_since, "last_error": sync.last_error},
        "disk": {
            "files_bytes": report.bytes if report else None,
            "files": report.files if report else None,
            "swept_at": report.at if report else None,
            "free_bytes": disk.free_bytes if disk else None,
            "total_bytes": disk.total_bytes if disk else None,
            "write_error": write_error,
        },
    }
    key = (
        gate.state,
        gate.reason_key,
        json.dumps(agents, sort_keys=True, default=str),
        sync.depth,
        pool.unattributed_escapees,
        sync.last_error,
        loop.pushed,
        write_error,
        report,
    )
    return key, status


def _agent_row(attempt: Attempt, clock: Clock) -> dict[str, Any]:
    """One running agent as ``status.json`` and ``health`` show it."""
    job, entry = attempt.job, attempt.entry
    started = entry.started_at
    idle_for = clock.monotonic() - attempt.last_output
    return {
        "job_id": job.id,
        "kind": job.kind,
        **(attempt.stats or {}),
        "memory_max_bytes": attempt.limits.memory_max_bytes,
        "pids_max": attempt.limits.pids_max,
        "progress": attempt.progress,
        "started_at": started,
        "timeout_at": started + entry.timeout_s if entry.timeout_s else None,
        "last_activity_at": clock.time() - idle_for,
    }
