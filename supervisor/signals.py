"""Stop signals, in one place: SIGINT/SIGTERM (and SIGHUP) become a callback.

A library must not steal its host's handlers, so handlers are installed only on the main
thread, by whoever owns the process (the CLI's ``run``, the stdio server), and restored when
the block ends. The callback runs in the signal handler: it must only set flags or write to a
self-pipe (``Waiter.wake``), never take a lock.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["on_stop_signals"]


@contextlib.contextmanager
def on_stop_signals(
    callback: Callable[[int], None],
    *,
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    wakeup_fd: int | None = None,
) -> Iterator[bool]:
    """Call ``callback(signum)`` on each of ``signals`` while the block runs; with
    ``wakeup_fd`` the signal number is also written there (``signal.set_wakeup_fd``), so a
    thread blocked in ``select`` on it wakes. Yields False (and installs nothing) when not on
    the main thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        callback(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    previous_fd = signal.set_wakeup_fd(wakeup_fd) if wakeup_fd is not None else None
    try:
        yield True
    finally:
        if previous_fd is not None:
            signal.set_wakeup_fd(previous_fd)
        for sig, old in previous.items():
            signal.signal(sig, old)
