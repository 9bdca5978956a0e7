"""Outcome synchronisation: every attempt's outcome reaches the store, or waits durably.

``OutcomeSync.record`` writes an outcome with its fencing pair; when the store does not answer
through its retries, the outcome goes to the durable outbox (``supervisor.outbox``) and is
replayed in order once the store answers again. While the store is known to be down (or older
outcomes still wait) new outcomes go straight to the outbox: each call to a dead store spends
its whole retry budget, during which the loop's thread could not enforce any agent's deadline.
Replays are safe because ``JobStore.finish`` is idempotent for the attempt that settled a job.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Final

from supervisor.clock import Clock
from supervisor.errors import LeaseLostError, StateFileError, StoreError, StoreUnavailableError
from supervisor.job import Job, Outcome, Status
from supervisor.outbox import Outbox, OutboxEntry
from supervisor.store import JobStore
from supervisor.timers import Timers

__all__ = ["OutcomeSync"]

log = logging.getLogger("agent_supervisor")

_RETRY_MAX_S: Final = 10.0  # a probe is one quick call: outcomes sync <= 10 s after an outage
_FIRST_TRY_S: Final = 1.0


class OutcomeSync:
    """Records outcomes (fenced), keeps them in the outbox while the store is down, replays.

    ``timers`` is the loop's: this object moves ``store_down_until`` and ``replay_at``.
    ``emit(job, before, reason)`` announces a recorded change; ``down_for_s`` is how long a
    failed call marks the store as down (the heartbeat interval).
    """

    def __init__(
        self,
        store: JobStore,
        outbox: Outbox,
        timers: Timers,
        *,
        clock: Clock,
        emit: Callable[[Job, Status | None, str], None],
        down_for_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._timers = timers
        self._clock = clock
        self._emit = emit
        self.down_for_s = down_for_s
        self._rng = rng or random.Random()
        self._unsaved: list[OutboxEntry] = []
        self._fails = 0
        self.last_error: str | None = None
        """The last reason the store could not be reached (None once it answers)."""
        self.down_since: float | None = None
        """Wall-clock time the store stopped answering (None while it answers)."""
        self.write_error: str | None = None
        """Why the outbox could not be written durably (a full disk), while that lasts."""
        if len(outbox):
            timers.replay_at = 0.0

    @property
    def depth(self) -> int:
        """Outcomes waiting for the store (in the outbox file, or in memory on a full disk)."""
        return len(self._outbox) + len(self._unsaved)

    def record(
        self, job_id: int, worker: str, attempt: int, outcome: Outcome, *, before: Status | None
    ) -> None:
        """Write an attempt's outcome, fenced; into the durable outbox if the store is down."""
        if self.depth or self._clock.monotonic() < self._timers.store_down_until:
            self._keep(OutboxEntry(job_id, worker, attempt, outcome))
            return
        try:
            new = self._store.finish(job_id, worker, attempt, outcome)
        except LeaseLostError as exc:
            log.warning("job %d: outcome not recorded, %s", job_id, exc)
            return
        except StoreUnavailableError as exc:
            log.warning("job %d: store unavailable, outcome kept in the outbox: %s", job_id, exc)
            self.store_down(exc)
            self._keep(OutboxEntry(job_id, worker, attempt, outcome))
            return
        reason = new.error or str(new.status)
        if new.status is Status.WAITING_RETRY:
            reason += (
                f"; retry in {max(0.0, new.run_after - new.updated_at):.1f} s "
                f"({new.attempts_used} of {new.max_attempts} attempts used)"
            )
        self._emit(new, before, reason)

    def store_down(self, exc: StoreError) -> None:
        """The store did not answer through its retries: claim nothing and send outcomes to the
        outbox for ``down_for_s`` (the next heartbeat or replay probes it again)."""
        now = self._clock.monotonic()
        if self.down_since is None:  # one line when it goes down, one when it is back
            log.warning("store unreachable; running agents carry on, nothing new starts: %s", exc)
            self.down_since = self._clock.time()
        self._timers.store_down_until = now + self.down_for_s
        self.last_error = str(exc)

    def store_answered(self) -> None:
        """A call got through (a heartbeat, a claim): replay the outbox now, not after its
        backoff."""
        if self.down_since is not None:
            log.warning("store reachable again after %.0f s", self._clock.time() - self.down_since)
        self.last_error = None
        self.down_since = None
        if self.depth:
            self._timers.replay_at = 0.0

    def replay(self, now: float) -> None:
        """Replay kept outcomes in order; back off while the store does not answer.

        After a failed try, a cheap ``store.now()`` probes first: a ``finish`` to a dead remote
        store spends its whole retry budget (30 s by default), during which the loop enforces
        no deadline; the probe gives up within the quick budget (5 s)."""
        pending = [*self._outbox.entries, *self._unsaved]
        if not pending:
            self._timers.replay_at = float("inf")
            return
        if self._fails:
            try:
                self._store.now()
            except StoreError as exc:
                self._backoff(now, exc, len(pending))
                return
        done = 0
        for entry in pending:
            try:
                new = self._store.finish(entry.job_id, entry.worker, entry.attempt, entry.outcome)
                self._emit(new, None, f"{new.error or new.status} (synced from the outbox)")
            except LeaseLostError as exc:
                log.warning("outbox: job %d: %s; dropped", entry.job_id, exc)
            except StoreError as exc:
                self._backoff(now, exc, len(pending) - done)
                break
            done += 1
        else:
            self._fails = 0
            if self.down_since is not None:
                log.warning("store reachable again after %.0f s", self._clock.time() - self.down_since)
            self.last_error = None
            self.down_since = None
            self._timers.replay_at = float("inf")
        saved = min(done, len(self._outbox))
        if saved:
            try:
                self._outbox.drop_first(saved)
            except StateFileError as exc:  # replayed again later: finish is idempotent
                log.error("outbox: %s", exc)
        del self._unsaved[: done - saved]

    def _keep(self, entry: OutboxEntry) -> None:
        try:
            self._outbox.append(entry)
            self.write_error = None
        except StateFileError as exc:  # disk full: keep it in memory, and say so loudly
            log.error("outbox not durable: %s", exc)
            self.write_error = str(exc)
            self._unsaved.append(entry)
        self._timers.replay_at = min(self._timers.replay_at, self._clock.monotonic() + _FIRST_TRY_S)

    def _backoff(self, now: float, exc: StoreError, waiting: int) -> None:
        self._fails += 1
        self.last_error = str(exc)
        if self.down_since is None:
            log.warning("store unreachable; outcomes wait in the outbox: %s", exc)
            self.down_since = self._clock.time()
        delay = min(_RETRY_MAX_S, 0.5 * 2**self._fails)
        self._timers.replay_at = now + self._rng.uniform(delay / 2, delay)
        # Said once when the store went down (store_down); each retry only at debug level.
        log.debug("outbox: %d outcomes wait for the store (%s)", waiting, exc)
