"""``agent-supervisor workspaces`` and ``workspaces prune`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from bridge.compose import build_store
from supervisor.keys import parse_repo
from supervisor.settings import Settings
from supervisor.workspaces import YOUNG_TREE_S, Workspaces, WorkspaceSettings
from tests.gitserver import age_tree, make_repo
from tests.support import cli


def test_workspaces_lists_nothing_then_the_repositories(tmp_path: Path) -> None:
    """An empty data dir lists no repositories; after a prepare, the mirror and its job."""
    empty = cli(tmp_path, "workspaces")
    assert (empty.returncode, empty.stdout) == (0, "no repositories held\n"), empty.stderr
    assert json.loads(cli(tmp_path, "workspaces", "--json").stdout) == []
    repo = make_repo(tmp_path / "src" / "app")
    Workspaces(tmp_path / "workspaces", settings=WorkspaceSettings()).prepare(
        parse_repo(str(repo)), None, job_id=3, attempt=1
    )
    listed = cli(tmp_path, "workspaces", "--json")
    [mirror] = json.loads(listed.stdout)
    assert mirror["repository"] == f"file://{repo}" and mirror["url"] == str(repo)
    assert mirror["jobs"] == [{"job_id": 3, "attempt": 1}] and mirror["size_bytes"] > 0
    assert mirror["fetched_at"].endswith("+00:00")
    text = cli(tmp_path, "workspaces").stdout
    assert f"file://{repo}" in text and "3-1" in text


def test_workspaces_prune_keeps_live_jobs_worktrees(tmp_path: Path) -> None:
    """``workspaces prune`` removes a finished attempt's worktree and keeps a live job's."""
    repo = make_repo(tmp_path / "src" / "app")
    store = build_store(Settings(data_dir=tmp_path))
    try:
        submitted = cli(tmp_path, "submit", "--", "true")
        assert submitted.returncode == 0, submitted.stderr
        [live] = store.claim("someone-else", 1, lease_s=600)  # preparing, attempt 1
    finally:
        store.close()
    spaces = Workspaces(tmp_path / "workspaces", settings=WorkspaceSettings())
    kept = spaces.prepare(parse_repo(str(repo)), None, job_id=live.id, attempt=live.attempt)
    gone = spaces.prepare(parse_repo(str(repo)), None, job_id=live.id + 100, attempt=1)
    for workspace in (kept, gone):
        age_tree(workspace.path.parent, YOUNG_TREE_S + 60)
    pruned = cli(tmp_path, "workspaces", "prune", "--json")
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert report["trees_removed"] == [[live.id + 100, 1]]
    assert report["trees_kept"] == [[live.id, live.attempt]]
    assert kept.path.is_dir() and not gone.path.exists()
    assert "worktrees removed: 0, kept: 1" in cli(tmp_path, "workspaces", "prune").stdout
