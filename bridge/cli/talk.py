"""What ``agent-supervisor run`` says on stderr while it supervises.

- One human line per job transition (``job 12 (summarize): completed in 3.2 s``, ``failed: exit
  code 1 — retry in 8.0 s (1 of 3 attempts used)``), from the supervisor's ``on_change``.
- With ``--log-format json``, one JSON object per line instead: transitions (``"type": "job"``),
  store outages (``"store"``) and log records (``"log"``), each with ``ts`` and ``message``.
- On a terminal, a one-line summary (running / pending / done / failed) redrawn in place under
  the lines above it.
- A store that stops answering: ONE line when it goes and one when it is back, however many
  calls fail in between. The engine logs each failed call (a retried remote call, a heartbeat,
  an outbox replay); ``OutageFilter`` folds those records into the talker's two lines, and
  while the store is down the talker asks it for the time every ``_PROBE_S`` to notice it back.
- ``-q``: no transition lines and no summary; warnings and outages only. ``-v``: the engine's
  INFO records and every failed call too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TextIO

from supervisor.errors import StoreError
from supervisor.job import LIVE, Status

if TYPE_CHECKING:
    from supervisor.events import JobChange
    from supervisor.settings import Settings
    from supervisor.store import JobStore

__all__ = ["JsonLogFormatter", "OutageFilter", "Talker", "run"]

_PROBE_S: Final = 5.0
"""While the store is down, ask it the time this often to say when it is back (one cheap
call; a remote store's quick retry budget bounds each)."""
_SUMMARY_S: Final = 1.0
_PENDING_LOCAL_S: Final = 2.0
_PENDING_SHARED_S: Final = 15.0
"""How often the summary line asks the store for its counts: a remote store pays a round
trip each time, so it is asked seldom (the remote budget of DESIGN.md)."""
_CLEAR: Final = "\r\x1b[K"
_SYNCED: Final = "synced from the outbox"  # supervisor/sync.py's reason for a replayed outcome

# The engine's records that mean "the store did not answer" (their format strings: stable
# code, unlike the rendered text): folded into one outage line. supervisor/sync.py,
# supervisor/loop.py and supervisor/recovery.py.
_OUTAGE_TEMPLATES: Final = frozenset(
    {
        "store unreachable; running agents carry on, nothing new starts: %s",
        "store unreachable; outcomes wait in the outbox: %s",
        "heartbeat failed: %s",
        "outbox: %d outcomes wait for the store (%s)",
        "job %d: store unavailable, outcome kept in the outbox: %s",
        "reconcile: store unreachable (%s); keeping recorded agents",
    }
)
_BACK_PREFIX: Final = "store reachable again"
"""A record starting with this means the store answers again (the engine may log it)."""
_RETRY_LOGGER: Final = "agent_supervisor.store"
"""The remote stores' logger: one WARNING per retried call."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class JsonLogFormatter(logging.Formatter):
    """A log record as one JSON line: ``ts``, ``type`` ``log``, ``level``, ``logger``, ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": _iso(record.created),
            "type": "log",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        return json.dumps(data, ensure_ascii=False)


class Talker:
    """Writes what ``run`` says to ``stream`` (stderr); every write holds one lock, so lines
    from the supervisor thread, the logging handler and the summary thread never interleave.

    ``fmt`` is ``text`` or ``json``; ``quiet`` drops transitions and the summary; ``summary``
    draws the live line (only on a terminal). ``store`` is asked for counts (summary) and, while
    it is down, for the time (to notice it back). ``wall``/``clock`` are the time seams.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        fmt: str = "text",
        quiet: bool = False,
        summary: bool = False,
        store: JobStore | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._json = fmt == "json"
        self._quiet = quiet
        self._summary = summary and not quiet and not self._json
        self._store = store
        self._wall = wall
        self._clock = clock
        self._lock = threading.RLock()
        self._started: dict[int, float] = {}
        self._live: set[int] = set()
        self._done = 0
        self._failed = 0
        self._cancelled = 0
        self._pending: int | None = None
        self._pending_at = float("-inf")
        self._down_since: float | None = None
        self._probe_at = 0.0
        self._stop = threading.Event()
        self._needed = threading.Event()
        """Set when the thread has work: the store went down (or ``close``). Without a summary
        line the thread sleeps on it, so an idle ``run`` with stderr in a file never wakes."""
        self._thread: threading.Thread | None = None

    # -- what happens ------------------------------------------------------------------------
    def change(self, change: JobChange) -> None:
        """A job changed (the supervisor's ``on_change``, on its thread): say so."""
        if change.reason != "progress":
            self.store_up()  # the loop wrote to the store (claim, start, finish) and it answered
        with self._lock:
            duration = self._account(change)
            if change.reason == "progress" and not self._json:
                return  # not a transition: the job's progress shows in health and show
            message = f"job {change.job_id}: {_words(change, duration)}"
            if self._json:
                self._line(
                    json.dumps(
                        {
                            "ts": _iso(self._wall()),
                            "type": "job",
                            "job_id": change.job_id,
                            "from": change.from_status.value if change.from_status else None,
                            "to": change.to_status.value,
                            "reason": change.reason,
                            "attempt": change.attempt,
                            "progress": change.progress,
                            "duration_s": round(duration, 3) if duration is not None else None,
                            "message": message,
                        },
                        ensure_ascii=False,
                        default=str,
                    ),
                    force=False,
                )
            else:
                self._line(self._stamp(message), force=False)

    def store_down(self, message: str) -> None:
        """A call to the store failed through its retries: one line per outage."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = self._clock()
            self._probe_at = self._down_since + _PROBE_S
            self._needed.set()
            text = f"store unreachable ({message}); no new work until it answers, outcomes wait in the outbox"
            self._event("down", text)

    def store_up(self) -> None:
        """The store answered again: one line, if it had been down."""
        with self._lock:
            if self._down_since is None:
                return
            down_for = self._clock() - self._down_since
            self._down_since = None
            self._event("up", f"store reachable again after {down_for:.0f} s")

    def log(self, text: str) -> None:
        """A formatted log record (OutageFilter let it through)."""
        with self._lock:
            self._line(text, force=True)

    # -- the summary thread -----------------------------------------------------------------
    def start(self) -> None:
        """Redraw the summary every second (on a terminal) and probe a down store; stops with
        ``close``. With neither to do it sleeps until there is."""
        self._thread = threading.Thread(target=self._tick_forever, name="agent-supervisor-talk", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, clear the summary line and print the session's tally."""
        self._stop.set()
        self._needed.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            if self._summary:
                self._stream.write(_CLEAR)
            if not self._quiet and not self._json and (self._done or self._failed or self._cancelled):
                tally = f"{self._done} done, {self._failed} failed"
                tally += f", {self._cancelled} cancelled" if self._cancelled else ""
                self._line(self._stamp(tally), force=True)
            self._stream.flush()

    def tick(self) -> None:
        """One round of the thread: refresh the pending count, probe a down store, redraw."""
        now = self._clock()
        store = self._store
        if store is not None and self._down_since is not None and now >= self._probe_at:
            self._probe_at = now + _PROBE_S
            try:
                store.now()
            except StoreError:
                pass
            else:
                self.store_up()
        if store is not None and self._summary and self._down_since is None:
            every = _PENDING_SHARED_S if getattr(store, "shared", False) else _PENDING_LOCAL_S
            if now - self._pending_at >= every:
                self._pending_at = now
                try:
                    counts = store.counts().by_status
                    self._pending = counts.get(Status.PENDING, 0) + counts.get(Status.WAITING_RETRY, 0)
                except StoreError:
                    pass  # the outage is reported by the loop's own calls
        with self._lock:
            self._redraw()

    def _tick_forever(self) -> None:
        while not self._stop.is_set():
            if not self._summary and self._down_since is None:
                self._needed.wait()  # nothing to draw, nothing to probe: until the store goes down
                self._needed.clear()
                continue
            if self._stop.wait(_SUMMARY_S):
                break
            try:
                self.tick()
            except Exception:
                logging.getLogger("agent_supervisor").debug("summary line failed", exc_info=True)

    # -- internals --------------------------------------------------------------------------
    def _account(self, change: JobChange) -> float | None:
        """Keep the tally; returns how long the attempt ran when it just ended (else None)."""
        job, to = change.job_id, change.to_status
        duration = None
        if to in LIVE:
            self._live.add(job)
            if to is Status.RUNNING and change.from_status is not Status.RUNNING:
                self._started[job] = self._clock()
            return None
        self._live.discard(job)
        started = self._started.pop(job, None)
        if started is not None:
            duration = self._clock() - started
        if to is Status.COMPLETED:
            self._done += 1
        elif to is Status.FAILED:
            self._failed += 1
        elif to is Status.CANCELLED:
            self._cancelled += 1
        return duration

    def _event(self, state: str, text: str) -> None:
        if self._json:
            data = {"ts": _iso(self._wall()), "type": "store", "state": state, "message": text}
            self._line(json.dumps(data, ensure_ascii=False), force=True)
        else:
            self._line(self._stamp(text), force=True)

    def _stamp(self, text: str) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self._wall())) + " " + text

    def _line(self, text: str, *, force: bool) -> None:
        if self._quiet and not force:
            return
        if self._summary:
            self._stream.write(_CLEAR)
        self._stream.write(text + "\n")
        self._redraw()

    def _redraw(self) -> None:
        if self._summary:
            pending = "?" if self._pending is None else str(self._pending)
            down = "  (store unreachable)" if self._down_since is not None else ""
            self._stream.write(
                f"{_CLEAR}running {len(self._live)} · pending {pending} · done {self._done} · "
                f"failed {self._failed}{down}"
            )
        self._stream.flush()


def _words(change: JobChange, duration: float | None) -> str:
    """A transition in a few words."""
    to, src, reason = change.to_status, change.from_status, change.reason
    if to is Status.PREPARING:
        return f"claimed (attempt {change.attempt})"
    if reason.startswith("agent adopted"):  # a restart found it running and supervises it again
        return reason.removeprefix("agent ")
    if to is Status.RUNNING:
        return "started" + (
            f" ({reason.removeprefix('agent started (').rstrip(')')})" if "pid" in reason else ""
        )
    if to is Status.COMPLETED:
        if _SYNCED in reason:  # recorded late: the time since start says nothing of the run
            return f"completed ({_SYNCED})"
        return "completed" + (f" in {duration:.1f} s" if duration is not None else "")
    if to is Status.WAITING_RETRY:
        head, _, tail = reason.partition("; retry in ")
        return f"{_failure(head)} — retry in {tail}" if tail else f"{_failure(head)} — will be retried"
    if to is Status.FAILED:
        head, _, why = reason.partition("; ")
        return _failure(head) + (f" ({why})" if why else "")
    if to is Status.CANCELLED:
        head, _, how = reason.partition("; ")
        return "cancelled" + (f" ({how})" if how else f" ({head})" if head and head != "cancelled" else "")
    return f"{src.value if src else 'new'} → {to.value}: {reason}"


def _failure(what: str) -> str:
    """``exit code 1`` → ``failed: exit code 1``; an error that says what happened stays."""
    if what.startswith(("timed out", "no output for")):
        return what
    return f"failed: {what}"


class OutageFilter(logging.Filter):
    """Folds the engine's "the store did not answer" records into the talker's outage line,
    and the remote stores' per-call retry warnings into nothing (unless ``verbose``)."""

    def __init__(self, talker: Talker, *, verbose: bool) -> None:
        super().__init__()
        self._talker = talker
        self._verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        template = record.msg if isinstance(record.msg, str) else ""
        if template.startswith(_BACK_PREFIX):
            self._talker.store_up()
            return self._verbose
        if template in _OUTAGE_TEMPLATES:
            args = record.args if isinstance(record.args, tuple) else ()
            self._talker.store_down(str(args[-1]) if args else record.getMessage())
            return self._verbose
        if record.name == _RETRY_LOGGER and record.levelno < logging.ERROR:
            return self._verbose
        return True


class _TalkHandler(logging.Handler):
    """Log records as lines of the talker (so they never cut through the summary line)."""

    def __init__(self, talker: Talker, fmt: str) -> None:
        super().__init__()
        self._talker = talker
        if fmt == "json":
            self.setFormatter(JsonLogFormatter())
        else:
            self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._talker.log(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the engine
            self.handleError(record)


def talk_logging(args: argparse.Namespace, talker: Talker) -> logging.Handler:
    """Route every log record through ``talker`` at ``run``'s levels; returns the handler."""
    handler = _TalkHandler(talker, args.log_format)
    handler.addFilter(OutageFilter(talker, verbose=args.verbose > 0))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING - 10 * min(args.verbose, 2))
    return handler


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``run``: supervise in this process until stopped (or idle with ``--until-idle``), saying
    what happens on stderr."""
    from bridge.compose import build_store, build_supervisor

    store = build_store(settings)
    stream = sys.stderr
    talker = Talker(
        stream,
        fmt=args.log_format,
        quiet=args.quiet,
        summary=stream.isatty(),
        store=store,
    )
    handler = talk_logging(args, talker)
    supervisor = build_supervisor(settings, store=store, on_change=talker.change, subreaper=True)
    talker.start()
    try:
        supervisor.run(until_idle=args.until_idle)
    finally:
        talker.close()
        logging.getLogger().removeHandler(handler)
        store.close()
    return 0
