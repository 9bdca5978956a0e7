"""Several supervisor processes sharing one SQLite store: no job ever runs twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bridge.stores.sqlite import SQLiteStore
from supervisor.lifecycle import JobSpec, Status
from tests.support import ROOT, cli_env, kill_tagged


def test_two_supervisors_never_run_a_job_twice(tmp_path: Path) -> None:
    """200 jobs, 2 supervisors x concurrency 2 on one store: every agent ran exactly once,
    counted from the agents' own side effects, and both supervisors did work."""
    runs = tmp_path / "runs"
    runs.mkdir()
    store_url = f"sqlite://{tmp_path / 'shared.sqlite3'}"
    store = SQLiteStore(tmp_path / "shared.sqlite3")
    # Each agent appends one line "<worker>" to a file named after its job.
    code = 'echo "$AGENT_SUPERVISOR_WORKER" >> "$0/$AGENT_SUPERVISOR_JOB_ID"'
    ids = store.enqueue([JobSpec(command=("sh", "-c", code, str(runs))) for _ in range(200)])
    store.close()
    procs = []
    try:
        for name in ("a", "b"):
            env = cli_env(
                tmp_path / name, AGENT_SUPERVISOR_STORE=store_url, AGENT_SUPERVISOR_WAKE_POLL_S="0.01"
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bridge", "run", "--until-idle", "--concurrency", "2"],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        kill_tagged(tmp_path)
    lines = {int(p.name): p.read_text().split() for p in runs.iterdir()}
    assert sorted(lines) == ids
    assert all(len(workers) == 1 for workers in lines.values()), "a job's agent ran twice"
    assert len({w for workers in lines.values() for w in workers}) == 2, "one supervisor did nothing"
    store = SQLiteStore(tmp_path / "shared.sqlite3")
    try:
        assert store.counts().by_status[Status.COMPLETED] == 200
    finally:
        store.close()
