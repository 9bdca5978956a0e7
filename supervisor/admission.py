"""Admission control: may the supervisor start another agent now, and of which kinds?

Pull, not push: when the gate is closed the supervisor claims nothing, so the work stays in
the queue for a supervisor (or a moment) that can afford it. Pure: the loop passes what it
measured (memory, load, its running agents) and executes the answer.

Memory is the resource that crashes laptops (eight ~1 GB agents at once), so an agent starts
only while ``available - reserve - promised`` covers its kind's estimate, where ``promised``
is what running agents are expected to grow into (estimate minus what they use so far: a
freshly started agent has not allocated yet, and counting only its current RSS would let a
burst of starts overshoot).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from supervisor.settings import KindConfig, Settings

__all__ = [
    "Gate",
    "GateState",
    "Machine",
    "Recommendation",
    "RunningAgent",
    "admit",
    "estimate_for",
    "recommend",
]


class GateState(StrEnum):
    OPEN = "open"
    FULL = "full"
    """Every slot is busy: normal under load, not a problem."""
    BLOCKED = "blocked"
    """Slots are free but the machine cannot afford another agent (memory, CPU, stagger)."""


@dataclass(frozen=True, slots=True)
class RunningAgent:
    kind: str | None
    estimate_bytes: int
    rss_bytes: int
    """Current RSS of its whole tree (0 until first sampled)."""


@dataclass(frozen=True, slots=True)
class Machine:
    available_bytes: int
    total_bytes: int
    load_per_cpu: float | None = None


@dataclass(frozen=True, slots=True)
class Gate:
    state: GateState
    reason: str | None
    limit: int
    """How many jobs one claim may take now (0 when not open)."""
    exclude_kinds: frozenset[str] = frozenset()
    only_kinds: frozenset[str] | None = None
    """When raw commands and unregistered kinds do not fit, claim only these kinds."""
    headroom_bytes: int = 0
    retry_in_s: float | None = None
    """When the gate opens by itself (a stagger ends); None: when something changes."""
    reason_key: str | None = None
    """The reason as a stable word (``slots``, ``stagger``, ``cpu_load``, ``memory``): alerts
    key on it, not on the text, which carries numbers that change every time."""
    never_fit: frozenset[str] = frozenset()
    """Kinds (``"(commands)"`` for raw commands and unregistered kinds) whose memory estimate
    exceeds this machine's total minus the reserve: never claimed here, reported by health."""


def estimate_for(settings: Settings, kind: str | None) -> int:
    """The memory an agent of ``kind`` is expected to use."""
    config = settings.kinds.get(kind) if kind is not None else None
    return (config.memory_estimate_bytes if config else None) or settings.memory_estimate_bytes


def admit(
    settings: Settings,
    running: Sequence[RunningAgent],
    machine: Machine,
    *,
    now: float,
    last_start: float | None,
    claim_kinds: Collection[str] | None = None,
) -> Gate:
    """The gate's answer at ``now`` (monotonic seconds)."""
    free = settings.concurrency - len(running)
    if free <= 0:
        return Gate(GateState.FULL, f"all {settings.concurrency} slots busy", 0, reason_key="slots")
    if last_start is not None and now - last_start < settings.start_stagger_s:
        wait = settings.start_stagger_s - (now - last_start)
        reason = f"staggering starts: next in {wait:.1f} s"
        return Gate(GateState.BLOCKED, reason, 0, retry_in_s=wait, reason_key="stagger")
    limit_load = settings.max_load_per_cpu
    if limit_load is not None and machine.load_per_cpu is not None and machine.load_per_cpu > limit_load:
        reason = f"CPU load {machine.load_per_cpu:.2f} per CPU is above {limit_load:g}"
        return Gate(GateState.BLOCKED, reason, 0, reason_key="cpu_load")
    promised = sum(max(0, a.estimate_bytes - a.rss_bytes) for a in running)
    headroom = machine.available_bytes - settings.memory_reserve_bytes - promised
    ceiling = machine.total_bytes - settings.memory_reserve_bytes  # what this machine could ever give
    exclude, limit = _saturated(settings.kinds, running, free)
    candidates = {
        name: estimate_for(settings, name)
        for name in settings.kinds
        if name not in exclude and (claim_kinds is None or name in claim_kinds)
    }
    never = {name for name, est in candidates.items() if machine.total_bytes and est > ceiling}
    default_never = (
        claim_kinds is None and bool(machine.total_bytes) and settings.memory_estimate_bytes > ceiling
    )
    never_fit = frozenset(never | ({"(commands)"} if default_never else set()))
    fitting = {name: est for name, est in candidates.items() if est <= headroom}
    exclude |= set(candidates) - set(fitting)
    default_fits = claim_kinds is None and settings.memory_estimate_bytes <= headroom
    if not fitting and not default_fits:
        needed = min([*candidates.values(), settings.memory_estimate_bytes])
        reason = (
            f"memory: {_gib(machine.available_bytes)} available - {_gib(settings.memory_reserve_bytes)} "
            f"reserve - {_gib(promised)} promised to running agents < {_gib(needed)} needed"
        )
        return Gate(
            GateState.BLOCKED, reason, 0, headroom_bytes=headroom, reason_key="memory", never_fit=never_fit
        )
    largest = max([*fitting.values(), *([settings.memory_estimate_bytes] if default_fits else [])])
    limit = min(limit, max(1, headroom // largest))
    if settings.start_stagger_s > 0:
        limit = 1  # one start per stagger interval, a batch included
    only = None if default_fits else frozenset(fitting)
    return Gate(GateState.OPEN, None, limit, frozenset(exclude), only, headroom, never_fit=never_fit)


def _saturated(
    kinds: Mapping[str, KindConfig], running: Sequence[RunningAgent], free: int
) -> tuple[set[str], int]:
    """Kinds at their ``max_concurrent``, and a claim size that cannot overshoot the tightest
    remaining per-kind limit."""
    counts: dict[str, int] = {}
    for agent in running:
        if agent.kind is not None:
            counts[agent.kind] = counts.get(agent.kind, 0) + 1
    saturated, limit = set(), free
    for name, kind in kinds.items():
        if kind.max_concurrent is None:
            continue
        room = kind.max_concurrent - counts.get(name, 0)
        if room <= 0:
            saturated.add(name)
        else:
            limit = min(limit, room)
    return saturated, limit


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A concurrency this machine can sustain, and whether the setting could go up."""

    concurrency: int | None
    """None until enough attempts were observed."""
    can_increase: bool
    reason: str


_MIN_OBSERVED: Final = 5
"""Attempts observed before a recommendation is made (one light attempt proves little)."""
_MIN_AGENT_BYTES: Final = 64 << 20
"""No agent is counted as lighter than this: a 5 MB shell script would otherwise 'allow'
thousands of agents, which no person would believe (the footprint of the tools it starts and
of the system around it is not in its RSS)."""
_AGENTS_PER_CPU: Final = 4
"""The ceiling: agents mostly wait (on a model, the network), but more than four per CPU
makes every start and every tool call they run slow."""


def recommend(
    total_bytes: int,
    reserve_bytes: int,
    cpus: int,
    peaks: Sequence[float],
    cpu_percents: Sequence[float],
    *,
    current: int,
) -> Recommendation:
    """A concurrency from observed per-attempt peak tree RSS and mean CPU use.

    Memory: (total - reserve) / the 90th-percentile peak (never below ``_MIN_AGENT_BYTES``);
    CPU: all CPUs / the 90th-percentile CPU use per agent; clamped to [1, 4 per CPU]. Using
    percentiles of a window of recent attempts (not the latest one) keeps the answer steady
    from one refresh to the next."""
    if len(peaks) < _MIN_OBSERVED or total_bytes <= 0:
        return Recommendation(None, False, f"fewer than {_MIN_OBSERVED} attempts observed")
    peak = max(_p90(peaks), _MIN_AGENT_BYTES)
    by_memory = math.floor(max(0, total_bytes - reserve_bytes) / peak)
    cpu = _p90(cpu_percents) if cpu_percents else 0.0
    by_cpu = math.floor(cpus * 100 / cpu) if cpu > 1 else by_memory
    ceiling = max(1, _AGENTS_PER_CPU * cpus)
    value = max(1, min(by_memory, by_cpu, ceiling))
    binding = (
        "memory" if value == by_memory else "CPU" if value == by_cpu else f"{_AGENTS_PER_CPU} agents per CPU"
    )
    if value > current:
        why = f"{value} agents fit ({binding} is the limit: peak {_gib(peak)}, {cpu:.0f}% CPU each)"
        return Recommendation(value, True, why)
    return Recommendation(value, False, f"{binding} allows {value}; the setting is {current}")


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"
