"""The supervisor loop, driven without processes or sleeping.

A real ``Supervisor`` runs against ``MemoryStore``, ``FakeProcesses`` and one ``ManualClock``:
fake agents exit, obey or ignore signals on simulated time, and the fake waiter moves the
clock instead of sleeping, so each test below takes milliseconds and its times are exact.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import StoreUnavailableError
from supervisor.events import JobChange
from supervisor.job import CancelMode, ErrorKind, JobSpec, Status
from supervisor.loop import IDLE_STORE_DOWN_S
from supervisor.runner import Supervisor
from supervisor.settings import Settings
from supervisor.store import Beat, BeatReply
from supervisor.testing import Behaviour, FakeProcesses, ManualClock, MemoryStore

T0 = 1_700_000_000.0


@dataclass
class World:
    clock: ManualClock
    store: MemoryStore
    fake: FakeProcesses
    data_dir: Path
    changes: list[JobChange]

    def supervisor(self, store: Any = None, **settings: Any) -> Supervisor:
        return Supervisor(
            Settings(data_dir=self.data_dir, **settings),
            store if store is not None else self.store,
            clock=self.clock,
            processes=self.fake,
            on_change=self.changes.append,
            install_signal_handlers=False,
        )

    def submit(self, **spec: Any) -> int:
        spec.setdefault("command", ("agent",))
        [job_id] = self.store.enqueue([JobSpec(**spec)])
        return job_id

    def at(self) -> float:
        """Seconds of simulated time since the test began."""
        return self.clock() - T0


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = ManualClock(T0)
    return World(clock, MemoryStore(clock=clock, seed=1), FakeProcesses(clock), tmp_path / "data", [])


def test_a_submitted_job_is_claimed_run_and_completed(world: World) -> None:
    """The agent starts with the job's argv and tags, and its exit 0 completes the job."""
    world.fake.default = Behaviour(runtime_s=2.0, result={"answer": 42})
    job_id = world.submit(command=("agent", "--flag"))
    sup = world.supervisor()
    sup.run(until_idle=True)
    [agent] = world.fake.spawned
    assert agent.argv == ["agent", "--flag"]
    assert agent.env["AGENT_SUPERVISOR_JOB_ID"] == str(job_id)
    assert agent.env["AGENT_SUPERVISOR_WORKER"] == sup.worker_id
    job = world.store.get(job_id)
    assert (job.status, job.result, job.attempts_used) == (Status.COMPLETED, {"answer": 42}, 1)
    assert [e.to_status for e in world.store.events(job_id)] == [
        Status.PENDING,
        Status.PREPARING,
        Status.RUNNING,
        Status.COMPLETED,
    ]
    assert 2.0 <= world.at() < 2.2  # the loop slept until the exit, not in poll steps


def test_a_timeout_sends_sigterm_then_sigkill_after_the_grace(world: World) -> None:
    """An agent that ignores SIGTERM gets SIGTERM at its deadline and SIGKILL one grace later."""
    world.fake.default = Behaviour(ignores_term=True)
    job_id = world.submit(timeout_s=10.0, max_attempts=1)
    world.supervisor(stop_grace_s=5.0).run(until_idle=True)
    [agent] = world.fake.spawned
    assert [name for name, _ in agent.signals] == ["SIGTERM", "SIGKILL"]
    term_at, kill_at = (at - T0 for _, at in agent.signals)
    assert term_at == pytest.approx(10.0)
    assert kill_at == pytest.approx(15.0)
    job = world.store.get(job_id)
    assert (job.status, job.error_kind, job.signal) == (Status.FAILED, ErrorKind.TIMEOUT, signal.SIGKILL)


def test_an_agent_that_obeys_sigterm_is_not_killed(world: World) -> None:
    """SIGTERM at the deadline ends an obedient agent; no SIGKILL follows."""
    job_id = world.submit(timeout_s=3.0, max_attempts=1)
    world.supervisor(stop_grace_s=5.0).run(until_idle=True)
    [agent] = world.fake.spawned
    assert [name for name, _ in agent.signals] == ["SIGTERM"]
    assert world.store.get(job_id).signal == signal.SIGTERM


def test_a_cancel_in_the_store_stops_the_agent_within_the_early_beat(world: World) -> None:
    """A cancel requested while the agent runs is seen at an early heartbeat (0.2 s after the
    last, not at the regular interval) and ends the job as cancelled."""
    job_id = world.submit()
    world.fake.at(3.0, lambda: world.store.request_cancel(job_id, CancelMode.CANCEL))
    world.supervisor(heartbeat_s=10.0, lease_s=30.0).run(until_idle=True)
    [agent] = world.fake.spawned
    [(name, term_at)] = agent.signals
    assert name == "SIGTERM"
    assert 3.0 <= term_at - T0 <= 3.0 + 0.2 + 0.05  # the early beat, found within one wake-up
    assert world.store.get(job_id).status is Status.CANCELLED


def test_a_failure_is_retried_after_its_backoff_and_then_completes(world: World) -> None:
    """Exit 1 moves the job to waiting_retry; the next attempt starts within the backoff and
    completes the job with two attempts used."""
    job_id = world.submit(max_attempts=3, backoff_s=20.0)
    world.fake.behave(job_id, Behaviour(runtime_s=1.0, exit_code=1), Behaviour(runtime_s=1.0))
    world.supervisor(poll_s=1.0).run(until_idle=True)
    first, second = world.fake.agents(job_id)
    assert (first.status.exit_code, second.status.exit_code) == (1, 0)
    gap = second.started_mono - (first.started_mono + 1.0)
    assert 0.0 <= gap <= 20.0 + 1.0  # full jitter in [0, 20 s], found within one poll
    job = world.store.get(job_id)
    assert (job.status, job.attempts_used) == (Status.COMPLETED, 2)
    statuses = [e.to_status for e in world.store.events(job_id)]
    assert statuses.count(Status.WAITING_RETRY) == 1


class CountingStore(MemoryStore):
    """A MemoryStore that records when each verb was called, and can be 'down' (every verb
    the supervisor calls then fails as unreachable)."""

    def __init__(self, clock: ManualClock, down: Callable[[float], bool] = lambda t: False) -> None:
        super().__init__(clock=clock, seed=1)
        self.calls: dict[str, list[float]] = {}
        self.down = down
        self._inside = False

    def _called(self, verb: str) -> None:
        at = self._clock() - T0
        self.calls.setdefault(verb, []).append(at)
        if self.down(at):
            raise StoreUnavailableError(f"store down ({verb})")

    def _verb(self, verb: str, call: Callable[[], Any]) -> Any:
        self._called(verb)
        self._inside = True
        try:
            return call()
        finally:
            self._inside = False

    def heartbeat(self, worker: str, beats: Any, *, lease_s: float) -> list[BeatReply]:
        return self._verb(
            "heartbeat", lambda: super(CountingStore, self).heartbeat(worker, beats, lease_s=lease_s)
        )

    def finish(self, *args: Any) -> Any:
        return self._verb("finish", lambda: super(CountingStore, self).finish(*args))

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        return self._verb("claim", lambda: super(CountingStore, self).claim(*args, **kwargs))

    def reap_stale(self, grace_s: float) -> Any:
        return self._verb("reap", lambda: super(CountingStore, self).reap_stale(grace_s))

    def now(self) -> float:
        if not self._inside:
            self._called("now")
        return self._clock()

    def seed(self, *specs: JobSpec) -> list[int]:
        """Enqueue as a submitter would, whatever the supervisor's view of the store."""
        self._inside = True
        try:
            return self.enqueue(list(specs))
        finally:
            self._inside = False


def test_heartbeats_come_once_per_interval_for_all_running_agents(world: World) -> None:
    """Three agents running for a minute cost one heartbeat call every heartbeat_s, each
    carrying all three jobs."""
    store = CountingStore(world.clock)
    world.fake.default = Behaviour(runtime_s=60.0)
    store.seed(*[JobSpec(command=("agent",))] * 3)
    beats: list[list[Beat]] = []
    real = store.heartbeat

    def record(worker: str, batch: Any, *, lease_s: float) -> list[BeatReply]:
        beats.append(list(batch))
        return real(worker, batch, lease_s=lease_s)

    store.heartbeat = record  # type: ignore[method-assign]
    world.supervisor(store, concurrency=3, heartbeat_s=10.0, lease_s=30.0).run(until_idle=True)
    times = store.calls["heartbeat"]
    assert times == pytest.approx([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    assert all(len(batch) == 3 for batch in beats)


def test_outcomes_wait_in_the_outbox_while_the_store_is_down_and_sync_when_it_returns(
    world: World,
) -> None:
    """Agents that end during an outage have their outcomes kept in the outbox: the first after
    one failed write, the next one straight away (no call to a store known to be down); both
    reach the store within 10 s of it answering again."""
    store = CountingStore(world.clock, down=lambda t: 2.0 <= t < 40.0)
    first, second = store.seed(JobSpec(command=("agent",)), JobSpec(command=("agent",)))
    world.fake.behave(first, Behaviour(runtime_s=5.0))
    world.fake.behave(second, Behaviour(runtime_s=7.0))
    sup = world.supervisor(store, concurrency=2, heartbeat_s=10.0, lease_s=30.0)
    sup.run(until_idle=True)
    assert store._jobs[first].status is store._jobs[second].status is Status.COMPLETED
    assert sup.outbox_depth == 0
    during = [t for t in store.calls["finish"] if 2.0 <= t < 40.0]
    assert during[0] == 5.0  # the first outcome's write failed ...
    assert 7.0 not in during  # ... the second went straight to the outbox
    assert len(during) <= 2  # one replay try, then cheap probes (store.now) until it answers
    after = [t for t in store.calls["finish"] if t >= 40.0]
    assert len(after) == 2
    assert max(after) <= 40.0 + 10.0
    assert not (world.data_dir / "outbox.jsonl").exists()  # emptied once synced


def test_no_claim_while_the_store_is_down(world: World) -> None:
    """While the store is known to be down, nothing new is claimed (claims resume after)."""
    store = CountingStore(world.clock, down=lambda t: t < 25.0)
    store.seed(JobSpec(command=("agent",)))
    world.fake.default = Behaviour(runtime_s=1.0)
    world.supervisor(store, heartbeat_s=10.0, lease_s=30.0, poll_s=1.0).run(until_idle=True)
    failed = [t for t in store.calls["claim"] if t < 25.0]
    assert len(failed) <= 3  # one failed claim marks the store down for heartbeat_s
    assert world.fake.spawned[0].started_mono - T0 >= 25.0


def test_until_idle_gives_up_on_a_store_that_stays_down(world: World) -> None:
    """``run(until_idle=True)`` cannot tell an empty queue from an unreachable store: with
    nothing running here it raises once the store has been silent for IDLE_STORE_DOWN_S, and
    says the outcome it could not deliver waits in the outbox (kept for the next run)."""
    store = CountingStore(world.clock, down=lambda t: t >= 2.0)
    store.seed(JobSpec(command=("agent",)))
    world.fake.default = Behaviour(runtime_s=5.0)
    sup = world.supervisor(store, heartbeat_s=10.0, lease_s=30.0, poll_s=1.0)
    with pytest.raises(
        StoreUnavailableError, match=r"has not answered for 3\d\d s.*1 outcome\(s\) wait in the outbox"
    ):
        sup.run(until_idle=True)
    assert IDLE_STORE_DOWN_S <= world.at() - 2.0 <= IDLE_STORE_DOWN_S + 15.0
    assert sup.outbox_depth == 1 and (world.data_dir / "outbox.jsonl").exists()


def test_until_idle_waits_out_a_short_outage(world: World) -> None:
    """An outage shorter than IDLE_STORE_DOWN_S: the run ends idle, the outcome synced."""
    store = CountingStore(world.clock, down=lambda t: 2.0 <= t < IDLE_STORE_DOWN_S - 5.0)
    [job_id] = store.seed(JobSpec(command=("agent",)))
    world.fake.default = Behaviour(runtime_s=5.0)
    sup = world.supervisor(store, heartbeat_s=10.0, lease_s=30.0, poll_s=1.0)
    sup.run(until_idle=True)
    assert store._jobs[job_id].status is Status.COMPLETED and sup.outbox_depth == 0


def test_stop_drains_then_terminates_and_gives_the_attempt_back(world: World) -> None:
    """A graceful stop lets a running agent finish for drain_timeout_s, then SIGTERMs it; the
    interrupted attempt does not count against the job's budget."""
    job_id = world.submit(max_attempts=1)
    sup = world.supervisor(drain_timeout_s=10.0)

    def stop_when_running(change: JobChange) -> None:
        if change.to_status is Status.RUNNING:
            world.clock.advance(1.0)
            sup.request_stop(drain=True)

    sup._on_change = stop_when_running
    sup.run()
    [agent] = world.fake.spawned
    [(name, at)] = agent.signals
    assert name == "SIGTERM"
    assert at - T0 == pytest.approx(11.0)
    job = world.store.get(job_id)
    assert (job.status, job.error_kind, job.attempts_used) == (Status.WAITING_RETRY, ErrorKind.KILLED, 0)


def test_admission_waits_for_memory_and_starts_when_it_frees(world: World) -> None:
    """With less available memory than the estimate, nothing starts; once memory frees, the
    job starts within one poll."""
    world.fake.default = Behaviour(runtime_s=1.0)

    class Tight(FakeProcesses):
        def memory(self) -> tuple[int, int]:
            free = 8 << 30 if world.at() >= 30.0 else 256 << 20
            return free, 16 << 30

    world.fake = Tight(world.clock, default=Behaviour(runtime_s=1.0))
    job_id = world.submit()
    sup = world.supervisor(memory_estimate_bytes=1 << 30, memory_reserve_bytes=0, poll_s=1.0)
    gates: list[str] = []
    sup._on_change = lambda change: gates.append(sup.gate.state.value)
    sup.run(until_idle=True)
    [agent] = world.fake.spawned
    assert 30.0 <= agent.started_mono - T0 <= 31.0
    assert world.store.get(job_id).status is Status.COMPLETED


def test_start_stagger_spaces_every_start_including_within_a_batch(world: World) -> None:
    """Four jobs claimable at once on four slots start start_stagger_s apart, not together."""
    world.fake.default = Behaviour(runtime_s=100.0)
    for _ in range(4):
        world.submit()
    world.supervisor(concurrency=4, start_stagger_s=5.0, poll_s=1.0).run(until_idle=True)
    starts = sorted(a.started_mono - T0 for a in world.fake.spawned)
    assert starts == pytest.approx([0.0, 5.0, 10.0, 15.0])


def test_a_command_that_cannot_start_fails_at_once_without_a_retry(world: World) -> None:
    """A spawn that fails with ENOENT is invalid (never retried); one that fails otherwise is
    a spawn_error and retried."""
    import errno

    missing = world.submit(max_attempts=3)
    flaky = world.submit(max_attempts=2, backoff_s=0.0)
    world.fake.behave(missing, Behaviour(spawn_errno=errno.ENOENT))
    world.fake.behave(flaky, Behaviour(spawn_errno=errno.EAGAIN), Behaviour(runtime_s=1.0))
    world.supervisor(poll_s=1.0).run(until_idle=True)
    job = world.store.get(missing)
    assert (job.status, job.error_kind, job.attempts_used) == (Status.FAILED, ErrorKind.INVALID, 1)
    assert world.store.get(flaky).status is Status.COMPLETED


def test_a_lost_lease_kills_the_agent_without_grace_and_records_nothing(world: World) -> None:
    """When the store reports the lease lost, the agent is SIGKILLed at the next heartbeat
    (an early one: the steal is a write the loop notices) and its outcome is not written over
    the new holder's."""
    job_id = world.submit()
    sup = world.supervisor(heartbeat_s=5.0, lease_s=15.0, stop_grace_s=5.0)

    def steal_when_running(change: JobChange) -> None:
        if change.job_id == job_id and change.to_status is Status.RUNNING:
            world.store.force(job_id, lease_owner="someone-else", attempt=7)

    sup._on_change = steal_when_running
    world.fake.on_exit = lambda agent: sup.request_stop(drain=False)
    sup.run()
    [agent] = world.fake.spawned
    [(name, at)] = agent.signals
    assert name == "SIGKILL"
    assert at - agent.started_mono <= 0.2 + 0.05  # early beat: 0.2 s after the last, one poll late at most
    job = world.store.get(job_id)
    assert (job.status, job.lease_owner, job.attempt) == (Status.RUNNING, "someone-else", 7)
    assert [e.to_status for e in world.store.events(job_id)][-1] is Status.RUNNING


def test_an_idle_supervisor_sleeps_until_its_next_duty(world: World) -> None:
    """Ten idle minutes on a store that pushes hints: at most one wake-up every five seconds
    (the status file's sign of life and the reaper), not twenty a second."""
    sup = world.supervisor()
    world.fake.at(600.0, lambda: sup.request_stop())
    sup.run()
    [waiter] = world.fake.waiters
    assert world.at() == pytest.approx(600.0)
    assert len(waiter.waits) <= 600 / 5


def test_a_submit_from_elsewhere_wakes_an_idle_supervisor_at_once(world: World) -> None:
    """A job enqueued by another writer while the loop sleeps starts without waiting for a
    poll: the store's hint wakes the loop."""
    world.fake.default = Behaviour(runtime_s=1.0)
    sup = world.supervisor(poll_s=60.0)
    world.fake.at(100.0, lambda: world.submit())
    world.fake.on_exit = lambda agent: sup.request_stop()
    sup.run()
    [agent] = world.fake.spawned
    assert agent.started_mono - T0 == pytest.approx(100.0)


def test_a_delayed_job_starts_at_its_run_after_without_polling(world: World) -> None:
    """A job submitted to run in 90 s starts at 90 s: the hint carried its due time."""
    world.fake.default = Behaviour(runtime_s=1.0)
    world.submit(run_after=T0 + 90.0)
    world.supervisor(poll_s=600.0).run(until_idle=True)
    [agent] = world.fake.spawned
    assert agent.started_mono - T0 == pytest.approx(90.0, abs=0.01)  # a few ms late, never early


def test_admission_blocked_keeps_its_since_while_free_memory_fluctuates(tmp_path: Path) -> None:
    """Blocked by memory for 90 s with free memory changing every look: status.json keeps the
    first 'since', and health raises admission_blocked."""
    import itertools
    import time as real_time

    from supervisor.health import check_health, read_status

    clock = ManualClock(real_time.time())
    store = MemoryStore(clock=clock, seed=1)
    frees = itertools.cycle([100 << 20, 200 << 20, 300 << 20])

    class Fluctuating(FakeProcesses):
        def memory(self) -> tuple[int, int]:
            return next(frees), 16 << 30

    fake = Fluctuating(clock)
    store.enqueue([JobSpec(command=("agent",))])
    settings = Settings(
        data_dir=tmp_path / "d", memory_estimate_bytes=1 << 30, memory_reserve_bytes=0, poll_s=1.0
    )
    sup = Supervisor(settings, store, clock=clock, processes=fake, install_signal_handlers=False)
    started = clock.time()
    fake.at(90.0, lambda: sup.request_stop())
    sup.run()
    status = read_status(tmp_path / "d")
    assert status is not None
    assert status["admission"]["reason_key"] == "memory"
    assert status["admission"]["since"] == pytest.approx(started, abs=1.5)
    # health runs "now" for real: move the status' clock back so its age is the 90 s simulated
    report = check_health(
        store,
        settings,
        worker_id=None,
        status={**status, "admission": {**status["admission"], "since": real_time.time() - 90}},
    )
    assert "admission_blocked" in {a.kind for a in report.alerts}
    assert fake.spawned == []


def test_a_schedule_on_two_supervisors_enqueues_each_slot_once(tmp_path: Path) -> None:
    """Two supervisors on one store with the same every-minute schedule: over five minutes each
    slot becomes exactly one job (its unique key), whichever supervisor looked first."""
    import random as rnd
    from datetime import UTC, datetime

    from supervisor.loop import Control, Loop
    from supervisor.schedules import ScheduleConfig
    from supervisor.settings import KindConfig

    start = datetime(2026, 12, 2, 3, 0, 30, tzinfo=UTC).timestamp()
    clock = ManualClock(start)
    store = MemoryStore(clock=clock, seed=1)
    fake = FakeProcesses(clock, default=Behaviour(runtime_s=1.0))
    loops = []
    for name in ("a", "b"):
        settings = Settings(
            data_dir=tmp_path / name,
            kinds={"tick": KindConfig(argv=["tick"])},
            schedules={"every-minute": ScheduleConfig(cron="* * * * *", kind="tick", timezone="UTC")},
        )
        loops.append(
            Loop.open(
                settings=lambda s=settings: s,
                store=store,
                processes=fake,
                clock=clock,
                control=Control(),
                emit=lambda *change: None,
                rng=rnd.Random(1),
                subreaper=False,
            )
        )
    try:
        for _ in range(5 * 60):
            clock.advance(1.0)
            for loop in reversed(loops) if int(clock()) % 2 else loops:
                loop.tick()
    finally:
        for loop in loops:
            loop.close()
    keys = [j.unique_key for j in store.list()]
    assert sorted(keys) == [f"schedule:every-minute:2026-12-02T03:0{m}:00Z" for m in range(1, 6)]
