"""Waiting for agents: the ``Waiter`` the supervisor loop blocks on (exits, wake-ups, timeouts).

Linux uses a selector over a self-pipe and the agents' pidfds; macOS/BSD a kqueue with
EVFILT_PROC/NOTE_EXIT; elsewhere the timeout is capped at 0.05 s. Re-exported by
``supervisor.procs`` (``procs.Waiter``); the loop gets one from ``Processes.waiter()``.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import sys
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from supervisor.processes import Agent

__all__ = ["Waiter"]

_POLL_INTERVAL: Final = 0.05  # longest blind wait where no exit notification exists


class Waiter:
    """One place to block until: wake() is called (any thread), a registered agent exits, or a timeout.

    Linux: a selector over a self-pipe and the agents' pidfds. macOS/BSD: a kqueue with
    EVFILT_PROC/NOTE_EXIT. Elsewhere (no pidfd): the timeout is capped at 0.05 s. Readiness
    is level-like: a registered agent that has exited keeps ``wait`` returning at once until it
    is unregistered. register/unregister/wait belong to one thread; wake() to any.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()  # non-inheritable (PEP 446)
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._closed = False
        self._wake_lock = threading.Lock()
        self._polled: set[Agent] = set()
        self._fds: dict[Agent, int] = {}
        self._kq_pids: dict[int, Agent] = {}
        self._exited: set[Agent] = set()
        self._sel: selectors.BaseSelector | None = None
        if sys.platform != "linux" and hasattr(select, "kqueue"):
            self._kq: select.kqueue | None = select.kqueue()
            ev = select.kevent(self._r, select.KQ_FILTER_READ, select.KQ_EV_ADD)
            self._kq.control([ev], 0, 0)
        else:
            self._kq = None
            self._sel = selectors.DefaultSelector()
            self._sel.register(self._r, selectors.EVENT_READ)

    def register(self, agent: Agent) -> None:
        """Wake ``wait`` when ``agent`` exits; registering twice is a no-op."""
        if agent in self._fds or agent in self._polled or agent in self._kq_pids.values():
            return
        fd = agent.fileno()
        if self._sel is not None and fd is not None:
            self._sel.register(fd, selectors.EVENT_READ, agent)
            self._fds[agent] = fd
            return
        if sys.platform != "linux" and self._kq is not None:
            ev = select.kevent(
                agent.pid, select.KQ_FILTER_PROC, select.KQ_EV_ADD | select.KQ_EV_ONESHOT, select.KQ_NOTE_EXIT
            )
            try:
                self._kq.control([ev], 0, 0)
                self._kq_pids[agent.pid] = agent
                return
            except ProcessLookupError:  # ESRCH: already exited (a zombie is no longer watchable)
                self._exited.add(agent)
                return
            except OSError:
                pass  # e.g. EPERM: fall back to polling
        self._polled.add(agent)

    def unregister(self, agent: Agent) -> None:
        """Stop watching ``agent``; a no-op if it was not registered."""
        self._polled.discard(agent)
        self._exited.discard(agent)
        fd = self._fds.pop(agent, None)
        if fd is not None and self._sel is not None:
            self._sel.unregister(fd)
        if sys.platform != "linux" and self._kq_pids.pop(agent.pid, None) is not None and self._kq:
            ev = select.kevent(agent.pid, select.KQ_FILTER_PROC, select.KQ_EV_DELETE)
            with contextlib.suppress(OSError):  # ONESHOT already fired or the process is gone
                self._kq.control([ev], 0, 0)

    def wake(self) -> None:
        """Make the current or next ``wait`` return; safe from any thread or a signal handler."""
        # Never write after close(): the fd number may already name another file. A busy lock
        # means close() is running (or another wake() is writing): nothing left to do, and
        # never blocking keeps this safe inside a signal handler.
        if not self._wake_lock.acquire(blocking=False):
            return
        try:
            if not self._closed:
                with contextlib.suppress(OSError):  # EAGAIN: the pipe is full, a wake-up is pending
                    os.write(self._w, b"\0")
        finally:
            self._wake_lock.release()

    def wait(self, timeout: float | None) -> None:
        """Block until a wake(), a registered agent's exit, or ``timeout`` seconds (None: no limit)."""
        if self._closed:
            raise ValueError("Waiter is closed")
        if self._exited:
            timeout = 0
        elif self._polled and (timeout is None or timeout > _POLL_INTERVAL):
            timeout = _POLL_INTERVAL
        if self._sel is not None:
            self._sel.select(timeout)
        elif sys.platform != "linux" and self._kq is not None:
            for ev in self._kq.control(None, 64, timeout):
                if ev.filter == select.KQ_FILTER_PROC and ev.ident in self._kq_pids:
                    self._exited.add(self._kq_pids.pop(ev.ident))
        self._drain()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 4096):
                pass

    def close(self) -> None:
        """Close the selector/kqueue and the pipe; idempotent."""
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
        if self._sel is not None:
            self._sel.close()
        if self._kq is not None:
            self._kq.close()
        os.close(self._r)
        os.close(self._w)
