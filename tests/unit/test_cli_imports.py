"""The command line's light commands import only what they use (issue 13, item 9): ``list``,
``show`` and ``submit`` never load the supervisor loop, the OS layer or a remote client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, cli_env

HEAVY = {
    "supervisor.loop",
    "supervisor.runner",
    "supervisor.pool",
    "supervisor.procs",
    "supervisor.admission",
    "supervisor.health",
    "supervisor.recovery",
    "supervisor.cgroups",
    "supervisor.sync",
    "bridge.jsonrpc",
    "bridge.cli.talk",
    "bridge.cli.doctor",
    "psutil",
    "httpx",
    "supabase",
    "psycopg",
    "tenacity",
    "cronsim",
}

_PROBE = """
import json, sys
from bridge.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print(json.dumps(sorted(sys.modules)), file=sys.stderr)
raise SystemExit(code)
"""


def loaded_by(data: Path, *args: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        env=cli_env(data),
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stderr.splitlines()[-1]))


@pytest.mark.parametrize(
    "args", [["list"], ["show", "1"], ["submit", "--", "true"], ["--version"]], ids=" ".join
)
def test_light_commands_do_not_import_the_loop(tmp_path: Path, args: list[str]) -> None:
    """list, show, submit and --version leave the loop, the OS layer and remote clients unloaded."""
    data = tmp_path / "d"
    subprocess.run(
        [sys.executable, "-m", "bridge", "submit", "--", "true"],
        env=cli_env(data),
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    loaded = loaded_by(data, *args)
    heavy = {m for m in loaded if m in HEAVY or m.split(".")[0] in HEAVY}
    assert heavy == set()


def test_version_does_not_even_load_the_settings(tmp_path: Path) -> None:
    """--version answers before any settings, store or pydantic are loaded."""
    loaded = loaded_by(tmp_path / "d", "--version")
    assert not {"supervisor.settings", "pydantic", "pydantic_settings", "sqlite3"} & loaded


GIT_MACHINERY = {
    "supervisor.workspaces",
    "supervisor.gitcmd",
    "supervisor.mirror",
    "supervisor.workspace_layout",
}


def test_run_and_health_without_repositories_leave_git_unloaded(tmp_path: Path) -> None:
    """A data dir whose jobs never named a repository: ``run --until-idle`` of a job and
    ``health`` load none of the workspace machinery (the idle supervisor's memory, health's
    start-up)."""
    data = tmp_path / "d"
    submitted = subprocess.run(
        [sys.executable, "-m", "bridge", "submit", "--", "true"],
        env=cli_env(data),
        cwd=ROOT,
        capture_output=True,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert not GIT_MACHINERY & loaded_by(data, "run", "--until-idle")
    assert not GIT_MACHINERY & loaded_by(data, "health", "--json")
