"""Reconciliation decisions as a table: which orphan is adopted, killed, recorded or forgotten."""

from __future__ import annotations

import pytest

from supervisor.reconcile import Action, Decision, Finding, OrphanPolicy, decide, findings, settle
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

# (name, entry, alive, lease held, exit file written, policy, action): the exit file comes first
KILL, ADOPT = OrphanPolicy.KILL, OrphanPolicy.ADOPT
EXITED = [
    ("exited, kill policy", entry(), False, True, True, KILL, Action.RECORD_EXIT),
    ("exited, adopt policy", entry(), False, True, True, ADOPT, Action.RECORD_EXIT),
    ("exited, tagged leftover alive, kill", entry(), True, True, True, KILL, Action.RECORD_EXIT),
    ("exited, tagged leftover alive, adopt", entry(), True, True, True, ADOPT, Action.RECORD_EXIT),
    ("exited, leftover alive, lease gone", entry(), True, False, True, KILL, Action.KILL_ONLY),
    ("exited, lease gone", entry(), False, False, True, KILL, Action.FORGET),
    ("no exit file, alive, kill policy", entry(), True, True, False, KILL, Action.KILL_AND_RECORD),
]  # fmt: skip


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


@pytest.mark.parametrize(
    ("name", "ent", "alive", "held", "exited", "policy", "action"), EXITED, ids=[c[0] for c in EXITED]
)
def test_an_agent_whose_exit_file_is_written_is_recorded_whatever_the_policy(
    name: str, ent: AgentEntry, alive: bool, held: bool, exited: bool, policy: OrphanPolicy, action: Action
) -> None:
    """A written exit file means the agent ended: its exit is recorded (never lost, never
    re-run) whatever the policy, unless the lease is gone (then nothing is recorded)."""
    [decision] = decide([Finding(1, 1, ent, alive, held, exited)], lambda f: policy)
    assert decision.action is action


@pytest.mark.parametrize(
    ("action", "exited", "settled"),
    [
        (Action.KILL_AND_RECORD, True, Action.RECORD_EXIT),  # it ended between the look and the kill
        (Action.KILL_AND_RECORD, False, Action.KILL_AND_RECORD),  # our kill ended it: lost
        (Action.KILL_ONLY, True, Action.KILL_ONLY),  # lease gone: never recorded, even so
        (Action.ADOPT, True, Action.ADOPT),
    ],
)
def test_settle_records_an_exit_that_beat_the_kill(action: Action, exited: bool, settled: Action) -> None:
    """After a kill, an exit file turns 'killed, lost' into the agent's own recorded exit."""
    after = settle(Decision(1, 1, action, "why"), exited)
    assert after.action is settled
    assert (after.job_id, after.attempt) == (1, 1)


def test_findings_join_the_three_views() -> None:
    """State entries, leases, tagged processes and exit files are joined by job id, attempt-exact."""
    got = findings(
        entries=[entry(1), entry(2)],
        leased={1: 1, 3: 4, 4: 1},
        alive_entries={1},
        tagged={3: 4, 5: 2, 4: 9},
        exited={2, 3},
    )
    assert [(f.job_id, f.attempt, f.entry is not None, f.alive, f.lease_held, f.exited) for f in got] == [
        (1, 1, True, True, True, False),  # ours, alive
        (2, 1, True, False, False, True),  # recorded, ended (exit file), not leased
        (3, 4, False, True, True, False),  # leased, tagged alive, no entry (so no exit file to read)
        (4, 1, False, False, True, False),  # leased; a tagged process of another attempt is not it
        (5, 2, False, True, False, False),  # a stray tagged process
    ]
