"""The admission gate as a table: slots, per-kind limits, memory, load and stagger."""

from __future__ import annotations

from pathlib import Path

from supervisor.admission import GateState, Machine, RunningAgent, admit, recommend
from supervisor.settings import Settings

GIB = 1 << 30


def settings(**kw: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": Path("/tmp/as-unused"),
        "concurrency": 4,
        "memory_estimate_bytes": GIB,
        "memory_reserve_bytes": GIB,
    }
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def agent(kind: str | None = None, est: int = GIB, rss: int = 0) -> RunningAgent:
    return RunningAgent(kind, est, rss)


def test_open_with_room_and_claim_size_bounded_by_memory() -> None:
    """With 3.5 GiB of headroom and 1 GiB agents, at most 3 may start in one claim."""
    gate = admit(settings(), [], Machine(int(4.5 * GIB), 8 * GIB), now=0, last_start=None)
    assert (gate.state, gate.limit, gate.only_kinds) == (GateState.OPEN, 3, None)


def test_full_when_every_slot_is_busy() -> None:
    """All slots busy is 'full', not 'blocked'."""
    gate = admit(settings(concurrency=1), [agent()], Machine(16 * GIB, 16 * GIB), now=0, last_start=None)
    assert (gate.state, gate.limit) == (GateState.FULL, 0)


def test_memory_promised_to_young_agents_counts() -> None:
    """A running agent that has not grown into its estimate yet still holds its memory."""
    gate = admit(settings(), [agent(rss=100 << 20)], Machine(int(2.5 * GIB), 8 * GIB), now=0, last_start=None)
    assert gate.state is GateState.BLOCKED
    assert "promised" in (gate.reason or "")
    grown = admit(settings(), [agent(rss=GIB)], Machine(int(2.5 * GIB), 8 * GIB), now=0, last_start=None)
    assert grown.state is GateState.OPEN


def test_big_kinds_are_excluded_and_small_ones_still_run() -> None:
    """When only a small kind fits, the big kind is excluded and raw commands (default
    estimate) are not claimed."""
    s = settings(
        memory_estimate_bytes=4 * GIB,
        kinds={
            "small": {"argv": ["x"], "memory_estimate_bytes": GIB // 2},
            "big": {"argv": ["y"], "memory_estimate_bytes": 8 * GIB},
        },
    )
    gate = admit(s, [], Machine(2 * GIB, 8 * GIB), now=0, last_start=None)
    assert gate.state is GateState.OPEN
    assert gate.only_kinds == frozenset({"small"})
    assert "big" in gate.exclude_kinds


def test_per_kind_max_concurrent() -> None:
    """A kind at its max_concurrent is excluded; another kind's room bounds the claim."""
    s = settings(kinds={"a": {"argv": ["x"], "max_concurrent": 1}, "b": {"argv": ["y"], "max_concurrent": 2}})
    gate = admit(s, [agent("a")], Machine(32 * GIB, 32 * GIB), now=0, last_start=None)
    assert (gate.exclude_kinds, gate.limit) == (frozenset({"a"}), 2)


def test_load_and_stagger_gates() -> None:
    """A high load per CPU or a recent start blocks with the reason."""
    loaded = admit(
        settings(max_load_per_cpu=1.5), [], Machine(32 * GIB, 32 * GIB, 2.0), now=0, last_start=None
    )
    assert loaded.state is GateState.BLOCKED and "CPU load" in (loaded.reason or "")
    stagger = admit(settings(start_stagger_s=2), [], Machine(32 * GIB, 32 * GIB), now=10, last_start=9)
    assert stagger.state is GateState.BLOCKED and "stagger" in (stagger.reason or "")
    later = admit(settings(start_stagger_s=2), [], Machine(32 * GIB, 32 * GIB), now=11.5, last_start=9)
    assert later.state is GateState.OPEN


def test_recommendation_from_observed_use() -> None:
    """The recommended concurrency is bounded by memory and by CPU, whichever is tighter,
    and by four agents per CPU; none before five attempts were seen."""
    peaks, cpus = [GIB] * 5, [50.0] * 5
    assert recommend(16 * GIB, GIB, 8, peaks, cpus, current=2).concurrency == 15
    assert recommend(16 * GIB, GIB, 2, peaks, [100.0] * 5, current=2).concurrency == 2
    assert recommend(16 * GIB, GIB, 2, [GIB] * 4, cpus, current=2).concurrency is None


def test_light_agents_get_a_recommendation_a_person_would_believe() -> None:
    """5 MB agents using no CPU on 2 CPUs: capped at 4 per CPU (8), not thousands."""
    advice = recommend(24 * GIB, GIB // 2, 2, [5 << 20] * 20, [0.5] * 20, current=2)
    assert advice.concurrency == 8
    assert advice.can_increase and "per CPU" in advice.reason


def test_the_recommendation_is_steady_across_refreshes() -> None:
    """One heavy outlier among recent attempts does not swing the answer (90th percentile)."""
    window = [512 << 20] * 19
    a = recommend(16 * GIB, GIB, 8, [*window, 8 * GIB], [20.0] * 20, current=4).concurrency
    b = recommend(16 * GIB, GIB, 8, [8 * GIB, *window], [20.0] * 20, current=4).concurrency
    assert a == b
    assert a is not None and a >= 8


def test_no_increase_is_advised_at_the_limit() -> None:
    """When the setting already equals what fits, the answer is no, with the binding limit."""
    advice = recommend(16 * GIB, GIB, 8, [5 * GIB] * 5, [10.0] * 5, current=3)
    assert (advice.concurrency, advice.can_increase) == (3, False)
    assert "memory" in advice.reason
