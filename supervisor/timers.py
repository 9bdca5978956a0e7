"""What is due now: the supervisor loop's periodic duties as a pure decision over its timers.

The loop keeps one ``Timers`` record (monotonic seconds); each tick it asks ``plan`` which of
its store duties are due (heartbeat, reap, claim, outbox replay, state-file save) and, after
acting, ``next_wake`` how long it may sleep. Neither function reads a clock or does I/O, so the
cadence rules are table-driven tests (``tests/unit/test_timers.py``), like the stop rules of
``supervisor.scheduler``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["CHANGE_BEAT_MIN_S", "Plan", "Timers", "next_wake", "plan"]

CHANGE_BEAT_MIN_S: Final = 0.2
"""Least gap between two heartbeats sent early because the store changed (a cancel may wait)."""


@dataclass(slots=True)
class Timers:
    """When each duty is next due. The loop owns it and moves a timer when it acts."""

    beat_at: float = 0.0
    last_beat: float = -math.inf
    reap_at: float = 0.0
    claim_at: float = 0.0
    replay_at: float = math.inf
    """The outbox's next try (infinite while it is empty)."""
    save_at: float | None = None
    """The state file's next save (None: nothing changed since the last one)."""
    store_down_until: float = 0.0
    """While the store is known to be down nothing new is claimed and outcomes go straight to
    the outbox; the next heartbeat or replay probes it again."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The duties due at one tick."""

    beat: bool = False
    reap: bool = False
    claim: bool = False
    replay: bool = False
    save: bool = False


def plan(
    t: Timers,
    now: float,
    *,
    agents: int,
    outbox: int,
    changed: bool,
    stopping: bool,
) -> Plan:
    """The duties due at ``now``.

    - heartbeat: only while agents run; when the store changed (a cancel may be waiting in it)
      at most ``CHANGE_BEAT_MIN_S`` after the previous beat, else at ``beat_at``;
    - replay: while the outbox holds outcomes, at ``replay_at``;
    - reap and claim: never while stopping, while the store is down, or while outcomes wait
      in the outbox (they must reach the store first); reap at ``reap_at``; claim when the
      store changed or at ``claim_at``;
    - save: at ``save_at``.
    """
    beat = False
    if agents:
        beat_at = min(t.beat_at, t.last_beat + CHANGE_BEAT_MIN_S) if changed else t.beat_at
        beat = now >= beat_at
    idle_store = not stopping and now >= t.store_down_until and not outbox
    return Plan(
        beat=beat,
        reap=idle_store and now >= t.reap_at,
        claim=idle_store and (changed or now >= t.claim_at),
        replay=bool(outbox) and now >= t.replay_at,
        save=t.save_at is not None and now >= t.save_at,
    )


def next_wake(
    t: Timers,
    now: float,
    *,
    agents_due: float,
    agents: int,
    check_s: float,
    outbox: int,
    stopping: bool,
    drain_at: float | None,
    poll_s: float | None,
    status_at: float = math.inf,
) -> float:
    """How long the loop may sleep after this tick, in seconds (>= 0).

    ``agents_due``: the next stop deadline of any agent (``scheduler.next_due``); ``check_s``:
    how often running agents' logs are checked against their cap; ``drain_at``: the drain
    deadline while stopping, until SIGTERM went out; ``poll_s``: the longest idle sleep
    (None: none, something else wakes the loop); ``status_at``: the status file's next sign of
    life. The next claim and reap count too, unless the store is down (then not before it may
    be asked again) or outcomes wait in the outbox.
    """
    due = min(agents_due, status_at)
    if agents:
        due = min(due, t.beat_at, now + check_s)
    if outbox:
        due = min(due, t.replay_at)
    if t.save_at is not None:
        due = min(due, t.save_at)
    if stopping:
        if drain_at is not None:
            due = min(due, drain_at)
    else:
        if not outbox:  # with outcomes waiting, the replay decides when the store is next asked
            due = min(due, max(t.store_down_until, min(t.claim_at, t.reap_at)))
        if poll_s is not None:
            due = min(due, now + poll_s)
    return max(0.0, due - now)
