"""Faults the Supabase stand-in (tests/standin/postgrest.py) injects into requests.

Each is something the hosted service does to a client now and then, and each is produced at the
socket, so the production client meets it as it would in the field:

=============  ==================================================================================
``RESET``      the connection is reset after the request arrived; the call never ran
``TIMEOUT``    no answer until the client gives up (its read timeout); the call never ran
``GATEWAY_503``  a 503 page from the gateway (``Retry-After: 0``); the call never ran
``LOST``       the call ran and COMMITTED, then the connection is reset: the answer is lost
``OVERLAP``    the gateway answers 504 at once while the call runs on, its transaction held
               open until the client's retry of it is inside the database (waiting on a lock,
               or finished): the retry overlaps the first call, as after a gateway timeout
``OUTAGE``     every request is reset (``Faults.outage``)
=============  ==================================================================================

Faults are scripted (``plan``: the next matching requests) or random (``rate`` among ``kinds``,
seeded). ``injected`` counts what was done.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from tests.standin.postgrest import Call, PostgrestStandin

__all__ = ["Fault", "Faults"]


class Fault(enum.StrEnum):
    RESET = "reset"
    TIMEOUT = "timeout"
    GATEWAY_503 = "503"
    LOST = "lost"
    OVERLAP = "overlap"
    OUTAGE = "outage"


class Faults:
    """The fault plan of one stand-in. Thread-safe."""

    def __init__(self) -> None:
        self.rate = 0.0
        self.kinds: Sequence[Fault] = (Fault.RESET, Fault.TIMEOUT, Fault.GATEWAY_503, Fault.LOST)
        self.rng = random.Random(4)
        self.outage = False
        self.timeout_hold_s = 3.0
        """How long a TIMEOUT request is held: longer than the client's read timeout."""
        self.overlap_deadline_s = 10.0
        self.injected: Counter[str] = Counter()
        self.overlaps: list[str] = []
        """Per OVERLAP fault, what the held call saw of its retry: 'blocked' or 'finished'."""
        self.running: list[threading.Thread] = []
        self._scripted: list[tuple[str | None, Fault]] = []
        self._lock = threading.Lock()
        self._release = threading.Event()

    def plan(self, fault: Fault, fn: str | None = None, times: int = 1) -> None:
        """The next ``times`` requests to ``fn`` (any function when None) meet ``fault``."""
        with self._lock:
            self._scripted.extend([(fn, fault)] * times)

    def take(self, fn: str) -> Fault | None:
        """The fault for this request to ``fn``, if any (and count it)."""
        with self._lock:
            fault: Fault | None = None
            if self.outage:
                fault = Fault.OUTAGE
            else:
                for i, (wanted, planned) in enumerate(self._scripted):
                    if wanted is None or wanted == fn:
                        fault = planned
                        del self._scripted[i]
                        break
                else:
                    if self.rate and self.rng.random() < self.rate:
                        fault = self.rng.choice(list(self.kinds))
            if fault is not None:
                self.injected[fault.value] += 1
            return fault

    @property
    def pending(self) -> int:
        """Scripted faults not used yet."""
        with self._lock:
            return len(self._scripted)

    def wait_out(self, stopping: threading.Event) -> None:
        """Hold a TIMEOUT request (the stand-in's close ends the wait)."""
        self._release.wait(self.timeout_hold_s) or stopping.wait(0)

    def release_all(self) -> None:
        """End every held request now (closing the stand-in)."""
        self._release.set()
        for thread in self.running:
            thread.join(timeout=15)

    def hold_for_retry(self, standin: PostgrestStandin, call: Call) -> None:
        """Keep ``call``'s transaction open until a later call of the same function is inside
        the database and either waits on a lock (it is serialised behind us) or has finished
        (it was not); then let the first call commit."""
        deadline = time.monotonic() + self.overlap_deadline_s
        with psycopg.connect(standin._authenticator_dsn(), autocommit=True) as monitor:
            while time.monotonic() < deadline and not self._release.is_set():
                later = [c for c in standin.calls if c.fn == call.fn and c.n > call.n]
                if later:
                    retry = later[0]
                    if retry.done.is_set():
                        self.overlaps.append("finished")
                        return
                    if retry.pid is not None and _waits_on_lock(monitor, retry.pid):
                        self.overlaps.append("blocked")
                        return
                time.sleep(0.01)
        self.overlaps.append("no retry")


def _waits_on_lock(monitor: psycopg.Connection[Any], pid: int) -> bool:
    row = monitor.execute(
        "select wait_event_type from pg_stat_activity where pid = %s and state = 'active'", (pid,)
    ).fetchone()
    return row is not None and row[0] == "Lock"
