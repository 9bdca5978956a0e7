"""Time as a parameter: the ``Clock`` the supervisor reads every time from.

Two readings, never mixed: ``monotonic()`` for every local deadline, interval and timer (it
never jumps when the wall clock is stepped), and ``time()`` for what a person reads (a
timestamp in the state file or in ``status.json``). Leases and backoffs use neither: they are
the store's clock (``JobStore.now()``). Tests pass ``supervisor.testing.ManualClock``, which
moves only when told.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """Where the supervisor reads the time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, intervals)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for display only)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()
