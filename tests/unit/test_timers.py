"""The loop's cadence rules (``supervisor.timers``) as tables: what is due, how long to sleep."""

from __future__ import annotations

import math

import pytest

from supervisor.timers import CHANGE_BEAT_MIN_S, Plan, Timers, next_wake, plan

NOW = 100.0


def timers(**fields: float | None) -> Timers:
    t = Timers(beat_at=math.inf, reap_at=math.inf, claim_at=math.inf)
    for name, value in fields.items():
        setattr(t, name, value)
    return t


@pytest.mark.parametrize(
    ("t", "kw", "expected"),
    [
        # heartbeat: only with agents; at beat_at, or early when the store changed
        (timers(beat_at=NOW), {"agents": 0}, Plan()),
        (timers(beat_at=NOW), {"agents": 2}, Plan(beat=True)),
        (
            timers(beat_at=NOW + 5, last_beat=NOW - 1),
            {"agents": 1, "changed": True},
            Plan(beat=True, claim=True),
        ),
        (timers(beat_at=NOW + 5, last_beat=NOW - 0.1), {"agents": 1, "changed": True}, Plan(claim=True)),
        # claim: on a change or at claim_at; never while stopping, the store is down, or outcomes wait
        (timers(claim_at=NOW), {}, Plan(claim=True)),
        (timers(claim_at=NOW + 1), {}, Plan()),
        (timers(claim_at=NOW), {"stopping": True}, Plan()),
        (timers(claim_at=NOW, store_down_until=NOW + 1), {}, Plan()),
        (timers(claim_at=NOW, replay_at=NOW + 3), {"outbox": 1}, Plan()),
        (timers(reap_at=NOW), {}, Plan(reap=True)),
        # replay: only with outcomes waiting, at replay_at (even while the store is "down")
        (timers(replay_at=NOW, store_down_until=NOW + 9), {"outbox": 2}, Plan(replay=True)),
        (timers(replay_at=NOW), {"outbox": 0}, Plan()),
        # save: at save_at
        (timers(save_at=NOW), {}, Plan(save=True)),
        (timers(save_at=NOW + 0.01), {}, Plan()),
    ],
)
def test_plan(t: Timers, kw: dict[str, object], expected: Plan) -> None:
    """Each duty is due exactly under its rule (see ``timers.plan``)."""
    args = {"agents": 0, "outbox": 0, "changed": False, "stopping": False, **kw}
    assert plan(t, NOW, **args) == expected  # type: ignore[arg-type]


def wake(t: Timers, **kw: object) -> float:
    args: dict[str, object] = {
        "agents_due": math.inf,
        "agents": 0,
        "check_s": 0.1,
        "outbox": 0,
        "stopping": False,
        "drain_at": None,
        "poll_s": None,
        **kw,
    }
    return next_wake(t, NOW, **args)  # type: ignore[arg-type]


def test_an_idle_loop_with_a_pushing_store_sleeps_until_its_next_duty() -> None:
    """Nothing runs and the store pushes hints: sleep until the next reap, however far."""
    assert wake(timers(reap_at=NOW + 30)) == pytest.approx(30)


def test_without_push_the_idle_loop_polls() -> None:
    """A store that cannot push is asked every poll_s."""
    assert wake(timers(reap_at=NOW + 30), poll_s=1.0) == pytest.approx(1.0)


def test_running_agents_are_checked_and_heartbeats_kept() -> None:
    """With agents, the loop wakes for log checks and the next heartbeat."""
    assert wake(timers(beat_at=NOW + 5), agents=1) == pytest.approx(0.1)
    assert wake(timers(beat_at=NOW + 0.05), agents=1) == pytest.approx(0.05)
    assert wake(timers(), agents=1, agents_due=NOW + 0.02) == pytest.approx(0.02)


def test_a_down_store_is_not_asked_before_it_may_be() -> None:
    """A claim that is due while the store is down waits for store_down_until."""
    assert wake(timers(claim_at=NOW, store_down_until=NOW + 7)) == pytest.approx(7)


def test_with_outcomes_waiting_only_the_replay_wakes_the_loop_for_the_store() -> None:
    """Outcomes in the outbox: the claim timer is not a reason to wake (no busy loop on a
    claim that cannot happen); the replay is."""
    assert wake(timers(claim_at=NOW - 50, replay_at=NOW + 4), outbox=1) == pytest.approx(4)


def test_stopping_waits_for_the_drain_deadline_only() -> None:
    """While stopping, the drain deadline counts, claims and polls do not."""
    assert wake(timers(claim_at=NOW), stopping=True, drain_at=NOW + 3, poll_s=1.0) == pytest.approx(3)


def test_the_early_beat_gap_is_short() -> None:
    """An early beat (a store change) comes at most CHANGE_BEAT_MIN_S after the last one."""
    assert 0 < CHANGE_BEAT_MIN_S <= 0.5
