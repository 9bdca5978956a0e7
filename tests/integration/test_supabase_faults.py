"""A supervisor on the Supabase store when the network misbehaves. The production store and
client talk over a loopback socket to the Supabase stand-in (tests/standin/postgrest.py) on a
real PostgreSQL, which injects faults at the socket: connection resets, timeouts before the
call ran, 503 pages, answers lost after the commit, and a whole outage. Agents' side effects
count their runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.stores.policy import RetryPolicy
from bridge.stores.postgres import PostgresStore
from bridge.stores.supabase import SupabaseStore
from supervisor.lifecycle import LIVE, JobSpec, Status
from supervisor.runner import Supervisor
from supervisor.settings import load_settings
from tests.standin.faults import Fault
from tests.standin.postgrest import PostgrestStandin
from tests.support import kill_tagged, wait_until

pytestmark = pytest.mark.postgres

# Appends one line per run to a file named after the job, after sleeping $1 seconds.
AGENT = 'sleep "$1"; echo "$AGENT_SUPERVISOR_ATTEMPT" >> "$0/$AGENT_SUPERVISOR_JOB_ID"'
FAST_RETRIES = RetryPolicy(attempts=6, total_s=8.0, multiplier=0.01, max_wait_s=0.05)
# The production client, but giving up on an answer after 1 s instead of 15 s, so that the
# stand-in's TIMEOUT faults (held 1.5 s) cost a second each, not fifteen.
READ_TIMEOUT_S = 1.0


@dataclass
class World:
    standin: PostgrestStandin
    store: SupabaseStore
    check: PostgresStore  # a direct, fault-free view of the same database
    runs: Path


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path) -> Iterator[World]:
    standin = PostgrestStandin(pg_dsn)
    standin.faults.timeout_hold_s = 1.5
    store = SupabaseStore(
        standin.url, SecretStr(standin.service_key), retry=FAST_RETRIES, read_timeout_s=READ_TIMEOUT_S
    )
    check = PostgresStore(pg_dsn)
    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        yield World(standin, store, check, runs)
    finally:
        for thing in (store, standin, check):
            thing.close()
        kill_tagged(tmp_path)


def supervisor(world: World, tmp_path: Path, sleep_s: float, **overrides: Any) -> Supervisor:
    settings = load_settings(
        data_dir=tmp_path / "data",
        kinds={"work": {"argv": ["sh", "-c", AGENT, str(world.runs), str(sleep_s)]}},
        **{
            "concurrency": 4,
            "heartbeat_s": 0.5,
            "lease_s": 30,
            "poll_s": 0.1,
            "wake_poll_s": 0.02,
            **overrides,
        },
    )
    return Supervisor(settings, world.store, install_signal_handlers=False)


def assert_each_ran_once_and_settled_once(world: World, ids: list[int]) -> None:
    """Every job completed; its agent ran once; each attempt was claimed and settled once."""
    runs = {int(p.name): p.read_text().split() for p in world.runs.iterdir()}
    assert sorted(runs) == sorted(ids)
    assert all(len(lines) == 1 for lines in runs.values()), {k: v for k, v in runs.items() if len(v) > 1}
    for job_id in ids:
        job = world.check.get(job_id)
        assert job.status is Status.COMPLETED, job
        events = world.check.events(job_id)
        claims = [e for e in events if e.to_status is Status.PREPARING]
        settles = [e for e in events if e.from_status in LIVE and e.to_status not in LIVE]
        assert len(claims) == len(settles) == job.attempt == 1, events


def test_thirty_percent_faults_lose_and_duplicate_nothing(world: World, tmp_path: Path) -> None:
    """With 30 % of requests failing (resets, timeouts, 503s, answers lost after commit, and
    gateway timeouts whose retry overlaps the still-running call), a run of 200 jobs ends with
    every job completed, each agent run once, and each attempt's outcome recorded exactly
    once: retries and replays never write twice."""
    ids = world.store.enqueue([JobSpec(kind="work") for _ in range(200)])
    faults = world.standin.faults
    # Timeouts cost a second each; they are fewer than the others.
    faults.kinds = (
        [Fault.RESET] * 3 + [Fault.GATEWAY_503] * 3 + [Fault.LOST] * 3 + [Fault.OVERLAP] * 2 + [Fault.TIMEOUT]
    )
    faults.rate = 0.3
    sup = supervisor(world, tmp_path, 0)
    thread = sup.start(until_idle=True)
    try:
        thread.join(timeout=150)
        assert not thread.is_alive(), "the run did not finish"
    finally:
        sup.stop(drain=False, timeout=10)
    faults.rate = 0.0
    assert sup.outbox_depth == 0
    assert_each_ran_once_and_settled_once(world, ids)
    injected = faults.injected
    assert all(injected.get(kind, 0) >= 5 for kind in ("reset", "timeout", "503", "lost", "overlap")), (
        injected
    )
    requests = len(world.standin.calls)
    print(f"\n200 jobs, 30 % faults: {requests} requests, {sum(injected.values())} faults {dict(injected)}")


def heartbeat_body(call: Any) -> dict[str, Any] | None:
    """The JSON body of a recorded heartbeat request; None for any other request."""
    if call.fn != "jobs_heartbeat":
        return None
    body: dict[str, Any] = call.body
    return body


def after_first_full_beat(calls: Any, ids: list[int]) -> int | None:
    """The index just after the first recorded heartbeat that carries every job in ``ids``."""
    for n, call in enumerate(list(calls)):
        body = heartbeat_body(call)
        if body is not None and sorted(body["p_ids"]) == sorted(ids):
            return n + 1
    return None


def test_heartbeats_of_five_agents_cost_one_request_per_interval(world: World, tmp_path: Path) -> None:
    """With 5 agents running and heartbeat_s = 0.5, two seconds bring about 4 heartbeat
    requests (not 20), each carrying all 5 jobs."""
    ids = world.store.enqueue([JobSpec(kind="work") for _ in range(5)])
    sup = supervisor(world, tmp_path, 30, concurrency=5)
    thread = sup.start()
    try:
        wait_until(lambda: all(world.check.get(i).status is Status.RUNNING for i in ids), 15)
        # The first beat carrying all five follows the last of our own writes (a write makes
        # the next beat come early); from then on only the interval paces them.
        before = wait_until(
            lambda: after_first_full_beat(world.standin.calls, ids), 10, message="a full beat"
        )
        time.sleep(2.0)  # the window in which requests are counted
        window = world.standin.calls[before:]
    finally:
        sup.stop(drain=False, timeout=10)
        thread.join(timeout=10)
    beats = [heartbeat_body(c) for c in window]
    full = [b for b in beats if b is not None]
    assert 3 <= len(full) <= 6, len(full)
    assert all(sorted(b["p_ids"]) == sorted(ids) for b in full)


def running_after(world: World, completed: int) -> bool:
    """At least ``completed`` jobs completed and some agent is running now."""
    counts = world.check.counts().by_status
    return counts[Status.COMPLETED] >= completed and counts[Status.RUNNING] > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_one_minute_outage_loses_nothing_and_the_outbox_drains(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store refuses every connection for 60 s mid-run: the supervisor stays up, claims
    nothing, keeps the outcomes of agents that end meanwhile in its outbox, and replays them
    once the store is back (drained within 35 s); every job then completes exactly once."""
    caplog.set_level(logging.ERROR)
    ids = world.store.enqueue([JobSpec(kind="work") for _ in range(40)])
    sup = supervisor(world, tmp_path, 1.0)
    thread = sup.start(until_idle=True)
    try:
        # Go down while agents run: their batches start and end together, and an outage
        # that began between two batches would leave nothing to end while it lasts.
        wait_until(lambda: running_after(world, 8), 30, message="a batch running after 8 completed")
        world.standin.faults.outage = True
        down_at = time.monotonic()
        # An agent's run (1 s) plus the store's retry budget here (FAST_RETRIES, 5 s) for a
        # call already in flight; the rest is margin for a loaded machine.
        wait_until(lambda: sup.outbox_depth > 0, 30, message="an outcome in the outbox")
        claimed_before = world.check.counts()
        time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
        assert thread.is_alive(), "the supervisor died during the outage"
        assert world.check.counts().by_status == claimed_before.by_status, "the store changed while down"
        depth = sup.outbox_depth
        world.standin.faults.outage = False
        up_at = time.monotonic()
        wait_until(lambda: sup.outbox_depth == 0, 35, interval=0.1, message="the outbox to drain")
        drained = time.monotonic() - up_at
        thread.join(timeout=60)
        assert not thread.is_alive(), "the run did not finish after the outage"
    finally:
        world.standin.faults.outage = False
        sup.stop(drain=False, timeout=10)
    assert_each_ran_once_and_settled_once(world, ids)
    print(f"\n60 s outage: {depth} outcomes in the outbox, drained {drained:.1f} s after the store came back")
