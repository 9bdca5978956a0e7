"""The pieces of the workspaces that need no git: the repository lock, git's environment and
error line, the agent's environment, and the settings."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from supervisor.attempt import agent_environment
from supervisor.errors import ConfigError, InvalidJobError
from supervisor.gitcmd import Credential, Git, error_line
from supervisor.keys import parse_repo
from supervisor.repolock import RepoLock
from supervisor.settings import load_settings
from supervisor.testing import ManualClock
from supervisor.workspaces import Workspace, WorkspaceSettings

TOKEN = "ghp_0123456789abcdefSECRET"


def lock(path: Path, clock: ManualClock | None = None, sleeps: list[float] | None = None) -> RepoLock:
    the_clock = clock or ManualClock()

    def sleep(seconds: float) -> None:
        (sleeps if sleeps is not None else []).append(seconds)
        the_clock.advance(seconds)

    return RepoLock(path, clock=the_clock, sleep=sleep)


# -- RepoLock ------------------------------------------------------------------------------
def test_repo_lock_is_exclusive_between_holders(tmp_path: Path) -> None:
    """A second RepoLock on the same file cannot take it until the first lets go."""
    first, second = lock(tmp_path / "r.lock"), lock(tmp_path / "r.lock")
    assert first.acquire(None)
    assert not second.acquire(None)
    first.release()
    assert second.acquire(None) and second.held
    second.release()


def test_repo_lock_gives_up_after_its_timeout_backing_off(tmp_path: Path) -> None:
    """A busy lock is polled with growing pauses (capped at 0.2 s) until the timeout, then False."""
    holder = lock(tmp_path / "r.lock")
    assert holder.acquire(None)
    sleeps: list[float] = []
    assert not lock(tmp_path / "r.lock", sleeps=sleeps).acquire(1.0)
    assert sleeps[:3] == [0.01, 0.02, 0.04] and max(sleeps) == 0.2
    assert 1.0 <= sum(sleeps) < 1.3
    holder.release()


def test_repo_lock_retries_when_its_file_was_deleted_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter that locks a lock file its holder just deleted starts again on the new file."""
    path = tmp_path / "r.lock"
    holder, waiter = lock(path), lock(path)
    assert holder.acquire(None)
    real_flock = fcntl.flock
    calls = {"n": 0}

    def flock(fd: int, operation: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # the waiter has opened the old file: now its holder deletes it
            holder.unlink()
        real_flock(fd, operation)

    monkeypatch.setattr("supervisor.repolock.fcntl.flock", flock)
    assert waiter.acquire(None)
    monkeypatch.setattr("supervisor.repolock.fcntl.flock", real_flock)
    assert calls["n"] == 2 and path.exists()
    assert not lock(path).acquire(None)  # the waiter holds the file that is there now
    waiter.release()


def test_repo_lock_unlink_needs_the_lock(tmp_path: Path) -> None:
    """Only the holder may delete the lock file."""
    with pytest.raises(RuntimeError):
        lock(tmp_path / "r.lock").unlink()


def test_repo_lock_excludes_threads(tmp_path: Path) -> None:
    """Two threads of one process exclude each other (each RepoLock has its own description)."""
    inside, overlap = [0], [False]
    guard = threading.Lock()

    def work() -> None:
        mine = RepoLock(tmp_path / "r.lock", clock=ManualClock(), sleep=lambda s: None)
        for _ in range(50):
            assert mine.acquire(30.0)
            with guard:
                inside[0] += 1
                overlap[0] |= inside[0] > 1
            with guard:
                inside[0] -= 1
            mine.release()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not overlap[0]


# -- git's environment and error line -------------------------------------------------------
def test_git_environment_drops_repository_variables_and_prompts(tmp_path: Path) -> None:
    """git runs without inherited GIT_DIR-like variables or askpass helpers, never prompting."""
    inherited = {
        "PATH": "/usr/bin", "GIT_DIR": "/elsewhere", "GIT_WORK_TREE": "/w", "GIT_INDEX_FILE": "/i",
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.hooksPath", "GIT_CONFIG_VALUE_0": "/evil",
        "GIT_ASKPASS": "/usr/bin/editor-askpass", "SSH_ASKPASS": "/x", "GIT_SSH_COMMAND": "ssh -i key",
        "LANGUAGE": "de",
    }  # fmt: skip
    env = Git(env=inherited, askpass=tmp_path / "askpass").env()
    assert env["PATH"] == "/usr/bin" and env["GIT_SSH_COMMAND"] == "ssh -i key"
    for gone in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0",
                 "GIT_CONFIG_VALUE_0", "GIT_ASKPASS", "SSH_ASKPASS", "LANGUAGE"):  # fmt: skip
        assert gone not in env
    assert (env["GIT_TERMINAL_PROMPT"], env["LC_ALL"]) == ("0", "C")
    assert env["GIT_ALLOW_PROTOCOL"] == "file:git:http:https:ssh"
    assert TOKEN not in env.values()


def test_git_environment_with_a_credential_points_at_the_helper(tmp_path: Path) -> None:
    """With a credential git gets the askpass helper, the token and the host it is for."""
    env = Git(env={}, askpass=tmp_path / "askpass").env(Credential(TOKEN, "https", "github.com"))
    assert env["GIT_ASKPASS"] == str(tmp_path / "askpass")
    assert (
        env["AGENT_SUPERVISOR_GIT_HOST"] == "github.com" and env["AGENT_SUPERVISOR_GIT_PREFIX"] == "https://"
    )
    assert env["AGENT_SUPERVISOR_GIT_TOKEN"] == TOKEN


@pytest.mark.parametrize(
    ("url", "hosts", "expected"),
    [
        ("https://github.com/o/r.git", ("github.com",), ("https", "github.com")),
        ("https://GitHub.com/o/r.git", ("github.com",), ("https", "github.com")),
        ("https://ghe.example:8443/o/r", ("ghe.example:8443",), ("https", "ghe.example:8443")),
        ("https://ghe.example:8443/o/r", ("ghe.example",), None),
        ("https://gitlab.com/o/r.git", ("github.com",), None),
        ("http://github.com/o/r.git", ("github.com",), None),
        ("http://127.0.0.1:9418/r.git", ("127.0.0.1:9418",), ("http", "127.0.0.1:9418")),
        ("git@github.com:o/r.git", ("github.com",), None),
        ("ssh://git@github.com/o/r.git", ("github.com",), None),
        ("file:///srv/r", ("github.com",), None),
        ("/srv/r", ("github.com",), None),
    ],
)
def test_the_token_goes_only_to_its_hosts_over_https(
    url: str, hosts: tuple[str, ...], expected: tuple[str, str] | None
) -> None:
    """A credential is made for https URLs of the token's hosts only (http just to this machine)."""
    credential = Credential.for_url(url, TOKEN, hosts)
    assert (None if credential is None else (credential.scheme, credential.host)) == expected
    assert Credential.for_url(url, "", hosts) is None


def test_credential_repr_hides_the_token() -> None:
    """A credential in a traceback or a log line never shows its token."""
    assert TOKEN not in repr(Credential(TOKEN, "https", "github.com"))


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        ("fatal: '/x' does not appear to be a git repository\nfatal: Could not read from remote repository."
         "\n\nPlease make sure you have the correct access rights\n",
         "fatal: '/x' does not appear to be a git repository"),
        ("remote: Invalid username or password.\nfatal: Authentication failed for 'https://github.com/o/r.git/'\n",
         "fatal: Authentication failed for 'https://github.com/o/r.git/'"),
        ("hint: something\nerror: cannot lock ref 'refs/remotes/origin/main'\n",
         "error: cannot lock ref 'refs/remotes/origin/main'"),
        ("warning: only this\n", "warning: only this"),
        ("", ""),
        (f"fatal: unable to access 'https://x-access-token:{TOKEN}@github.com/o/r/': 403\n",
         "fatal: unable to access 'https://***@github.com/o/r/': 403"),
        (f"fatal: bad token {TOKEN}\n", "fatal: bad token ***"),
    ],
)  # fmt: skip
def test_error_line_is_gits_first_fatal_line_without_secrets(stderr: str, line: str) -> None:
    """The recorded line is git's first fatal/error line, with the token and URL users masked."""
    assert error_line(stderr, TOKEN) == line


def test_error_line_is_bounded() -> None:
    """A very long line is cut to 300 characters."""
    assert len(error_line("fatal: " + "x" * 5000)) == 300


# -- the agent's environment ----------------------------------------------------------------
def workspace() -> Workspace:
    return Workspace(
        path=Path("/data/workspaces/trees/3-1/app"),
        source=parse_repo("octo/app"),
        branch="agent/3-1",
        base_ref="main",
        commit="a" * 40,
        job_id=3,
        attempt=1,
    )


def test_workspace_env_is_the_agent_contract() -> None:
    """An agent learns its worktree, repository, branch and base from seven variables."""
    assert workspace().env() == {
        "AGENT_SUPERVISOR_WORKSPACE": "/data/workspaces/trees/3-1/app",
        "AGENT_SUPERVISOR_REPO_URL": "https://github.com/octo/app.git",
        "AGENT_SUPERVISOR_REPO_OWNER": "octo",
        "AGENT_SUPERVISOR_REPO_NAME": "app",
        "AGENT_SUPERVISOR_BRANCH": "agent/3-1",
        "AGENT_SUPERVISOR_BASE_REF": "main",
        "AGENT_SUPERVISOR_BASE_COMMIT": "a" * 40,
    }


@pytest.mark.parametrize("pass_token", [False, True])
def test_agent_environment_holds_the_token_only_when_its_kind_asks(pass_token: bool) -> None:
    """The token variable is removed from an agent's environment unless pass_token is set."""
    env = agent_environment(
        {"PATH": "/bin", "GITHUB_TOKEN": TOKEN}, workspace(), token_env="GITHUB_TOKEN", pass_token=pass_token
    )
    assert ("GITHUB_TOKEN" in env) is pass_token
    assert env["PATH"] == "/bin" and env["AGENT_SUPERVISOR_BRANCH"] == "agent/3-1"
    assert "GITHUB_TOKEN" not in agent_environment(
        {"GITHUB_TOKEN": TOKEN}, None, token_env="GITHUB_TOKEN", pass_token=False
    )


# -- settings ------------------------------------------------------------------------------
def test_workspace_settings_come_from_the_settings(tmp_path: Path) -> None:
    """The settings' workspace fields become one WorkspaceSettings value."""
    settings = load_settings(
        data_dir=tmp_path, workspace_fresh_s=5, workspace_max_age_s=7, workspace_max_bytes=1 << 20,
        workspace_keep_failed_s=0, workspace_branch_prefix="bot-", workspace_git_timeout_s=30,
        git_token_env="GH_TOKEN", git_token_hosts=["GitHub.Example.com:8443"],
    )  # fmt: skip
    assert WorkspaceSettings.from_settings(settings) == WorkspaceSettings(
        fresh_s=5, max_age_s=7, max_bytes=1 << 20, keep_failed_s=0, branch_prefix="bot-", git_timeout_s=30,
        token_env="GH_TOKEN", token_hosts=("github.example.com:8443",),
    )  # fmt: skip
    defaults = WorkspaceSettings.from_settings(load_settings(data_dir=tmp_path))
    assert defaults == WorkspaceSettings() and defaults.max_age_s == 14 * 86400


@pytest.mark.parametrize(
    ("name", "value"),
    [("workspace_branch_prefix", "-x/"), ("workspace_branch_prefix", "a..b/"),
     ("workspace_branch_prefix", "a b"), ("git_token_env", "1TOKEN"), ("git_token_env", "A-B"),
     ("default_owner", "own er"),
     ("git_token_hosts", ["https://github.com"]), ("workspace_max_age_s", 0)],
)  # fmt: skip
def test_bad_workspace_settings_are_refused(tmp_path: Path, name: str, value: object) -> None:
    """A setting git or the environment could not use is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=name):
        load_settings(data_dir=tmp_path, **{name: value})


def test_kind_repo_and_ref_are_checked_at_load(tmp_path: Path) -> None:
    """A kind's default repo must parse (a bare name needs default_owner) and its ref be valid."""
    kinds = {"coder": {"argv": ["coder"], "repo": "notes", "ref": "main", "pass_token": True}}
    settings = load_settings(data_dir=tmp_path, kinds=kinds, default_owner="octo")
    assert settings.kinds["coder"].repo == "notes" and settings.kinds["coder"].pass_token
    with pytest.raises(ConfigError, match=r"kinds\.coder\.repo"):
        load_settings(data_dir=tmp_path, kinds=kinds)
    with pytest.raises(ConfigError, match=r"kinds\.coder\.ref"):
        load_settings(data_dir=tmp_path, kinds={"coder": {"argv": ["coder"], "ref": "--upload-pack=x"}})
    with pytest.raises(InvalidJobError):  # the same rule, used at prepare time
        parse_repo("notes")


def test_pass_token_flag_is_not_a_secret_in_a_shared_config_file(tmp_path: Path) -> None:
    """``pass_token = true`` in a group-readable config file is fine; a token value is not."""
    config = tmp_path / "config.toml"
    config.write_text('[kinds.coder]\nargv = ["coder"]\npass_token = true\n')
    os.chmod(config, 0o644)
    assert load_settings(config, data_dir=tmp_path).kinds["coder"].pass_token
    config.write_text('[kinds.coder]\nargv = ["coder"]\n[kinds.coder.env]\nGITHUB_TOKEN = "ghp_x"\n')
    with pytest.raises(ConfigError, match="holds a secret"):
        load_settings(config, data_dir=tmp_path)
