"""Waiting for agents: one ``Waiter`` to block on (exits, wake-ups, timeouts), and ``stop``.

``Waiter``: Linux uses a selector over a self-pipe and the agents' pidfds; macOS/BSD a kqueue
with EVFILT_PROC/NOTE_EXIT; elsewhere the timeout is capped at 0.05 s. ``stop``: SIGTERM to
the group, a grace period, then SIGKILL to the tree and a bounded reap. Both are re-exported by
``supervisor.procs`` (``procs.Waiter``, ``procs.stop``).
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from supervisor.proctable import _group_alive

if TYPE_CHECKING:
    from supervisor.procs import AgentProcess, ExitStatus

__all__ = ["Waiter", "stop"]

_POLL_INTERVAL: Final = 0.05  # longest blind wait where no exit notification exists
_REAP_WAIT_S: Final = 2.0  # after SIGKILL, how long stop() waits for the leader to be reaped


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
        self._polled: set[AgentProcess] = set()
        self._fds: dict[AgentProcess, int] = {}
        self._kq_pids: dict[int, AgentProcess] = {}
        self._exited: set[AgentProcess] = set()
        self._sel: selectors.BaseSelector | None = None
        if sys.platform != "linux" and hasattr(select, "kqueue"):
            self._kq: select.kqueue | None = select.kqueue()
            ev = select.kevent(self._r, select.KQ_FILTER_READ, select.KQ_EV_ADD)
            self._kq.control([ev], 0, 0)
        else:
            self._kq = None
            self._sel = selectors.DefaultSelector()
            self._sel.register(self._r, selectors.EVENT_READ)

    def register(self, agent: AgentProcess) -> None:
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

    def unregister(self, agent: AgentProcess) -> None:
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


# ---------------------------------------------------------------- stopping


def _await_exit(agent: AgentProcess, timeout: float, sleep: Callable[[float], None]) -> None:
    fd = agent.fileno()
    if agent.status is None and fd is not None and sys.platform == "linux":
        poller = select.poll()  # not select(): a host may hold fds beyond FD_SETSIZE
        poller.register(fd, select.POLLIN)
        poller.poll(timeout * 1000)  # a pidfd turns readable as soon as the leader exits
    else:
        sleep(timeout)


def stop(
    agent: AgentProcess,
    grace_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ExitStatus | None:
    """SIGTERM the group, wait up to ``grace_s`` for it to end, then ``kill_tree`` and reap.

    Returns the leader's status, or None if it could not be reaped within 2 s of SIGKILL.
    """
    agent.signal_group(signal.SIGTERM)
    deadline = clock() + grace_s
    while (remaining := deadline - clock()) > 0:
        if agent.poll() is not None and not _group_alive(agent.pgid):
            break
        _await_exit(agent, min(remaining, _POLL_INTERVAL), sleep)
    agent.kill_tree()
    deadline = clock() + _REAP_WAIT_S
    while (status := agent.poll()) is None and clock() < deadline:
        _await_exit(agent, _POLL_INTERVAL, sleep)
    return status
