"""``status.json``: what only the live supervisor knows, for ``health`` in other processes.

The running supervisor rewrites the file in its data dir when what it reports changes (at most
once a second) and at least every ``EVERY_S`` as a sign of life; ``supervisor.health`` reads it
(``read_status``) and trusts it only while it is fresh (``FRESH_S``) and its writer's process
lives. One JSON object (``Loop._status`` builds it):

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
from collections.abc import Callable
from typing import Any, Final

from supervisor.datadir import DataDir, write_private

__all__ = ["EVERY_S", "FRESH_S", "StatusWriter"]

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
