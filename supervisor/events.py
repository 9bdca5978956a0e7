"""Job state changes for hosts: ``JobChange`` and the ``Subscription`` stream.

The supervisor thread publishes; hosts read in their own thread (blocking iteration) or in
their asyncio loop (``async for``). A slow reader loses the oldest changes and never blocks
the supervisor.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from supervisor.lifecycle import Status

if TYPE_CHECKING:
    import asyncio

__all__ = ["JobChange", "Subscription"]


@dataclass(frozen=True, slots=True)
class JobChange:
    """A job state change this supervisor caused, for a host's UI (``on_change``)."""

    job_id: int
    from_status: Status | None
    to_status: Status
    reason: str
    attempt: int
    progress: Any = None
    kind: str | None = None
    """The job's kind (None for a raw command)."""


class Subscription:
    """A stream of ``JobChange``s from ``Supervisor.subscribe()``.

    Iterate it (blocking) in a thread, or ``async for`` it when it was made with an asyncio
    loop. A slow reader loses the oldest changes, never blocks the supervisor.
    """

    def __init__(
        self, on_close: Callable[[Subscription], None], maxsize: int, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self._on_close = on_close
        self._queue: queue.Queue[JobChange | None] = queue.Queue(maxsize)
        self._loop = loop
        self._aqueue: asyncio.Queue[JobChange | None] | None = None
        if loop is not None:
            import asyncio

            self._aqueue = asyncio.Queue(maxsize)

    def put(self, change: JobChange | None) -> None:
        if self._loop is not None and self._aqueue is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
                self._loop.call_soon_threadsafe(self._aput, change)
            return
        with contextlib.suppress(queue.Full):
            if self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(change)

    def _aput(self, change: JobChange | None) -> None:
        assert self._aqueue is not None
        if self._aqueue.full():
            self._aqueue.get_nowait()
        self._aqueue.put_nowait(change)

    def get(self, timeout: float | None = None) -> JobChange | None:
        """The next change, or None on timeout or after ``close()``."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[JobChange]:
        while (change := self._queue.get()) is not None:
            yield change

    def __aiter__(self) -> Subscription:
        if self._aqueue is None:
            raise TypeError("subscribe(loop=...) to iterate asynchronously")
        return self

    async def __anext__(self) -> JobChange:
        assert self._aqueue is not None
        change = await self._aqueue.get()
        if change is None:
            raise StopAsyncIteration
        return change

    def close(self) -> None:
        """Stop receiving; a blocked iteration ends."""
        self._on_close(self)
        self.put(None)
