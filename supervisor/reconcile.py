"""Reconciliation on start: decide what to do with every agent a previous run left behind.

The inputs are three views that may disagree after a crash or a host reload: the state file
("which processes are mine"), the store ("which jobs are leased to my worker id"), and a scan
of live processes carrying our env tag. ``decide`` is pure and table-tested;
``supervisor.recovery`` gathers the views and carries out the decisions.

The rule that prevents duplicates: an agent whose job the store no longer leases to us (it was
reaped and perhaps re-run elsewhere, or cancelled) is killed and nothing is recorded for it;
only an agent whose lease we still hold may be adopted or have its outcome recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from supervisor.statefile import AgentEntry

__all__ = ["Action", "Decision", "Finding", "OrphanPolicy", "decide"]


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
        if f.alive and not f.lease_held:
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


def findings(
    entries: Iterable[AgentEntry],
    leased: Mapping[int, int],
    alive_entries: set[int],
    tagged: Mapping[int, int],
) -> list[Finding]:
    """Join the three views by job id.

    ``leased`` maps job id → attempt for live jobs leased to us; ``alive_entries`` holds the job
    ids whose recorded agent is alive; ``tagged`` maps job id → attempt of live tagged processes
    of our worker id.
    """
    by_job = {e.job_id: e for e in entries}
    out = []
    for job_id in sorted(set(by_job) | set(leased) | set(tagged)):
        entry = by_job.get(job_id)
        attempt = entry.attempt if entry else leased.get(job_id, tagged.get(job_id, 0))
        alive = job_id in alive_entries or tagged.get(job_id) == attempt
        out.append(Finding(job_id, attempt, entry, alive, leased.get(job_id) == attempt))
    return out
