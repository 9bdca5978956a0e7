"""Escaped descendants without processes: who an escapee is tied to, and what the loop does with it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from supervisor.escapees import Candidate, Clues, attribute
from supervisor.job import JobSpec, Status
from supervisor.runner import Supervisor
from supervisor.settings import Settings
from supervisor.testing import Behaviour, FakeProcesses, ManualClock, MemoryStore

T0 = 1_700_000_000.0


def clues(job_id: int, **kw: object) -> Clues:
    base: dict[str, object] = {
        "job_id": job_id,
        "attempt": 1,
        "worker": "w",
        "session": 100 * job_id,
        "log_path": f"/data/logs/{job_id}-1.log",
        "run_dir": f"/data/runs/{job_id}-1",
    }
    base.update(kw)
    return Clues(**base)  # type: ignore[arg-type]


ONE, TWO = clues(1), clues(2, sessions={777}, seen={(555, 42)})
IN_ONE = frozenset({"1-1-w"})

CASES = [
    ("its cgroup", Candidate(9, 1, 9, cgroups=frozenset({"2-1-w"})), 2, "cgroup"),
    ("its env tag", Candidate(9, 1, 9, tag=("1", "1", "w")), 1, "env tag"),
    ("another attempt's tag is not it", Candidate(9, 1, 9, tag=("1", "2", "w")), None, ""),
    ("the agent's session (double fork, no setsid)", Candidate(9, 1, 100), 1, "session"),
    ("an escapee's session (its child)", Candidate(9, 1, 777), 2, "session"),
    ("seen in a tree sample", Candidate(555, 42, 555), 2, "tree sample"),
    ("a reused pid is not what the sample saw", Candidate(555, 43, 555), None, ""),
    ("holds the job's log", Candidate(9, 1, 9, files=("/dev/null", "/data/logs/2-1.log")), 2, "open file"),
    ("holds a file in its run dir", Candidate(9, 1, 9, files=("/data/runs/1-1/p.json",)), 1, "open file"),
    ("a sibling dir is not the run dir", Candidate(9, 1, 9, files=("/data/runs/1-10/x",)), None, ""),
    ("nothing", Candidate(9, 1, 9, files=("/dev/null",)), None, ""),
    # the strongest clue wins: a cgroup beats a file inherited from another agent's log
    ("cgroup over file", Candidate(9, 1, 9, cgroups=IN_ONE, files=(TWO.log_path,)), 1, "cgroup"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "candidate", "job", "found_by"), CASES, ids=[c[0] for c in CASES])
def test_attribute_ties_an_escapee_to_its_agent_by_the_strongest_clue(
    name: str, candidate: Candidate, job: int | None, found_by: str
) -> None:
    """Each clue (cgroup, env tag, session, tree sample, open file) names the agent it came
    from, strongest first; nothing names none."""
    owner, how = attribute(candidate, [ONE, TWO])
    assert (owner.job_id if owner else None, how) == (job, found_by)


def supervisor(tmp_path: Path, fake: FakeProcesses, clock: ManualClock, store: MemoryStore) -> Supervisor:
    settings = Settings(data_dir=tmp_path / "data", stop_grace_s=3.0)
    return Supervisor(settings, store, clock=clock, processes=fake, install_signal_handlers=False)


def test_an_escapee_reported_at_the_agents_end_reaches_the_jobs_facts(tmp_path: Path) -> None:
    """``ExitStatus.escaped`` of an ended agent is recorded in the job's settling event."""
    clock = ManualClock(T0)
    fake, store = (
        FakeProcesses(clock, default=Behaviour(runtime_s=1.0, escapes=True)),
        MemoryStore(clock=clock),
    )
    [job_id] = store.enqueue([JobSpec(command=("agent",))])
    supervisor(tmp_path, fake, clock, store).run(until_idle=True)
    [done] = [e for e in store.events(job_id) if e.to_status is Status.COMPLETED]
    [agent] = fake.spawned
    assert done.facts["escaped"] == [
        {"pid": agent.pid + 500_000, "name": "sleep", "found_by": "session", "signal": "SIGTERM"}
    ]


def test_the_loop_asks_for_orphans_every_tick_with_the_stop_grace_and_its_agents(tmp_path: Path) -> None:
    """``reap_strays`` hands the process layer the running agents and the stop grace on each
    tick, and once more with no grace when the supervisor closes (no later tick escalates)."""
    clock = ManualClock(T0)
    fake, store = FakeProcesses(clock, default=Behaviour(runtime_s=2.0)), MemoryStore(clock=clock)
    store.enqueue([JobSpec(command=("agent",))])
    sup = supervisor(tmp_path, fake, clock, store)
    sup.run(until_idle=True)
    [agent] = fake.spawned
    assert any(pids == [agent.pid] and grace == 3.0 for _, pids, grace in fake.orphan_calls)
    assert fake.orphan_calls[-1][1:] == ([], 0.0)
    assert {worker for worker, _, _ in fake.orphan_calls} == {sup.worker_id}


def test_strays_are_logged_and_those_no_job_owns_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An orphan no job can be named for is counted (``unattributed_escapees``) and logged; a
    late escapee of an ended job is logged with its job, not counted."""
    clock = ManualClock(T0)
    fake, store = FakeProcesses(clock, default=Behaviour(runtime_s=5.0)), MemoryStore(clock=clock)
    store.enqueue([JobSpec(command=("agent",))])
    sup = supervisor(tmp_path, fake, clock, store)
    late, nobody = fake.stray(7, 2, "open file"), fake.stray()
    with caplog.at_level(logging.WARNING, logger="agent_supervisor"):
        sup.run(until_idle=True)
    assert sup._loop is not None and sup._loop.pool.unattributed_escapees == 1
    assert f"escaped process {nobody.pid} (sleep) of no job we can name: SIGTERM" in caplog.text
    assert f"escaped process {late.pid} (sleep) of job 7 attempt 2, found by open file" in caplog.text


class _Ended:
    """Just what ``Escapes`` reads of an agent that ended."""

    def __init__(self, job_id: int) -> None:
        self.clues = clues(job_id)


def test_looks_are_rate_limited_and_an_agents_end_schedules_a_tag_scan_the_loop_wakes_for() -> None:
    """Children are looked at once a second while agents run (or ran recently); an agent's end
    asks for one tag scan, at most once a second, whose time ``next_due`` reports; closing
    (``final``) takes every look at once."""
    from supervisor.escapees import Escapes
    from supervisor.proctable import ProcessTable

    clock = ManualClock(T0)
    escapes = Escapes(ProcessTable(), clock)
    assert escapes.due(running=False) == (False, False)  # idle: nothing to look at
    assert escapes.next_due(5.0) is None
    assert escapes.due(running=True) == (True, False)
    assert escapes.due(running=True) == (False, False)  # not twice within a second
    clock.advance(1.0)
    escapes._ended_now(_Ended(1))  # type: ignore[arg-type]
    due = escapes.next_due(5.0)
    assert due is not None and due <= clock.monotonic()  # the tag scan is due now: wake for it
    assert escapes.due(running=False) == (True, True)  # recent end: children and tags
    escapes._ended_now(_Ended(2))  # type: ignore[arg-type]
    assert escapes.due(running=False) == (False, False)
    assert escapes.next_due(5.0) == clock.monotonic() + 1.0
    assert escapes.due(running=False, final=True) == (True, True)
    clock.advance(31.0)
    assert escapes.due(running=False) == (False, False)  # ended long ago: idle again
