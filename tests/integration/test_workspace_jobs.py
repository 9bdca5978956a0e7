"""Jobs that name a repository, end to end: a real supervisor, real agents, real git.

The agent of each job starts in its own worktree of a shared mirror, on its own branch; jobs of
one repository run one at a time, of two repositories side by side; a workspace that cannot be
made sends the job to waiting_retry as ``prepare_failed``; the git token reaches no agent that
did not ask for it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.stores.sqlite import SQLiteStore
from supervisor.job import ErrorKind, JobSpec, Status
from supervisor.runner import Supervisor
from supervisor.settings import KindConfig, Settings
from tests.gitserver import make_repo
from tests.support import kill_tagged

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX")

# The agent reports where it runs, on which branch, what it sees, and its environment.
AGENT = r"""
import json, os, subprocess, sys, time
head = ["git", "rev-parse", "--abbrev-ref", "HEAD"]
branch = subprocess.run(head, capture_output=True, text=True).stdout.strip()
out = {"cwd": os.getcwd(), "branch": branch, "files": sorted(os.listdir(".")),
       "env": {k: v for k, v in os.environ.items() if k.startswith(("AGENT_SUPERVISOR_", "GITHUB"))},
       "start": time.time()}
if len(sys.argv) > 1 and sys.argv[1] == "commit":
    open("mine.txt", "w").write("agent work\n")
    subprocess.run(["git", "add", "mine.txt"], check=True)
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@x", "commit", "-qm", "work"], check=True)
time.sleep(float(os.environ.get("HOLD", "0")))
out["end"] = time.time()
json.dump(out, open(os.environ["AGENT_SUPERVISOR_RESULT_FILE"], "w"))
"""


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer git config; a token in the supervisor's environment."""
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith("GIT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret-token-never-shown")


def supervisor(tmp_path: Path, **settings: Any) -> Supervisor:
    code = AGENT.replace("{", "{{").replace("}", "}}")  # literal braces in an argv template
    kinds = {
        "code": KindConfig(argv=[sys.executable, "-c", code]),
        "commit": KindConfig(argv=[sys.executable, "-c", code, "commit"]),
        "slow": KindConfig(argv=[sys.executable, "-c", code], env={"HOLD": "1.5"}),
    }
    s = Settings(data_dir=tmp_path / "data", kinds=kinds, heartbeat_s=1, lease_s=10, **settings)
    return Supervisor(s, SQLiteStore(tmp_path / "jobs.sqlite3"), install_signal_handlers=False)


def run(sup: Supervisor, *specs: JobSpec) -> list[Any]:
    from supervisor.submission import resolve_spec

    ids = sup.store.enqueue([resolve_spec(spec, sup.settings) for spec in specs])
    try:
        sup.run(until_idle=True)
        return [sup.store.get(i) for i in ids]
    finally:
        sup.store.close()
        kill_tagged()


@pytest.mark.usefixtures("clean_env")
def test_two_jobs_on_one_repository_get_their_own_worktrees_of_one_mirror(tmp_path: Path) -> None:
    """Each agent runs in its own worktree on its own branch with the repository's files; the
    second job does not clone again; one agent's commit is not in the other's worktree."""
    repo = make_repo(tmp_path / "src" / "notes", {"README.md": "hello\n"})
    sup = supervisor(tmp_path)
    first, second = run(
        sup,
        JobSpec(kind="commit", repo=str(repo)),
        JobSpec(kind="code", repo=f"file://{repo}"),
    )
    assert first.status is second.status is Status.COMPLETED, (first.error, second.error)
    a, b = first.result, second.result
    assert a["branch"] == f"agent/{first.id}-1" and b["branch"] == f"agent/{second.id}-1"
    assert a["cwd"] != b["cwd"]
    assert "README.md" in a["files"] and "README.md" in b["files"]
    assert "mine.txt" not in b["files"]  # the first agent's commit stayed on its branch
    assert a["env"]["AGENT_SUPERVISOR_WORKSPACE"] == a["cwd"]
    assert b["env"]["AGENT_SUPERVISOR_REPO_NAME"] == "notes"
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        facts = [
            e.facts["workspace"]
            for j in (first, second)
            for e in store.events(j.id)
            if "workspace" in e.facts
        ]
    finally:
        store.close()
    assert [f["cloned"] for f in facts] == [True, False]  # one clone, then the mirror again
    assert b["start"] >= a["end"]  # one repository: one job at a time


@pytest.mark.usefixtures("clean_env")
def test_jobs_on_two_repositories_run_side_by_side(tmp_path: Path) -> None:
    """Two repositories, two slots: the agents' run intervals overlap."""
    one = make_repo(tmp_path / "src" / "one", {"a": "1\n"})
    two = make_repo(tmp_path / "src" / "two", {"b": "2\n"})
    sup = supervisor(tmp_path, concurrency=2)
    x, y = run(sup, JobSpec(kind="slow", repo=str(one)), JobSpec(kind="slow", repo=str(two)))
    assert x.status is y.status is Status.COMPLETED, (x.error, y.error)
    assert x.result["start"] < y.result["end"] and y.result["start"] < x.result["end"]


@pytest.mark.usefixtures("clean_env")
def test_a_missing_repository_is_prepare_failed_then_runs_once_it_exists(tmp_path: Path) -> None:
    """The source does not exist yet: the attempt ends as prepare_failed and waits to retry;
    once the repository appears, the next attempt runs."""
    path = tmp_path / "src" / "later"
    sup = supervisor(tmp_path, poll_s=0.2)
    store = sup.store
    from supervisor.submission import resolve_spec

    [job_id] = store.enqueue(
        [resolve_spec(JobSpec(kind="code", repo=str(path), backoff_s=0.5), sup.settings)]
    )
    failed: list[Any] = []

    def watch(change: Any) -> None:
        if change.to_status is Status.WAITING_RETRY and not failed:
            failed.append(store.get(job_id))
            make_repo(path, {"x": "1\n"})

    sup._on_change = watch
    try:
        sup.run(until_idle=True)
        job = store.get(job_id)
    finally:
        store.close()
        kill_tagged()
    [first] = failed
    assert first.error_kind is ErrorKind.PREPARE_FAILED
    assert first.error and "\n" not in first.error
    assert job.status is Status.COMPLETED and job.attempts_used == 2


@pytest.mark.usefixtures("clean_env")
def test_the_git_token_reaches_no_agent_that_did_not_ask(tmp_path: Path) -> None:
    """GITHUB_TOKEN in the supervisor's environment is not in an agent's (pass_token off),
    nor in its result, the job's events or the state file."""
    repo = make_repo(tmp_path / "src" / "r", {"a": "1\n"})
    sup = supervisor(tmp_path)
    [job] = run(sup, JobSpec(kind="code", repo=str(repo)))
    assert job.status is Status.COMPLETED, job.error
    assert "GITHUB_TOKEN" not in job.result["env"]
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        events = json.dumps([dict(e.facts) for e in store.events(job.id)])
    finally:
        store.close()
    secret = "ghp_secret-token-never-shown"
    assert secret not in events
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and path.stat().st_size < 1 << 20:
            assert secret.encode() not in path.read_bytes(), path
