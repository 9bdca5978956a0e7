"""Decide, then act: what the supervisor must do to its running agents at a given moment.

Pure functions over a snapshot of the running agents and a monotonic time. The supervisor
loop executes the returned actions; deadlines, cancels and kill escalation are therefore
table-driven tests with no processes and no sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from supervisor.job import CancelMode, DecidedBy, ErrorKind
from supervisor.processes import describe_end

__all__ = [
    "AgentView",
    "Kill",
    "StopReason",
    "StopState",
    "Terminate",
    "next_due",
    "outcome_for",
    "plan_stops",
]


class StopReason(StrEnum):
    """Why the supervisor is stopping an agent; decides the recorded outcome."""

    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle_timeout"
    CANCEL = "cancel"
    KILL = "kill"
    LEASE_LOST = "lease_lost"
    SHUTDOWN = "shutdown"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True)
class StopState:
    reason: StopReason
    term_at: float | None
    """Monotonic time SIGTERM went to the group (None: went straight to SIGKILL)."""
    kill_at: float | None = None


@dataclass(frozen=True, slots=True)
class AgentView:
    """What the planner needs to know about one running agent (monotonic times)."""

    job_id: int
    started: float
    last_output: float
    timeout_s: float | None
    idle_timeout_s: float | None
    cancel_requested: CancelMode | None = None
    lease_lost: bool = False
    limit_breach: str | None = None
    """A resource limit the sampled tree broke (memory, processes): stop it without grace."""
    stop: StopState | None = None


@dataclass(frozen=True, slots=True)
class Terminate:
    """Send SIGTERM to the agent's group and start its grace period."""

    job_id: int
    reason: StopReason


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGKILL the agent's group and every process carrying its tag."""

    job_id: int
    reason: StopReason


def plan_stops(agents: Iterable[AgentView], now: float, grace_s: float) -> list[Terminate | Kill]:
    """The stop actions due at ``now``, at most one per agent.

    A lost lease and a ``kill`` request skip the grace period: another supervisor may already
    run the job, and the user asked for it. A ``cancel`` that is followed by a ``kill`` request
    during its grace escalates at once.
    """
    actions: list[Terminate | Kill] = []
    for agent in agents:
        stop = agent.stop
        if stop is not None:
            if stop.kill_at is not None:
                continue
            urgent = agent.lease_lost or agent.cancel_requested is CancelMode.KILL or bool(agent.limit_breach)
            if urgent or (stop.term_at is not None and now >= stop.term_at + grace_s):
                actions.append(Kill(agent.job_id, stop.reason))
            continue
        if agent.lease_lost:
            actions.append(Kill(agent.job_id, StopReason.LEASE_LOST))
        elif agent.limit_breach:
            actions.append(Kill(agent.job_id, StopReason.LIMIT))
        elif agent.cancel_requested is CancelMode.KILL:
            actions.append(Kill(agent.job_id, StopReason.KILL))
        elif agent.cancel_requested is CancelMode.CANCEL:
            actions.append(Terminate(agent.job_id, StopReason.CANCEL))
        elif agent.timeout_s is not None and now >= agent.started + agent.timeout_s:
            actions.append(Terminate(agent.job_id, StopReason.TIMEOUT))
        elif agent.idle_timeout_s is not None and now >= agent.last_output + agent.idle_timeout_s:
            actions.append(Terminate(agent.job_id, StopReason.IDLE_TIMEOUT))
    return actions


def next_due(agents: Iterable[AgentView], grace_s: float) -> float:
    """The earliest monotonic time at which ``plan_stops`` could return something new."""
    due = math.inf
    for agent in agents:
        if agent.stop is not None:
            if agent.stop.kill_at is None and agent.stop.term_at is not None:
                due = min(due, agent.stop.term_at + grace_s)
            continue
        if agent.timeout_s is not None:
            due = min(due, agent.started + agent.timeout_s)
        if agent.idle_timeout_s is not None:
            due = min(due, agent.last_output + agent.idle_timeout_s)
    return due


_LIMIT_OVERRIDES = frozenset({StopReason.LIMIT, StopReason.TIMEOUT, StopReason.IDLE_TIMEOUT})
"""A broken limit explains an agent's end better than these stops (a memory-starved agent
that then timed out ran out of memory)."""

_REASON_KIND = {
    StopReason.TIMEOUT: (ErrorKind.TIMEOUT, DecidedBy.TIMEOUT),
    StopReason.IDLE_TIMEOUT: (ErrorKind.IDLE_TIMEOUT, DecidedBy.IDLE_TIMEOUT),
    StopReason.CANCEL: (ErrorKind.CANCELLED, DecidedBy.CANCEL),
    StopReason.KILL: (ErrorKind.CANCELLED, DecidedBy.CANCEL),
    StopReason.LEASE_LOST: (ErrorKind.LEASE_LOST, DecidedBy.LEASE),
    StopReason.SHUTDOWN: (ErrorKind.KILLED, DecidedBy.SHUTDOWN),
    StopReason.LIMIT: (ErrorKind.RESOURCE_LIMIT, DecidedBy.LIMIT),
}


def outcome_for(
    *,
    exit_code: int | None,
    signal_number: int | None,
    stop: StopState | None,
    timeout_s: float | None,
    idle_timeout_s: float | None,
    limit_breach: str | None = None,
) -> tuple[ErrorKind | None, str | None, DecidedBy, bool]:
    """Map how an agent ended to ``(error_kind, error, decided_by, forgive)`` for an Outcome.

    A stop the supervisor started decides the kind even when the agent then exits 0 (a job
    that finishes only because it was told to stop at its deadline still timed out).
    """
    failed = exit_code != 0 or signal_number is not None  # refused forks an agent survived are no failure
    if limit_breach and failed and (stop is None or stop.reason in _LIMIT_OVERRIDES):
        return (
            ErrorKind.RESOURCE_LIMIT,
            f"{limit_breach}; {describe_end(exit_code, signal_number)}",
            (DecidedBy.LIMIT),
            False,
        )
    if stop is not None:
        kind, decided_by = _REASON_KIND[stop.reason]
        how = {
            StopReason.TIMEOUT: f"timed out after {timeout_s or 0:g} s",
            StopReason.IDLE_TIMEOUT: f"no output for {idle_timeout_s or 0:g} s",
            StopReason.CANCEL: "cancelled while running",
            StopReason.KILL: "killed on request",
            StopReason.LEASE_LOST: "lease lost to another supervisor",
            StopReason.SHUTDOWN: "stopped by supervisor shutdown",
            StopReason.LIMIT: "resource limit exceeded",
        }[stop.reason]
        return (
            kind,
            f"{how}; {describe_end(exit_code, signal_number)}",
            decided_by,
            (stop.reason is StopReason.SHUTDOWN),
        )
    if exit_code == 0:
        return None, None, DecidedBy.EXIT, False
    if signal_number is not None:
        return ErrorKind.KILLED, describe_end(exit_code, signal_number), DecidedBy.EXIT, False
    if exit_code is None:
        return ErrorKind.LOST, "exit status unknown", DecidedBy.RECONCILE, False
    return ErrorKind.EXIT_CODE, describe_end(exit_code, signal_number), DecidedBy.EXIT, False
