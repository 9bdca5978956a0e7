"""The command line's light commands import only what they use (issue 13, item 9): ``list``,
``show`` and ``submit`` never load the supervisor loop, the OS layer or a remote client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, cli, cli_env

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
    "args",
    [["list"], ["show", "1"], ["submit", "--", "true"], ["cancel", "1"], ["kill", "1"], ["--version"]],
    ids=" ".join,
)
def test_light_commands_do_not_import_the_loop(tmp_path: Path, args: list[str]) -> None:
    """list, show, submit, cancel, kill and --version leave the loop, the OS layer and remote
    clients unloaded; after a first command has validated the settings and kept them, the
    next one with the same inputs reads them back without pydantic (supervisor/settings_cache.py)."""
    data = tmp_path / "d"
    assert cli(data, "submit", "--", "true").returncode == 0
    loaded = loaded_by(data, *args)
    heavy = {m for m in loaded if m in HEAVY or m.split(".")[0] in HEAVY}
    assert heavy == set()
    assert not {"pydantic", "pydantic_settings", "supervisor.settings"} & loaded
    assert ("supervisor.settings_cache" in loaded) == (args != ["--version"])


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


def test_an_edited_config_is_validated_again(tmp_path: Path) -> None:
    """A cached command does not hide a config made invalid since: the error is reported,
    and a valid edit takes effect at once."""
    data = tmp_path / "d"
    config = tmp_path / "config.toml"
    config.write_text("concurrency = 2\n")
    env = cli_env(data, AGENT_SUPERVISOR_CONFIG=str(config))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(data, *args, env=env)

    assert run("submit", "--", "true").returncode == 0
    assert run("list").returncode == 0
    config.write_text("concurrency = 0\n")
    broken = run("list")
    assert broken.returncode == 1 and "invalid setting concurrency" in broken.stderr, broken.stderr
    config.write_text(f'store = "sqlite://{tmp_path / "other.sqlite3"}"\n')
    assert run("list", "--json").stdout.strip() == "[]"  # another store: no jobs there
    config.write_text("concurrency = 2\n")
    assert json.loads(run("list", "--json").stdout)[0]["id"] == 1


def test_a_secret_in_the_environment_never_reaches_the_cache(tmp_path: Path) -> None:
    """Settings that hold a secret are validated every time and never written down."""
    cache = tmp_path / "cache"
    secret = "sb_secret_never_on_disk"
    env = cli_env(tmp_path / "d", XDG_CACHE_HOME=str(cache), SUPABASE_SERVICE_ROLE_KEY=secret)
    for _ in range(2):
        out = cli(tmp_path / "d", "list", env=env)
        assert out.returncode == 0, out.stderr
    written = [p for p in cache.rglob("*") if p.is_file()]
    assert not any(secret.encode() in p.read_bytes() for p in written)
    assert written == []
    del env["SUPABASE_SERVICE_ROLE_KEY"]
    assert cli(tmp_path / "d", "list", env=env).returncode == 0
    assert len([p for p in cache.rglob("*.json")]) == 1  # without the secret, it is cached
