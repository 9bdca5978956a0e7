"""Reconciliation on start: decide what to do with every agent a previous run left behind.

The inputs are three views that may disagree after a crash or a host reload: the state file
("which processes are mine"), the store ("which jobs are leased to my worker id"), and a scan
of live processes carrying our env tag. ``decide`` is pure and table-tested;
``supervisor.recovery`` gathers the views and carries out the decisions.

The rule that prevents duplicates: an agent whose job the store no longer leases to us (it was
reaped and perhaps re-run elsewhere, or cancelled) is killed and nothing is recorded for it;
only an agent whose lease we still hold may be adopted or have its outcome recorded.

The rule that prevents re-running finished work: the wrapper's exit file is read first,
whatever the orphan policy. An agent that already ended is recorded with its real exit status
(and result), never ``lost`` — even when a leftover of its tree still carries its tag, and
even when it ends between our look and our kill (``settle``; issue 11: 3 re-runs in 754
executions over 38 crashes under ``orphan_policy = "kill"``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from supervisor.statefile import AgentEntry

__all__ = ["Action", "Decision", "Finding", "OrphanPolicy", "decide", "findings", "settle"]


class OrphanPolicy(StrEnum):
    """What a (re)starting supervisor does with a live agent of its own: keep it, or kill it."""

    ADOPT = "adopt"
    KILL = "kill"


class Action(StrEnum):
    ADOPT = "adopt"
    """Supervise it again: its original deadline, heartbeats, cancel, log cap, exit status."""
    KILL_AND_RECORD = "kill_and_record"
    """Kill it, record the attempt as lost (retried per policy)."""
    RECORD_EXIT = "record_exit"
    """It ended while nobody watched: record its exit status from the wrapper's exit file."""
    RECORD_LOST = "record_lost"
    """Leased to us, but no agent exists: record the attempt as lost."""
    KILL_ONLY = "kill_only"
    """Alive but not ours any more (no lease): kill it, record nothing (someone else may own
    the job now)."""
    FORGET = "forget"
    """Dead and not leased to us: drop the stale state entry."""


@dataclass(frozen=True, slots=True)
class Finding:
    """What the three views say about one (job, attempt)."""

    job_id: int
    attempt: int
    entry: AgentEntry | None
    """The state file's record of the agent, if any."""
    alive: bool
    """The recorded agent (same boot, same kernel identity), or a tagged process, is alive."""
    lease_held: bool
    """The store says this job is live and leased to our worker id with this attempt."""
    exited: bool = False
    """The recorded agent's wrapper wrote its exit file: the agent itself has ended."""


@dataclass(frozen=True, slots=True)
class Decision:
    job_id: int
    attempt: int
    action: Action
    why: str


def decide(findings: Iterable[Finding], policy_for: Callable[[Finding], OrphanPolicy]) -> list[Decision]:
    """One decision per finding, following the table in DESIGN.md ("Reconciliation")."""
    out = []
    for f in findings:
        if f.exited and f.entry is not None and f.lease_held:
            # before the policy: a finished agent is recorded as it ended (leftovers that still
            # carry its tag are stopped with it), never killed and re-run
            action, why = Action.RECORD_EXIT, "ended while no supervisor watched (its exit file says how)"
        elif f.alive and not f.lease_held:
            action, why = Action.KILL_ONLY, "alive, but the store no longer leases it to us"
        elif f.alive and f.entry is None:
            action, why = Action.KILL_AND_RECORD, "alive, but not in the state file (no deadline known)"
        elif f.alive:
            if policy_for(f) is OrphanPolicy.ADOPT:
                action, why = Action.ADOPT, "alive and still ours: adopted"
            else:
                action, why = Action.KILL_AND_RECORD, "alive and ours; orphan_policy is kill"
        elif f.lease_held and f.entry is not None:
            action, why = Action.RECORD_EXIT, "ended while no supervisor watched"
        elif f.lease_held:
            action, why = Action.RECORD_LOST, "leased to us, but no agent was recorded or found"
        else:
            action, why = Action.FORGET, "gone, and no longer leased to us"
        out.append(Decision(f.job_id, f.attempt, action, why))
    return out


def settle(decision: Decision, exited: bool) -> Decision:
    """The decision once carried out: a kill that found the agent already ended (its exit file
    written after our look, before the kill landed) records that end instead of ``lost``.
    ``exited``: the exit file, read after the kill, holds a status. A SIGKILL to the group kills
    the wrapper too, so an exit file present after the kill was written before it."""
    if decision.action is Action.KILL_AND_RECORD and exited:
        why = "ended between our look and the kill (its exit file says how)"
        return Decision(decision.job_id, decision.attempt, Action.RECORD_EXIT, why)
    return decision


def findings(
    entries: Iterable[AgentEntry],
    leased: Mapping[int, int],
    alive_entries: set[int],
    tagged: Mapping[int, int],
    exited: Collection[int] = (),
) -> list[Finding]:
    """Join the three views by job id.

    ``leased`` maps job id → attempt for live jobs leased to us; ``alive_entries`` holds the job
    ids whose recorded agent is alive; ``tagged`` maps job id → attempt of live tagged processes
    of our worker id; ``exited`` holds the job ids whose recorded agent's exit file holds a status.
    """
    by_job = {e.job_id: e for e in entries}
    out = []
    for job_id in sorted(set(by_job) | set(leased) | set(tagged)):
        entry = by_job.get(job_id)
        attempt = entry.attempt if entry else leased.get(job_id, tagged.get(job_id, 0))
        alive = job_id in alive_entries or tagged.get(job_id) == attempt
        held = leased.get(job_id) == attempt
        out.append(Finding(job_id, attempt, entry, alive, held, entry is not None and job_id in exited))
    return out
