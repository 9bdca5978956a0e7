"""Supervisors sharing a real PostgreSQL store: several processes racing over one queue, and a
supervisor whose lease was reaped by another one. Every child is reaped in ``finally``."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bridge.stores.postgres import PostgresStore
from supervisor.errors import LeaseLostError
from supervisor.lifecycle import JobSpec, Outcome, Status
from supervisor.runner import Supervisor
from supervisor.settings import load_settings
from supervisor.store import JobStore
from tests import pg
from tests.support import ROOT, cli_env, kill_tagged, wait_until

pytestmark = pytest.mark.postgres

KEYS = ("alpha", "beta", "gamma", "delta")
# Each agent appends "<worker> <start> <end>" to a file named after its job; keyed jobs stay a
# little (20 ms) so that two of one key running at once could not go unnoticed.
AGENT = (
    's=$(date +%s.%N); [ "$1" = keyed ] && sleep 0.02;'
    ' echo "$AGENT_SUPERVISOR_WORKER $s $(date +%s.%N)" >> "$0/$AGENT_SUPERVISOR_JOB_ID"'
)


@pytest.mark.slow
def test_four_supervisor_processes_run_1000_jobs_exactly_once(
    pg_dsn: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """4 `python -m bridge run` processes on one Postgres store race over 1,000 jobs: every
    agent ran exactly once (counted from the agents' own files), every supervisor did work,
    and no two agents of one concurrency key overlapped in time."""
    runs = tmp_path / "runs"
    runs.mkdir()
    store = PostgresStore(pg_dsn)
    request.addfinalizer(store.close)
    specs = [
        JobSpec(kind="keyed", concurrency_key=KEYS[i // 10 % 4]) if i % 10 == 0 else JobSpec(kind="plain")
        for i in range(1000)
    ]
    ids = store.enqueue(specs)
    key_of = {job_id: spec.concurrency_key for job_id, spec in zip(ids, specs, strict=True)}
    kinds = {name: {"argv": ["sh", "-c", AGENT, str(runs), name]} for name in ("plain", "keyed")}
    procs: list[subprocess.Popen[str]] = []
    started = time.monotonic()
    try:
        for n in range(4):
            env = cli_env(
                tmp_path / f"d{n}",
                AGENT_SUPERVISOR_KINDS=json.dumps(kinds),
                AGENT_SUPERVISOR_WAKE_POLL_S="0.01",
                AGENT_SUPERVISOR_POLL_S="0.2",
            )
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bridge",
                        "--store",
                        pg_dsn,
                        "run",
                        "--until-idle",
                        "--concurrency",
                        "2",
                    ],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            _, err = proc.communicate(timeout=100)
            assert proc.returncode == 0, err[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        kill_tagged(tmp_path)
    elapsed = time.monotonic() - started
    lines = {int(p.name): p.read_text().splitlines() for p in runs.iterdir()}
    assert sorted(lines) == ids
    assert all(len(runs_of_job) == 1 for runs_of_job in lines.values()), "an agent ran twice"
    workers = {line.split()[0] for runs_of_job in lines.values() for line in runs_of_job}
    assert len(workers) == 4, "a supervisor did nothing"
    for key in KEYS:
        spans = sorted(
            (float(s), float(e))
            for job_id, (line,) in lines.items()
            if key_of[job_id] == key
            for _, s, e in [line.split()]
        )
        assert len(spans) == 25
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two agents of key {key} ran at once"
    counts = store.counts().by_status
    assert counts[Status.COMPLETED] == 1000
    claims = [e.at for job_id in ids[::50] for e in store.events(job_id) if e.to_status is Status.PREPARING]
    assert len(claims) == 20  # sampled: one claim per job
    print(f"\n4 supervisors x concurrency 2, 1000 jobs: {elapsed:.1f} s, {1000 / elapsed:.0f} jobs/s")


@pytest.fixture(params=["postgres", "supabase"])
def stores(
    request: pytest.FixtureRequest, pg_dsn: str
) -> Iterator[Callable[[Callable[[], float] | None], JobStore]]:
    """Makes stores on one fresh database, either kind, each with an optional server clock."""
    made: list[Any] = []

    def make(clock: Callable[[], float] | None = None) -> JobStore:
        if request.param == "postgres":
            store: JobStore = pg.clocked_postgres_store(pg_dsn, clock or time.time)
        else:
            from pydantic import SecretStr

            from bridge.stores.supabase import SupabaseStore
            from tests.standin.postgrest import PostgrestStandin

            standin = PostgrestStandin(pg_dsn, clock=clock)
            store = SupabaseStore(standin.url, SecretStr(standin.service_key))
            made.append(standin)
        made.append(store)
        return store

    try:
        yield make
    finally:
        for thing in reversed(made):
            thing.close()


def test_a_reaped_lease_fences_the_late_finish(
    stores: Callable[[Callable[[], float] | None], JobStore], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Supervisor A runs a job; another worker B, whose server clock says A's lease has long
    expired, reaps it and claims it. A's late writes fail their fencing check: A stops its
    agent, its finish raises LeaseLostError, and B's claim stands untouched."""
    caplog.set_level(logging.WARNING)
    release = tmp_path / "release"
    store_a = stores(None)
    b_clock = lambda: time.time() + 3600  # A's lease (30 s) expired an hour ago, for B
    store_b = stores(b_clock)
    settings = load_settings(
        data_dir=tmp_path / "a",
        lease_s=30,
        heartbeat_s=1,
        poll_s=0.2,
        wake_poll_s=0.02,
        concurrency=1,
        kinds={"wait": {"argv": ["sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.02; done', str(release)]}},
    )
    [job_id] = store_a.enqueue([JobSpec(kind="wait", backoff_s=0.0)])
    supervisor = Supervisor(settings, store_a, install_signal_handlers=False)
    thread = supervisor.start()
    try:
        running = wait_until(lambda: store_a.get(job_id).status is Status.RUNNING and store_a.get(job_id), 15)
        agent = psutil.Process(running.pid)
        # Lost with no backoff: protocol v2's reap settles it and promotes it in the same call.
        [reaped] = store_b.reap_stale(5.0)
        assert (reaped.id, reaped.status) == (job_id, Status.PENDING)
        assert [e.to_status for e in store_b.events(job_id)][-2:] == [Status.WAITING_RETRY, Status.PENDING]
        [taken] = store_b.claim("worker-b", 1, lease_s=30)
        assert (taken.id, taken.attempt, taken.lease_owner) == (job_id, 2, "worker-b")
        # A learns it at its next heartbeat (<= 1 s): it stops the agent, records nothing.
        wait_until(lambda: not agent.is_running() or agent.status() == psutil.STATUS_ZOMBIE, 10)
        wait_until(lambda: "outcome not recorded" in caplog.text, 10, message="A's refused finish")
        with pytest.raises(LeaseLostError):
            store_a.finish(job_id, supervisor.worker_id, 1, Outcome(exit_code=0))
        assert store_a.get(job_id) == taken
        after_reap = [e for e in store_a.events(job_id) if e.at >= reaped.updated_at]
        assert all(e.worker != supervisor.worker_id for e in after_reap), after_reap
    finally:
        release.touch()
        supervisor.stop(drain=False, timeout=10)
        thread.join(timeout=10)
        kill_tagged(tmp_path)
    assert not thread.is_alive()
    assert store_a.get(job_id) == taken
