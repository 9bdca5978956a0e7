"""The writer of ``status.json``: what only the live supervisor knows, for ``health`` elsewhere.

The running supervisor rewrites the file in its data dir when what it reports changes (at most
once a second) and at least every few seconds as a sign of life; ``supervisor.health`` reads it
(``read_status``) and trusts it only while it is fresh and its writer's process lives. The
format is one JSON object: ``pid``, ``worker_id``, ``updated_at`` (epoch seconds),
``admission`` (``state``, ``reason``, ``since``), ``memory`` (``available_bytes``,
``total_bytes``, ``reserve_bytes``), ``enforcement``, ``agents`` (per agent: ``job_id``,
``kind``, its latest samples, ``memory_max_bytes``, ``pids_max``), ``observed_peak_rss_bytes``,
``observed_cpu_percent``, ``max_concurrent`` and ``outbox_depth``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any, Final

from supervisor.datadir import DataDir, write_private

if TYPE_CHECKING:
    from supervisor.admission import Gate, Machine
    from supervisor.attempt import Attempt
    from supervisor.settings import Settings

__all__ = ["StatusWriter"]

log = logging.getLogger("agent_supervisor")

_STATUS_MIN_S: Final = 1.0
_STATUS_EVERY_S: Final = 5.0


class StatusWriter:
    """Rewrites ``status.json`` in ``data_dir`` when due; one per run of a supervisor."""

    def __init__(self, datadir: DataDir) -> None:
        self._path = datadir.status_file
        self._next = 0.0
        self._key: object = None

    def write_if_due(
        self,
        now: float,
        *,
        worker_id: str,
        gate: Gate,
        gate_since: float,
        machine: Machine,
        settings: Settings,
        agents: Iterable[Attempt],
        observed: Collection[tuple[int, float]],
        outbox_depth: int,
        enforcement: Callable[[], str],
        wall_now: float,
    ) -> None:
        """Write the status if it changed (at most once a second) or has not been written for a
        few seconds. ``observed`` holds (peak tree RSS, mean CPU %) of recent attempts."""
        if now < self._next:
            return
        rows = [
            {
                "job_id": a.job.id,
                "kind": a.job.kind,
                **(a.stats or {}),
                "memory_max_bytes": a.limits.memory_max_bytes,
                "pids_max": a.limits.pids_max,
            }
            for a in agents
        ]
        key = (gate.state, gate.reason, json.dumps(rows, sort_keys=True), outbox_depth)
        if key == self._key and now < self._next + _STATUS_EVERY_S:
            return
        self._key, self._next = key, now + _STATUS_MIN_S
        peaks = [p for p, _ in observed]
        cpus = [c for _, c in observed]
        status: dict[str, Any] = {
            "pid": os.getpid(),
            "worker_id": worker_id,
            "updated_at": wall_now,
            "admission": {
                "state": gate.state.value,
                "reason": gate.reason,
                "since": gate_since,
            },
            "memory": {
                "available_bytes": machine.available_bytes,
                "total_bytes": machine.total_bytes,
                "reserve_bytes": settings.memory_reserve_bytes,
            },
            "enforcement": enforcement(),
            "agents": rows,
            "observed_peak_rss_bytes": max(peaks) if peaks else None,
            "observed_cpu_percent": sum(cpus) / len(cpus) if cpus else None,
            "max_concurrent": settings.concurrency,
            "outbox_depth": outbox_depth,
        }
        try:  # not fsynced: a sign of life, rewritten every few seconds, never needed after a crash
            write_private(self._path, json.dumps(status).encode())
        except OSError as exc:
            log.debug("status file: %s", exc)
