"""Deadlines, cancels and kill escalation as a table: no processes, no sleeping."""

from __future__ import annotations

import pytest

from supervisor.lifecycle import CancelMode, DecidedBy, ErrorKind
from supervisor.scheduler import (
    AgentView,
    Kill,
    StopReason,
    StopState,
    Terminate,
    next_due,
    outcome_for,
    plan_stops,
)

GRACE = 5.0


def agent(**kw: object) -> AgentView:
    base: dict[str, object] = {
        "job_id": 1,
        "started": 100.0,
        "last_output": 100.0,
        "timeout_s": 60.0,
        "idle_timeout_s": None,
    }
    return AgentView(**{**base, **kw})  # type: ignore[arg-type]


CASES = [
    ("healthy agent", agent(), 130.0, []),
    ("deadline reached", agent(), 160.0, [Terminate(1, StopReason.TIMEOUT)]),
    (
        "idle too long",
        agent(idle_timeout_s=10.0, last_output=115.0),
        125.0,
        [Terminate(1, StopReason.IDLE_TIMEOUT)],
    ),
    ("output keeps it alive", agent(idle_timeout_s=10.0, last_output=120.0), 125.0, []),
    ("cancel requested", agent(cancel_requested=CancelMode.CANCEL), 101.0, [Terminate(1, StopReason.CANCEL)]),
    ("kill skips grace", agent(cancel_requested=CancelMode.KILL), 101.0, [Kill(1, StopReason.KILL)]),
    ("lease lost skips grace", agent(lease_lost=True), 101.0, [Kill(1, StopReason.LEASE_LOST)]),
    ("in grace", agent(stop=StopState(StopReason.TIMEOUT, term_at=160.0)), 164.9, []),
    (
        "grace over",
        agent(stop=StopState(StopReason.TIMEOUT, term_at=160.0)),
        165.0,
        [Kill(1, StopReason.TIMEOUT)],
    ),
    (
        "kill during cancel grace",
        agent(cancel_requested=CancelMode.KILL, stop=StopState(StopReason.CANCEL, term_at=101.0)),
        102.0,
        [Kill(1, StopReason.CANCEL)],
    ),
    ("already killed", agent(stop=StopState(StopReason.TIMEOUT, 160.0, kill_at=165.0)), 500.0, []),
    ("no timeout", agent(timeout_s=None), 1e9, []),
    ("limit broken", agent(limit_breach="memory limit 1 GiB exceeded"), 101.0, [Kill(1, StopReason.LIMIT)]),
    (
        "limit broken during grace",
        agent(limit_breach="x", stop=StopState(StopReason.CANCEL, term_at=101.0)),
        102.0,
        [Kill(1, StopReason.CANCEL)],
    ),
]


@pytest.mark.parametrize(("name", "view", "now", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan_stops(name: str, view: AgentView, now: float, expected: list[object]) -> None:
    """Each situation yields exactly the stop action DESIGN.md prescribes."""
    assert plan_stops([view], now, GRACE) == expected


def test_next_due_is_the_earliest_deadline() -> None:
    """The loop sleeps until the earliest timeout, idle deadline or end of grace."""
    views = [
        agent(job_id=1),
        agent(job_id=2, idle_timeout_s=10.0, last_output=120.0),
        agent(job_id=3, stop=StopState(StopReason.CANCEL, term_at=125.0)),
    ]
    assert next_due(views, GRACE) == 130.0
    assert next_due([], GRACE) == float("inf")


@pytest.mark.parametrize(
    ("exit_code", "sig", "stop", "kind", "decided"),
    [
        (0, None, None, None, DecidedBy.EXIT),
        (3, None, None, ErrorKind.EXIT_CODE, DecidedBy.EXIT),
        (None, 9, None, ErrorKind.KILLED, DecidedBy.EXIT),
        (0, None, StopState(StopReason.TIMEOUT, 1.0), ErrorKind.TIMEOUT, DecidedBy.TIMEOUT),
        (None, 9, StopState(StopReason.IDLE_TIMEOUT, 1.0), ErrorKind.IDLE_TIMEOUT, DecidedBy.IDLE_TIMEOUT),
        (None, 15, StopState(StopReason.CANCEL, 1.0), ErrorKind.CANCELLED, DecidedBy.CANCEL),
        (None, 9, StopState(StopReason.SHUTDOWN, 1.0), ErrorKind.KILLED, DecidedBy.SHUTDOWN),
        (None, None, None, ErrorKind.LOST, DecidedBy.RECONCILE),
    ],
)
def test_outcome_for(
    exit_code: int | None, sig: int | None, stop: StopState | None, kind: ErrorKind | None, decided: DecidedBy
) -> None:
    """How an agent ended maps to the recorded error kind and the part that decided."""
    got_kind, error, got_decided, forgive = outcome_for(
        exit_code=exit_code, signal_number=sig, stop=stop, timeout_s=60, idle_timeout_s=10
    )
    assert (got_kind, got_decided) == (kind, decided)
    assert forgive is (stop is not None and stop.reason is StopReason.SHUTDOWN)
    assert (error is None) is (kind is None)
