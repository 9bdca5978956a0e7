"""supervisor.workspaces against real git: local repositories, a local smart-HTTP server, no network."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.clock import SYSTEM_CLOCK
from supervisor.errors import PrepareError
from supervisor.gitcmd import Credential, Git
from supervisor.keys import RepoSource, parse_repo
from supervisor.repolock import RepoLock
from supervisor.testing import ManualClock
from supervisor.workspaces import YOUNG_TREE_S, Workspace, Workspaces, WorkspaceSettings, workspaces_summary
from tests.gitserver import GitHTTPServer, GitWrapper, commit, git, make_repo
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-5eCr3T-9f8e7d6c5b4a"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks and process groups")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment without the developer's git config, git variables or token."""
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "GITHUB_TOKEN"}
    base.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return base


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A source repository with a branch, a tag and two files."""
    path = make_repo(tmp_path / "src" / "project", {"README.md": "hello\n", "src/app.py": "print(1)\n"})
    git("tag", "v1", cwd=path)
    git("branch", "feature", cwd=path)
    return path


@pytest.fixture
def wrapper(tmp_path: Path) -> Iterator[GitWrapper]:
    """A git that traces its calls; every held call is let go at the end."""
    wrap = GitWrapper(tmp_path / "wrap")
    try:
        yield wrap
    finally:
        wrap.release()


def spaces(
    root: Path,
    env: dict[str, str],
    *,
    git: Path | str = "git",
    clock: ManualClock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **settings: Any,
) -> Workspaces:
    """The Workspaces of the data dir ``root``, with WorkspaceSettings(**settings)."""
    return Workspaces(
        root / "workspaces",
        settings=WorkspaceSettings(**settings),
        clock=clock or SYSTEM_CLOCK,
        git=str(git),
        env=env,
        sleep=sleep,
    )


def source_of(path: Path) -> RepoSource:
    return parse_repo(f"file://{path}")


def branch_of(workspace: Workspace) -> str:
    return git("rev-parse", "--abbrev-ref", "HEAD", cwd=workspace.path).strip()


def mirror_dir(ws: Workspaces) -> Path:
    [mirror] = ws.mirrors()
    return mirror.path


# -- two jobs, one repository --------------------------------------------------------------
def test_second_job_reuses_the_mirror(
    tmp_path: Path, env: dict[str, str], repo: Path, wrapper: GitWrapper
) -> None:
    """The second job on a repository fetches into the existing mirror instead of cloning."""
    ws = spaces(tmp_path, wrapper.env(env), git=wrapper.program, fresh_s=0)
    first = ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    mirror = mirror_dir(ws)
    inode = mirror.stat().st_ino
    calls_before = len(wrapper.calls())
    second = ws.prepare(source_of(repo), None, job_id=2, attempt=1)
    second_calls = wrapper.calls()[calls_before:]
    assert (first.cloned, second.cloned, second.fetched) == (True, False, True)
    assert mirror_dir(ws).stat().st_ino == inode
    assert not any(c.startswith("init") or " init " in c for c in second_calls), second_calls
    assert any(" fetch " in f" {c} " for c in second_calls)
    assert sum(" init " in f" {c} " for c in wrapper.calls()) == 1


def test_each_attempt_has_its_own_branch_and_commits_stay_apart(
    tmp_path: Path, env: dict[str, str], repo: Path
) -> None:
    """Each worktree has the files on its own branch; a commit in one is not in the other."""
    ws = spaces(tmp_path, env)
    one = ws.prepare(source_of(repo), None, job_id=7, attempt=1)
    two = ws.prepare(source_of(repo), None, job_id=8, attempt=2)
    assert (branch_of(one), branch_of(two)) == ("agent/7-1", "agent/8-2")
    for workspace in (one, two):
        assert (workspace.path / "README.md").read_text() == "hello\n"
        assert (workspace.path / "src" / "app.py").exists()
    made = commit(one.path, "only-in-one.txt", "one\n", "agent one's work")
    assert not (two.path / "only-in-one.txt").exists()
    assert made not in git("log", "--format=%H", cwd=two.path)
    assert git("rev-parse", "HEAD", cwd=two.path).strip() == two.commit
    assert one.env()["AGENT_SUPERVISOR_BRANCH"] == "agent/7-1"
    assert one.env()["AGENT_SUPERVISOR_WORKSPACE"] == str(one.path)
    assert one.env()["AGENT_SUPERVISOR_BASE_REF"] == "main"
    assert one.env()["AGENT_SUPERVISOR_REPO_URL"] == f"file://{repo}"


@pytest.mark.parametrize("form", ["feature", "refs/heads/feature", "v1", "refs/tags/v1", "sha", "short-sha"])
def test_refs_name_a_branch_tag_or_commit(tmp_path: Path, env: dict[str, str], repo: Path, form: str) -> None:
    """A branch, a tag or a commit id (full or abbreviated) is checked out as asked."""
    sha = commit(repo, "later.txt", "later\n")  # main moves on; feature and v1 stay behind
    git("checkout", "--quiet", "feature", cwd=repo)
    feature = commit(repo, "feature.txt", "f\n")
    git("checkout", "--quiet", "main", cwd=repo)
    v1 = git("rev-parse", "v1^{commit}", cwd=repo).strip()
    ref, expected = {
        "feature": ("feature", feature),
        "refs/heads/feature": ("refs/heads/feature", feature),
        "v1": ("v1", v1),
        "refs/tags/v1": ("refs/tags/v1", v1),
        "sha": (sha, sha),
        "short-sha": (sha[:10], sha),
    }[form]
    workspace = spaces(tmp_path, env).prepare(source_of(repo), ref, job_id=1, attempt=1)
    assert workspace.commit == expected
    assert git("rev-parse", "HEAD", cwd=workspace.path).strip() == expected


def test_unknown_ref_is_a_prepare_error_and_leaves_nothing(
    tmp_path: Path, env: dict[str, str], repo: Path
) -> None:
    """A ref the repository does not have fails the prepare and leaves no worktree behind."""
    ws = spaces(tmp_path, env)
    with pytest.raises(PrepareError, match="has no ref 'no-such-branch'"):
        ws.prepare(source_of(repo), "no-such-branch", job_id=3, attempt=1)
    assert not ws.layout.tree(3, 1).exists()
    assert ws.mirrors()[0].holders == ()


def test_fresh_mirror_is_not_fetched_again(
    tmp_path: Path, env: dict[str, str], repo: Path, wrapper: GitWrapper
) -> None:
    """Within workspace_fresh_s a job uses the mirror as it is; after it, the mirror is fetched."""
    clock = ManualClock(time.time())
    ws = spaces(tmp_path, wrapper.env(env), git=wrapper.program, fresh_s=60, clock=clock)
    ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    clock.advance(30)
    before = len(wrapper.calls())
    assert not ws.prepare(source_of(repo), None, job_id=2, attempt=1).fetched
    assert not any(" fetch " in f" {c} " for c in wrapper.calls()[before:])
    clock.advance(31)
    assert ws.prepare(source_of(repo), None, job_id=3, attempt=1).fetched


def test_a_ref_newer_than_the_fresh_window_is_fetched(
    tmp_path: Path, env: dict[str, str], repo: Path
) -> None:
    """A fresh mirror that lacks the requested ref is fetched at once rather than failing."""
    ws = spaces(tmp_path, env, fresh_s=3600)
    ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    git("branch", "brand-new", cwd=repo)
    workspace = ws.prepare(source_of(repo), "brand-new", job_id=2, attempt=1)
    assert workspace.fetched and workspace.base_ref == "brand-new"


def test_a_renamed_default_branch_is_followed(tmp_path: Path, env: dict[str, str], repo: Path) -> None:
    """When the default branch is renamed upstream, the next job starts from the new one."""
    ws = spaces(tmp_path, env, fresh_s=0)
    assert ws.prepare(source_of(repo), None, job_id=1, attempt=1).base_ref == "main"
    git("branch", "-m", "main", "trunk", cwd=repo)
    moved = ws.prepare(source_of(repo), None, job_id=2, attempt=1)
    assert moved.base_ref == "trunk" and moved.env()["AGENT_SUPERVISOR_BASE_REF"] == "trunk"


def test_a_prepare_deletes_branches_of_released_worktrees(
    tmp_path: Path, env: dict[str, str], repo: Path
) -> None:
    """The next prepare on a repository forgets released worktrees and deletes their branches."""
    ws = spaces(tmp_path, env)
    ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    ws.release(1, 1, failed=False)
    later = ws.prepare(source_of(repo), None, job_id=2, attempt=1)
    assert git("for-each-ref", "--format=%(refname:short)", "refs/heads/", cwd=later.path).split() == [
        "agent/2-1"
    ]
    assert "trees/1-1" not in git("worktree", "list", "--porcelain", cwd=later.path)


# -- concurrency ---------------------------------------------------------------------------
def test_prepares_on_one_repository_are_serialised(
    tmp_path: Path, env: dict[str, str], repo: Path, wrapper: GitWrapper
) -> None:
    """While one job clones a repository, a second job on it waits for the lock and runs no git."""
    waited: list[str] = []

    def sleep(seconds: float) -> None:
        waited.append(threading.current_thread().name)
        time.sleep(seconds)

    url = f"file://{repo}"
    ws = spaces(tmp_path, wrapper.env(env, hold=f"fetch --quiet --prune --no-tags -- {url}"),
                git=wrapper.program, sleep=sleep, fresh_s=0)  # fmt: skip
    results: dict[str, Workspace | BaseException] = {}

    def run(name: str, job: int) -> None:
        try:
            results[name] = ws.prepare(source_of(repo), None, job_id=job, attempt=1)
        except BaseException as exc:
            results[name] = exc

    a = threading.Thread(target=run, args=("a", 1), name="a")
    b = threading.Thread(target=run, args=("b", 2), name="b")
    try:
        a.start()
        wait_until(wrapper.held, 30, message="the first clone's fetch to be held")
        calls_while_held = len(wrapper.calls())
        b.start()
        wait_until(lambda: "b" in waited, 30, message="the second job to wait for the lock")
        assert len(wrapper.calls()) == calls_while_held, wrapper.calls()[calls_while_held:]
    finally:
        while a.is_alive() or b.is_alive():  # b's own fetch has the same argv: held too
            wrapper.release()
            a.join(0.1)
            b.join(0.1)
    first, second = results["a"], results["b"]
    assert isinstance(first, Workspace) and isinstance(second, Workspace), results
    assert (first.cloned, second.cloned) == (True, False)
    assert sum(" init " in f" {c} " for c in wrapper.calls()) == 1
    git("fsck", "--no-progress", cwd=first.path)


def test_prepares_on_two_repositories_run_in_parallel(
    tmp_path: Path, env: dict[str, str], repo: Path, wrapper: GitWrapper
) -> None:
    """A job on another repository completes while the first repository's clone is held."""
    other = make_repo(tmp_path / "src" / "other", {"other.txt": "o\n"})
    ws = spaces(tmp_path, wrapper.env(env, hold=f"-- file://{repo} "), git=wrapper.program)
    held: dict[str, Workspace | BaseException] = {}

    def run() -> None:
        try:
            held["a"] = ws.prepare(source_of(repo), None, job_id=1, attempt=1)
        except BaseException as exc:
            held["a"] = exc

    a = threading.Thread(target=run, name="a")
    try:
        a.start()
        wait_until(wrapper.held, 30, message="the first repository's clone to be held")
        done = ws.prepare(source_of(other), None, job_id=2, attempt=1)
        assert (done.path / "other.txt").exists()
        assert a.is_alive() and wrapper.held() and "a" not in held
    finally:
        while a.is_alive():
            wrapper.release()
            a.join(0.2)
    assert isinstance(held["a"], Workspace)


# -- failures ------------------------------------------------------------------------------
def test_fetch_failure_then_recovery(tmp_path: Path, env: dict[str, str], repo: Path) -> None:
    """A fetch from a removed source is a PrepareError with git's line; once back, it works."""
    ws = spaces(tmp_path, env, fresh_s=0)
    ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    moved = repo.with_name("moved-away")
    repo.rename(moved)
    with pytest.raises(PrepareError) as failed:
        ws.prepare(source_of(repo), None, job_id=2, attempt=1)
    message = str(failed.value)
    assert "does not appear to be a git repository" in message and "\n" not in message
    assert message.startswith(f"fetch of file://{repo} failed: fatal:")
    assert not ws.layout.tree(2, 1).exists()
    moved.rename(repo)
    again = ws.prepare(source_of(repo), None, job_id=2, attempt=2)
    assert again.fetched and (again.path / "README.md").exists()


def test_git_timeout_kills_the_command(
    tmp_path: Path, env: dict[str, str], repo: Path, wrapper: GitWrapper
) -> None:
    """A git command that outlives workspace_git_timeout_s is killed with its group; the prepare fails."""
    ws = spaces(
        tmp_path, wrapper.env(env, hold=" --prune --no-tags "), git=wrapper.program, git_timeout_s=1.0
    )
    with pytest.raises(PrepareError, match=r"timed out after 1 s"):
        ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    pids = [int(line.split()[0]) for line in wrapper.trace() if " start " in line and "--no-tags" in line]
    assert pids
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not list((ws.layout.tmp).iterdir()) and not ws.mirrors()


def test_stale_git_lock_file_is_cleared(tmp_path: Path, env: dict[str, str], repo: Path) -> None:
    """A ref lock file a killed git left (older than this boot) no longer fails every fetch."""
    ws = spaces(tmp_path, env, fresh_s=0)
    ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    commit(repo, "new.txt", "new\n")
    lock = mirror_dir(ws) / "refs" / "remotes" / "origin" / "main.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    with pytest.raises(PrepareError, match=r"main\.lock"):  # a fresh lock: some git holds it
        ws.prepare(source_of(repo), None, job_id=2, attempt=1)
    os.utime(lock, (0, 0))  # now older than the machine's boot: its git is gone
    assert ws.prepare(source_of(repo), None, job_id=2, attempt=2).fetched
    assert not lock.exists()


# -- crashes -------------------------------------------------------------------------------
CHILD = """
import json, sys
from pathlib import Path
from supervisor.keys import parse_repo
from supervisor.workspaces import Workspaces, WorkspaceSettings
args = json.loads(sys.argv[1])
ws = Workspaces(Path(args["root"]), settings=WorkspaceSettings(token_hosts=tuple(args["hosts"])),
                git=args["git"], env=args["env"])
ws.prepare(parse_repo(args["url"]), None, job_id=1, attempt=1)
print("prepared")
"""


def start_child(
    root: Path, url: str, env: dict[str, str], git_program: str = "git", hosts: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    args = json.dumps(
        {"root": str(root / "workspaces"), "url": url, "env": env, "git": git_program, "hosts": hosts}
    )
    child_env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", CHILD, args], env=child_env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=10)


def test_sigkill_mid_clone_leaves_no_half_mirror(tmp_path: Path, env: dict[str, str]) -> None:
    """A process SIGKILLed while the pack is half received leaves no mirror; the next prepare works."""
    served = tmp_path / "served"
    make_repo(served / "big.git", {f"f{i}.bin": os.urandom(1 << 16).hex() for i in range(8)})
    orphans: list[psutil.Process] = []
    with GitHTTPServer(served) as server:
        server.stall_pack()
        child = start_child(tmp_path, server.url("big.git"), env)
        try:
            assert server.stalled.wait(60), "the clone never reached the pack"
            orphans = psutil.Process(child.pid).children(recursive=True)
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
            ws = spaces(tmp_path, env)
            assert not ws.mirrors()
            assert list(ws.layout.tmp.iterdir()), "the interrupted clone's directory should be there"
            workspace = ws.prepare(parse_repo(server.url("big.git")), None, job_id=1, attempt=2)
            assert (workspace.path / "f7.bin").exists()
            assert [m.key for m in ws.mirrors()] == [workspace.source.key]
            assert not list(ws.layout.tmp.iterdir())
            git("fsck", "--no-progress", cwd=workspace.path)
        finally:
            server.release()
            if child.poll() is None:
                child.kill()
            child.communicate(timeout=30)
            kill_all(orphans)


def test_sigkill_after_fetch_before_publish(
    tmp_path: Path, env: dict[str, str], repo: Path, wrapper: GitWrapper
) -> None:
    """Killed after the clone's fetch but before its rename: no mirror; prune clears the leftover."""
    hold = wrapper.env(env, hold="symbolic-ref refs/remotes/origin/HEAD")
    child = start_child(tmp_path, f"file://{repo}", hold, str(wrapper.program))
    orphans: list[psutil.Process] = []
    try:
        wait_until(wrapper.held, 30, message="the clone to reach its last step")
        orphans = psutil.Process(child.pid).children(recursive=True)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    finally:
        wrapper.release()
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=30)
        kill_all(orphans)
    ws = spaces(tmp_path, env)
    assert not ws.mirrors() and list(ws.layout.tmp.iterdir())
    ws.prune(live=())
    assert not list(ws.layout.tmp.iterdir())
    assert ws.prepare(source_of(repo), None, job_id=1, attempt=2).cloned


# -- cleanup -------------------------------------------------------------------------------
def test_release_removes_worktree_and_prune_deletes_its_branch(
    tmp_path: Path, env: dict[str, str], repo: Path
) -> None:
    """A settled attempt's worktree goes at release; its branch and git's record of it at prune."""
    clock = ManualClock(time.time())
    ws = spaces(tmp_path, env, clock=clock)
    done = ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    running = ws.prepare(source_of(repo), None, job_id=2, attempt=1)
    ws.release(1, 1, failed=False)
    assert not done.path.exists() and running.path.exists()
    clock.advance(YOUNG_TREE_S + 1)
    report = ws.prune(live={(2, 1)})
    branches = git("for-each-ref", "--format=%(refname:short)", "refs/heads/", cwd=running.path).split()
    assert branches == ["agent/2-1"]
    assert "trees/1-1" not in git("worktree", "list", cwd=running.path)
    assert report.trees_kept == ((2, 1),) and running.path.exists()


def test_a_live_agents_branch_survives_prune_after_it_switched_away(
    tmp_path: Path, env: dict[str, str], repo: Path
) -> None:
    """An agent that checked out another branch keeps its attempt branch (and commits) while live."""
    clock = ManualClock(time.time())
    ws = spaces(tmp_path, env, clock=clock)
    live = ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    work = commit(live.path, "work.txt", "work\n")
    git("checkout", "--quiet", "-b", "scratch", cwd=live.path)
    clock.advance(YOUNG_TREE_S + 1)
    ws.prune(live={(1, 1)})
    assert git("rev-parse", "agent/1-1", cwd=live.path).strip() == work


def test_failed_worktree_is_kept_for_inspection_then_pruned(
    tmp_path: Path, env: dict[str, str], repo: Path
) -> None:
    """A failed attempt's worktree stays for workspace_keep_failed_s, then prune removes it."""
    clock = ManualClock(time.time())
    ws = spaces(tmp_path, env, clock=clock, keep_failed_s=600)
    failed = ws.prepare(source_of(repo), None, job_id=4, attempt=1)
    ws.release(4, 1, failed=True)
    clock.advance(300)
    assert ws.prune(live=()).trees_kept == ((4, 1),) and failed.path.exists()
    clock.advance(301)
    assert ws.prune(live=()).trees_removed == ((4, 1),) and not failed.path.exists()


def test_young_worktrees_are_not_pruned(tmp_path: Path, env: dict[str, str], repo: Path) -> None:
    """A worktree made after the caller listed its live jobs survives a prune that omits it."""
    clock = ManualClock(time.time())
    ws = spaces(tmp_path, env, clock=clock)
    made = ws.prepare(source_of(repo), None, job_id=9, attempt=1)
    assert ws.prune(live=()).trees_kept == ((9, 1),) and made.path.exists()
    clock.advance(YOUNG_TREE_S + 1)
    assert ws.prune(live=()).trees_removed == ((9, 1),)


def test_old_mirrors_are_deleted_never_one_in_use(tmp_path: Path, env: dict[str, str], repo: Path) -> None:
    """Mirrors unused for max_age are deleted, except one holding a live worktree."""
    other = make_repo(tmp_path / "src" / "other")
    clock = ManualClock(time.time())
    ws = spaces(tmp_path, env, clock=clock, max_age_s=1000)
    ws.prepare(source_of(repo), None, job_id=1, attempt=1)
    in_use = ws.prepare(source_of(other), None, job_id=2, attempt=1)
    ws.release(1, 1, failed=False)
    clock.advance(1001)
    report = ws.prune(live={(2, 1)})
    assert report.mirrors_removed == (source_of(repo).key,)
    assert [m.key for m in ws.mirrors()] == [source_of(other).key] and in_use.path.exists()
    assert len(list((ws.layout.root / "locks").iterdir())) == 1
    assert report.bytes_freed > 0


def test_mirrors_beyond_max_bytes_go_least_recently_used_first(tmp_path: Path, env: dict[str, str]) -> None:
    """Over workspace_max_bytes, the least recently used mirrors without worktrees are deleted first."""
    clock = ManualClock(time.time())
    repos = [make_repo(tmp_path / "src" / name) for name in ("a", "b", "c")]
    ws = spaces(tmp_path, env, clock=clock)
    for job, path in enumerate(repos, 1):
        ws.prepare(source_of(path), None, job_id=job, attempt=1)
        ws.release(job, 1, failed=False)
        clock.advance(10)
    ws.prepare(source_of(repos[0]), None, job_id=10, attempt=1)  # a: used last, and held
    ws.prune(live={(10, 1)})
    sizes = {m.key: m.size_bytes for m in ws.mirrors()}
    limit = sum(sizes.values()) - 1
    ws2 = spaces(tmp_path, env, clock=clock, max_bytes=limit)
    report = ws2.prune(live={(10, 1)})
    assert report.mirrors_removed == (source_of(repos[1]).key,)  # b is older than c; a is held
    ws3 = spaces(tmp_path, env, clock=clock, max_bytes=1)
    assert ws3.prune(live={(10, 1)}).mirrors_removed == (source_of(repos[2]).key,)
    assert [m.key for m in ws3.mirrors()] == [source_of(repos[0]).key]


def test_prune_skips_a_repository_being_prepared(tmp_path: Path, env: dict[str, str], repo: Path) -> None:
    """A mirror whose lock is held (a prepare under way elsewhere) is reported busy, not deleted."""
    ws = spaces(tmp_path, env, max_age_s=1, max_bytes=1, clock=ManualClock(time.time() + 10))
    spaces(tmp_path, env).prepare(source_of(repo), None, job_id=1, attempt=1)
    ws.release(1, 1, failed=False)
    lock = RepoLock(ws.layout.lock(mirror_dir(ws).name), clock=SYSTEM_CLOCK, sleep=time.sleep)
    assert lock.acquire(None)
    try:
        report = ws.prune(live=())
    finally:
        lock.release()
    assert report.busy == (source_of(repo).key,) and report.mirrors_removed == ()
    assert ws.prune(live=()).mirrors_removed == (source_of(repo).key,)


def test_summary_and_listing(tmp_path: Path, env: dict[str, str], repo: Path) -> None:
    """mirrors() and workspaces_summary() name each repository and the jobs holding worktrees."""
    ws = spaces(tmp_path, env)
    ws.prepare(source_of(repo), None, job_id=5, attempt=2)
    [info] = ws.mirrors()
    assert info.key == f"file://{repo}" and info.holders == ((5, 2),) and info.size_bytes > 0
    assert info.to_json()["jobs"] == [{"job_id": 5, "attempt": 2}]
    summary = workspaces_summary(tmp_path)
    assert summary["repositories"] == 1 and summary["worktrees"] == 1
    assert summary["held"] == [{"repository": f"file://{repo}", "jobs": [[5, 2]]}]


# -- credentials ---------------------------------------------------------------------------
def all_bytes_under(path: Path) -> Iterator[tuple[Path, bytes]]:
    for file in path.rglob("*"):
        if file.is_file() and not file.is_symlink():
            yield file, file.read_bytes()


def test_token_reaches_git_through_askpass_and_is_never_stored(
    tmp_path: Path, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A private https-like repository clones with the token, which is in no file, config or log."""
    served = tmp_path / "served"
    make_repo(served / "private.git", {"secret-project.txt": "x\n"})
    home = Path(env["HOME"])
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")  # a user who stores credentials
    caplog.set_level(logging.DEBUG)
    with GitHTTPServer(served, token=TOKEN) as server:
        ws = spaces(tmp_path, dict(env, GITHUB_TOKEN=TOKEN), token_hosts=(server.host,))
        workspace = ws.prepare(parse_repo(server.url("private.git")), None, job_id=1, attempt=1)
        assert (workspace.path / "secret-project.txt").exists()
        assert any(a and a.startswith("Basic ") for a in server.authorizations)
        assert not (home / ".git-credentials").exists()  # the user's store helper was not asked
        # Control: the same git and HOME without our reset of the helpers would have stored it.
        askpass = tmp_path / "plain-askpass"
        askpass.write_text(
            f'#!/bin/sh\ncase "$1" in Username*) echo x-access-token;; *) echo {TOKEN};; esac\n'
        )
        askpass.chmod(0o700)
        control = dict(env, GIT_ASKPASS=str(askpass))
        subprocess.run(
            ["git", "ls-remote", server.url("private.git")], env=control, capture_output=True, check=True
        )
    assert TOKEN in (home / ".git-credentials").read_text()  # the control stored it …
    (home / ".git-credentials").unlink()
    for file, data in all_bytes_under(tmp_path / "workspaces"):
        assert TOKEN.encode() not in data, file
    config = git("config", "--list", cwd=workspace.path)
    assert TOKEN not in config and f"remote.origin.url={server.url('private.git')}" in config
    assert TOKEN not in caplog.text
    assert TOKEN not in json.dumps(workspace.facts()) and TOKEN not in json.dumps(workspace.env())


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="samples /proc/<pid>/cmdline")
def test_token_is_in_no_command_line(tmp_path: Path, env: dict[str, str]) -> None:
    """While git fetches with the token, no process's command line (ps) holds it."""
    served = tmp_path / "served"
    make_repo(served / "private.git", {"a.bin": os.urandom(1 << 15).hex()})
    results: list[Workspace | BaseException] = []
    with GitHTTPServer(served, token=TOKEN) as server:
        ws = spaces(tmp_path, dict(env, GITHUB_TOKEN=TOKEN), token_hosts=(server.host,))

        def run() -> None:
            try:
                results.append(ws.prepare(parse_repo(server.url("private.git")), None, job_id=1, attempt=1))
            except BaseException as exc:
                results.append(exc)

        server.stall_pack()
        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert server.stalled.wait(60), "the fetch never reached the pack"
            command_lines = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        command_lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
                    except OSError:
                        continue
        finally:
            server.release()
            thread.join(60)
    assert isinstance(results[0], Workspace), results
    assert any(
        b"git-remote-http" in line and server.url("private.git").encode() in line for line in command_lines
    )
    assert not [line for line in command_lines if TOKEN.encode() in line]


def test_token_is_not_offered_to_other_hosts(tmp_path: Path, env: dict[str, str]) -> None:
    """A server not in git_token_hosts never receives the token: the prepare fails without it."""
    served = tmp_path / "served"
    make_repo(served / "private.git")
    with GitHTTPServer(served, token=TOKEN) as server:
        ws = spaces(tmp_path, dict(env, GITHUB_TOKEN=TOKEN))  # token_hosts: github.com only
        with pytest.raises(PrepareError, match="could not read Username") as failed:
            ws.prepare(parse_repo(server.url("private.git")), None, job_id=1, attempt=1)
        assert not any(a for a in server.authorizations)
    assert TOKEN not in str(failed.value)


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("Username for 'https://github.com': ", "x-access-token\n"),
        ("Password for 'https://x-access-token@github.com': ", f"{TOKEN}\n"),
        ("Username for 'https://evil.example': ", None),  # a redirect to another host
        ("Password for 'https://x-access-token@github.com.evil.example': ", None),
        ("Password for 'http://x-access-token@github.com': ", None),  # downgraded to plain http
        ("Enter passphrase for key '/home/u/.ssh/id_ed25519': ", None),
    ],
)
def test_askpass_helper_answers_only_for_the_tokens_host(
    tmp_path: Path, env: dict[str, str], prompt: str, answer: str | None
) -> None:
    """The askpass helper gives the token only to git's prompts for the host it belongs to."""
    ws = spaces(tmp_path, env)
    ws.layout.ensure()
    helper_env = Git(env=env, askpass=ws.layout.askpass).env(Credential(TOKEN, "https", "github.com"))
    done = subprocess.run([str(ws.layout.askpass), prompt], env=helper_env, capture_output=True, text=True)
    assert (done.stdout if done.returncode == 0 else None) == answer
    assert TOKEN not in ws.layout.askpass.read_text()
