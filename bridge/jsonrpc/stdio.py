"""``agent-supervisor bridge``: the stdio JSON-RPC server a plugin host spawns and keeps.

A small line loop around ``dispatch.Dispatcher`` (decode → dispatch → encode, calling
``bridge.service.JobService``) and ``backend.Bridge`` (the supervisor, notifications). Here:

- ``read_lines``: stdin in 64 KiB chunks, cut into lines; a line over 1 MiB is dropped as it
  streams in, never held whole;
- ``serve``: the main thread blocks in ``select`` on stdin (no polling), answers one line at a
  time, and holds ``order`` while it dispatches and queues the answer;
- ``Writer``: the only thread that writes stdout. Answers and notifications go through its
  queue, so a host that stops reading can never stall the supervisor's heartbeats; answers are
  never dropped (reading stdin pauses instead), notifications are dropped past 10,000 queued;
- ``run_bridge``: fd 1 becomes stderr (only the writer has the real stdout), the signals.

Lifecycle: EOF on stdin, ``shutdown``, SIGTERM, SIGINT or SIGHUP stop the server gracefully:
running agents drain for ``drain_timeout_s`` and are stopped, or are left for the next bridge
to adopt (``orphan_policy = adopt`` or ``shutdown {"leave_agents": true}``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Final

from bridge.jsonrpc.backend import Bridge, Sink
from bridge.jsonrpc.dispatch import Dispatcher, RpcError, encode, error_response
from bridge.jsonrpc.protocol import INVALID_REQUEST, schema_document
from supervisor.settings import Settings
from supervisor.signals import on_stop_signals

__all__ = ["MAX_LINE", "Writer", "read_lines", "run_bridge", "serve"]

log = logging.getLogger("agent_supervisor.bridge")

MAX_LINE: Final = 1 << 20
"""Longest accepted input line in bytes (1 MiB), newline excluded."""
_CHUNK: Final = 1 << 16
_MAX_QUEUED_NOTIFICATIONS: Final = 10_000
_HIGH_WATER: Final = 256
"""Queued lines above which the main thread stops reading requests until the host reads."""


def read_lines(
    read: Callable[[int], bytes], cap: int = MAX_LINE, chunk: int = _CHUNK
) -> Iterator[bytes | None]:
    """Each line of the stream, without its ``\\n`` (or ``\\r\\n``); None for a line longer than
    ``cap``, which is dropped chunk by chunk as it arrives, never held whole in memory."""
    buf = bytearray()
    discarding = False
    while data := read(chunk):
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            piece = data[start:nl]
            start = nl + 1
            if discarding or len(buf) + len(piece) > cap:
                buf.clear()
                discarding = False
                yield None
            else:
                buf += piece
                line = bytes(buf[:-1] if buf.endswith(b"\r") else buf)
                buf.clear()
                yield line
        if not discarding:
            if len(buf) + len(data) - start > cap:
                buf.clear()
                discarding = True
            else:
                buf += data[start:]
    if discarding:
        yield None
    elif buf:
        yield bytes(buf)


class Writer:
    """The only writer of the protocol stream: a queue drained by one thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._items: deque[bytes] = deque()
        self._closed = False
        self.broken = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="bridge-writer", daemon=True)
        self._thread.start()

    def put(self, line: bytes, *, droppable: bool = False) -> None:
        with self._cond:
            if self.broken:
                return
            if droppable and len(self._items) >= _MAX_QUEUED_NOTIFICATIONS:
                self.dropped += 1
                if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8 …: tell, without flooding
                    log.warning("the host is not reading stdout: %d notifications dropped", self.dropped)
                return
            self._items.append(line)
            self._cond.notify_all()

    def wait_below(self, count: int = _HIGH_WATER) -> None:
        """Block while ``count`` or more lines wait: backpressure on a host that does not read."""
        with self._cond:
            while len(self._items) >= count and not self.broken:
                self._cond.wait()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                # Everything queued goes in one write: each line is complete, and no buffer
                # sits between us and the pipe, so every message is flushed as it is written.
                data = b"".join(self._items)
                self._items.clear()
                self._cond.notify_all()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:  # EPIPE: the host closed our stdout; EOF on stdin follows
                log.warning("cannot write to the host: %s; answers are dropped from now on", exc.strerror)
                with self._cond:
                    self.broken = True
                    self._items.clear()
                    self._cond.notify_all()
                return


class _Input:
    """stdin as ``read(n)`` that a stop signal ends as if at EOF.

    ``select`` on stdin and the signal wakeup fd (``signal.set_wakeup_fd``): the read blocks,
    costs nothing while idle, and returns when a signal arrives, without raising from inside
    a handler (PEP 475 would otherwise resume a blocked ``read`` after the handler returns).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.stop = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def read(self, size: int) -> bytes:
        while not self.stop:
            ready, _, _ = select.select([self.fd, self.wake_r], [], [])
            if self.fd in ready:
                return os.read(self.fd, size)
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 512)
        return b""

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)


def serve(
    dispatcher: Dispatcher,
    out: Sink,
    read: Callable[[int], bytes],
    *,
    order: AbstractContextManager[Any] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Answer line after line until EOF or ``stopped()`` (a ``shutdown`` request). ``order``
    is held while a line is dispatched and its answer queued (see the module docstring)."""
    too_long = encode(
        error_response(None, RpcError(INVALID_REQUEST, f"line too long: over {MAX_LINE} bytes"))
    )
    order = order if order is not None else contextlib.nullcontext()
    for line in read_lines(read):
        if line is None:
            out.put(too_long)
        elif line.strip():  # blank lines are ignored: hosts (and people) send stray newlines
            with order:
                reply = dispatcher.handle(line)
                if reply is not None:
                    out.put(reply)
        out.wait_below()
        if stopped():
            return


def _stop_signals(inp: _Input, bridge: Bridge) -> contextlib.AbstractContextManager[bool]:
    """SIGTERM, SIGINT, SIGHUP → stop like EOF; a second one while stopping → no drain. The
    signal also wakes the input's ``select`` (``wakeup_fd``)."""

    def handler(signum: int) -> None:
        if inp.stop:
            bridge.interrupt()
        inp.stop = True

    return on_stop_signals(
        handler, signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP), wakeup_fd=inp.wake_w
    )


def run_bridge(args: argparse.Namespace, make_settings: Callable[..., Settings]) -> int:
    """The ``bridge`` command: ``--schema`` prints the JSON Schema; otherwise serve stdio."""
    if args.schema:
        sys.stdout.write(json.dumps(schema_document(), indent=2) + "\n")
        return 0
    settings = make_settings()
    # The protocol gets a private copy of stdout, and fd 1 becomes stderr: a stray print, a
    # library's warning or a child that inherits fd 1 can never corrupt the message stream.
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    writer = Writer(out_fd)
    inp = _Input(sys.stdin.fileno())
    bridge = Bridge(settings, writer, run=not args.no_run)
    try:
        with _stop_signals(inp, bridge):
            bridge.open()
            log.info("bridge ready: mode %s, data dir %s", bridge.mode, settings.data_dir)
            serve(
                Dispatcher(bridge.service, bridge),
                writer,
                inp.read,
                order=bridge.order,
                stopped=lambda: bridge.stop_request is not None,
            )
            drain, leave = bridge.stop_request or (True, None)
            bridge.close(drain=drain, leave_agents=leave)
    finally:
        with contextlib.suppress(Exception):
            bridge.close()  # idempotent after the graceful path; the store closes either way
        writer.close()
        os.close(out_fd)
        inp.close()
    return 0
