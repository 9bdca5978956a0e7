"""Reconciliation decisions as a table: which orphan is adopted, killed, recorded or forgotten."""

from __future__ import annotations

import pytest

from supervisor.reconcile import Action, Finding, OrphanPolicy, decide, findings
from supervisor.statefile import AgentEntry


def entry(job_id: int = 1, attempt: int = 1) -> AgentEntry:
    return AgentEntry(
        job_id=job_id,
        attempt=attempt,
        worker="w",
        pid=100 + job_id,
        pgid=100 + job_id,
        start_identity="linux:b:1",
        command=["x"],
        started_at=0.0,
        started_mono=0.0,
        timeout_s=60.0,
        idle_timeout_s=None,
        log_path="/l",
        run_dir="/r",
    )


CASES = [
    ("ours and alive, adopt", entry(), True, True, OrphanPolicy.ADOPT, Action.ADOPT),
    ("ours and alive, kill policy", entry(), True, True, OrphanPolicy.KILL, Action.KILL_AND_RECORD),
    ("alive but lease gone", entry(), True, False, OrphanPolicy.ADOPT, Action.KILL_ONLY),
    ("ended while away", entry(), False, True, OrphanPolicy.ADOPT, Action.RECORD_EXIT),
    ("ended and lease gone", entry(), False, False, OrphanPolicy.ADOPT, Action.FORGET),
    ("leased, no agent anywhere", None, False, True, OrphanPolicy.ADOPT, Action.RECORD_LOST),
    ("leased, tagged process, no entry", None, True, True, OrphanPolicy.ADOPT, Action.KILL_AND_RECORD),
]


@pytest.mark.parametrize(
    ("name", "ent", "alive", "held", "policy", "action"), CASES, ids=[c[0] for c in CASES]
)
def test_decide(
    name: str, ent: AgentEntry | None, alive: bool, held: bool, policy: OrphanPolicy, action: Action
) -> None:
    """Each combination of state file, liveness and lease gets the action DESIGN.md prescribes."""
    [decision] = decide([Finding(1, 1, ent, alive, held)], lambda f: policy)
    assert decision.action is action
    assert decision.why


def test_findings_join_the_three_views() -> None:
    """State entries, leases and tagged processes are joined by job id, attempt-exact."""
    got = findings(
        entries=[entry(1), entry(2)],
        leased={1: 1, 3: 4, 4: 1},
        alive_entries={1},
        tagged={3: 4, 5: 2, 4: 9},
    )
    assert [(f.job_id, f.attempt, f.entry is not None, f.alive, f.lease_held) for f in got] == [
        (1, 1, True, True, True),  # ours, alive
        (2, 1, True, False, False),  # recorded, dead, not leased
        (3, 4, False, True, True),  # leased, tagged alive, no entry
        (4, 1, False, False, True),  # leased; a tagged process of another attempt is not it
        (5, 2, False, True, False),  # a stray tagged process
    ]
