"""Running git for the supervisor's own work on repositories (``supervisor.workspaces``).

Every call is an argv list (never a shell), with a timeout after which git's whole process
group is killed (git fetch runs ``git-remote-https``, ``index-pack``, ssh …), stdin closed
and output captured into temporary files, of which at most ``OUTPUT_CAP`` bytes are read back.

What the environment and command line decide, and why:

* ``GIT_TERMINAL_PROMPT=0`` and a new session (no controlling terminal): a missing credential
  fails at once instead of waiting on a prompt nobody sees (git(1), ENVIRONMENT).
* ``LC_ALL=C``: git's messages in English, the same on every machine, for the one line an
  event records.
* The repository-locating variables that ``git rev-parse --local-env-vars`` lists (GIT_DIR,
  GIT_WORK_TREE, GIT_INDEX_FILE, GIT_CONFIG_PARAMETERS …) are dropped: a supervisor started
  from inside a git hook would otherwise point every call at the wrong repository.
* ``GIT_ALLOW_PROTOCOL``: only the transports ``supervisor.keys`` can produce (git(1): it also
  bars ``ext::``, which runs a command), whatever ``url.<base>.insteadOf`` says.
* The user's global and system config are read (their proxy, ``insteadOf`` rewrites, CA
  bundle, ssh command and, without our token, their credential helper are what they expect
  git to use on their machine; GIT_CONFIG_NOSYSTEM would also drop the macOS Keychain helper
  that Apple's git configures system-wide), but ``-c`` overrides, which beat every config
  file (git-config(1), "CONFIGURATION FILE"), switch off what would surprise a supervisor:
  hooks (``worktree add`` runs post-checkout), an fsmonitor daemon left running, automatic
  gc/maintenance forked into the background after a fetch, submodule recursion.
* Credentials: with a token, git gets ``GIT_ASKPASS`` pointing at a helper script that holds
  no secret and answers only for the token's own host (so a redirect to another host learns
  nothing); the token itself travels in git's environment (readable only by this user, as
  the supervisor's own environment is), never in an argv (``ps``), a URL or a file. The
  credential helpers are reset (``credential.helper=``, git-config(1): "an empty string
  resets the helper list"), so a user's ``store``/``osxkeychain`` helper never saves it.
  Without a token no askpass helper is inherited either (an editor's GIT_ASKPASS would
  pop up a dialog from a background service).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import signal
import subprocess
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final
from urllib.parse import urlsplit

from supervisor.errors import PrepareError
from supervisor.proctable import OWN_CHILDREN, _open_pidfd  # the engine's one pidfd opener

__all__ = ["ASKPASS_SCRIPT", "OUTPUT_CAP", "Credential", "Git", "GitResult", "error_line"]

OUTPUT_CAP: Final = 256 << 10
"""Bytes of each of stdout and stderr kept from one git command."""
TOKEN_USER: Final = "x-access-token"  # noqa: S105 - a user name, not a password
"""The user name sent with a token (GitHub's for tokens; GitLab and others take any name)."""
_TOKEN_VAR: Final = "AGENT_SUPERVISOR_GIT_TOKEN"  # noqa: S105 - the variable's name
_HOST_VAR: Final = "AGENT_SUPERVISOR_GIT_HOST"
_PREFIX_VAR: Final = "AGENT_SUPERVISOR_GIT_PREFIX"
_LOCAL_ENV: Final = frozenset(
    {  # git rev-parse --local-env-vars (git 2.39)
        "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
        "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE",
        "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
        "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
    }
)  # fmt: skip
_DROPPED_ENV: Final = _LOCAL_ENV | {"GIT_ASKPASS", "SSH_ASKPASS", "GIT_TERMINAL_PROMPT", "LANGUAGE"}
_OVERRIDES: Final = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
)
_PROTOCOLS: Final = "file:git:http:https:ssh"
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_KILL_WAIT_S: Final = 5.0

ASKPASS_SCRIPT: Final = f"""#!/bin/sh
# agent-supervisor's GIT_ASKPASS helper. It holds no secret: git passes the token in its
# environment. It answers only git's prompts for the token's own host, e.g.
# "Username for 'https://github.com': " and "Password for 'https://{TOKEN_USER}@github.com': ".
case "$1" in
  "Username for '${{{_PREFIX_VAR}}}${{{_HOST_VAR}}}'"*) echo '{TOKEN_USER}' ;;
  "Password for '${{{_PREFIX_VAR}}}{TOKEN_USER}@${{{_HOST_VAR}}}'"*) printf '%s\\n' "${{{_TOKEN_VAR}}}" ;;
  *) exit 1 ;;
esac
"""
"""The helper's text (``Workspaces`` writes it as ``workspaces/askpass``, mode 0o700)."""


@dataclass(frozen=True, slots=True)
class Credential:
    """A token for one host: ``scheme`` and ``host`` (``host:port`` when the URL has a port)
    as git writes them in its prompts."""

    token: str
    scheme: str
    host: str

    def __repr__(self) -> str:  # never the token, in a traceback or a log line
        return f"Credential(token=***, scheme={self.scheme!r}, host={self.host!r})"

    @classmethod
    def for_url(cls, url: str, token: str, hosts: Collection[str]) -> Credential | None:
        """The credential for fetching ``url``, if there is a ``token`` and the URL is https
        on one of its ``hosts`` (``host`` or ``host:port``): a job naming another server,
        or plain http, never gets it (plain http only to this machine: tests, a local
        mirror server)."""
        if not token:
            return None
        parts = urlsplit(url)
        scheme, hostname = parts.scheme.lower(), parts.hostname or ""
        if scheme != "https" and not (scheme == "http" and hostname in _LOOPBACK):
            return None
        host = hostname if parts.port is None else f"{hostname}:{parts.port}"
        return cls(token, scheme, host) if host in hosts else None


@dataclass(frozen=True, slots=True)
class GitResult:
    """A finished git command (output truncated to ``OUTPUT_CAP`` bytes each)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Git:
    """Runs git commands the way the module docstring describes (thread-safe: no state but
    its configuration)."""

    def __init__(
        self,
        program: str = "git",
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 900.0,
        askpass: Path | None = None,
    ) -> None:
        self.program = program
        self._env = env
        self.timeout_s = timeout_s
        self._askpass = askpass

    def env(self, credential: Credential | None = None) -> dict[str, str]:
        """The environment of one git command (see the module docstring)."""
        source = os.environ if self._env is None else self._env
        env = {
            k: v
            for k, v in source.items()
            if k not in _DROPPED_ENV and not k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
        }
        env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_ALLOW_PROTOCOL": _PROTOCOLS})
        if credential is not None and self._askpass is not None:
            env.update(
                {
                    "GIT_ASKPASS": str(self._askpass),
                    _TOKEN_VAR: credential.token,
                    _HOST_VAR: credential.host,
                    _PREFIX_VAR: f"{credential.scheme}://",
                }
            )
        return env

    def run(
        self,
        *args: str,
        git_dir: Path | None = None,
        cwd: Path | None = None,
        credential: Credential | None = None,
        input: bytes | None = None,
        timeout_s: float | None = None,
        check: bool = True,
        what: str | None = None,
    ) -> GitResult:
        """Run ``git -c OVERRIDES… [--git-dir=D] ARGS``.

        ``PrepareError`` when git cannot be started, runs past the timeout (its process
        group is then killed) or, with ``check``, exits non-zero: "``what`` failed: <git's
        error line>" (``what`` defaults to ``git <verb>``). Without ``check`` the
        ``GitResult`` is returned whatever the exit code.
        """
        argv = [self.program]
        for override in _OVERRIDES:
            argv += ["-c", override]
        argv += ["-c", "credential.helper=" if credential else "core.askPass="]
        if git_dir is not None:
            argv.append(f"--git-dir={git_dir}")
        argv += args
        timeout = self.timeout_s if timeout_s is None else timeout_s
        what = what or f"git {_verb(args)}"
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                # marked as ours before the supervisor's reaper or escapee pass can see it
                with OWN_CHILDREN.spawning() as mark:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        env=self.env(credential),
                        cwd=cwd,
                        start_new_session=True,  # no terminal to prompt on; one group to kill
                    )
                    mark(proc.pid)
            except OSError as exc:
                why = "not found" if exc.errno == errno.ENOENT else (exc.strerror or str(exc))
                raise PrepareError(f"cannot run {self.program}: {why}") from exc
            try:
                try:
                    if input is not None:
                        _feed(proc.stdin, input)
                    returncode = _wait(proc, timeout)
                except BaseException:
                    _kill_group(proc)
                    raise
                if returncode is None:
                    _kill_group(proc)
                    raise PrepareError(f"{what} timed out after {timeout:g} s")
            finally:
                OWN_CHILDREN.release(proc.pid)  # reaped (or killed and waited for) by now
            result = GitResult(returncode, _read(out), _read(err))
        if check and not result.ok:
            secret = credential.token if credential else None
            line = error_line(result.stderr, secret) or f"exit code {result.returncode}"
            raise PrepareError(f"{what} failed: {line}")
        return result


def error_line(stderr: str, secret: str | None = None) -> str:
    """The one line of git's stderr worth recording: its first ``fatal:``/``error:`` line,
    else its first line; a secret and any URL user information are masked, length bounded."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    chosen = (errors or lines or [""])[0]
    if secret:
        chosen = chosen.replace(secret, "***")
    chosen = re.sub(r"(://)[^/@\s']+@", r"\1***@", chosen)
    return chosen[:300]


def _verb(args: Sequence[str]) -> str:
    """The git command in ``args`` (``fetch``), past global options such as ``-c k=v``."""
    skip = False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg == "-c"
            continue
        return arg
    return ""


def _feed(stdin: IO[bytes] | None, data: bytes) -> None:
    assert stdin is not None
    with contextlib.suppress(BrokenPipeError):  # git exited early: its exit code says why
        stdin.write(data)
    with contextlib.suppress(BrokenPipeError):
        stdin.close()


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read(OUTPUT_CAP).decode("utf-8", errors="replace")


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """git's exit code, or None once ``timeout`` has passed. With a pidfd (Linux >= 5.3)
    the wait ends the moment git exits; ``Popen.wait(timeout)`` polls instead, sleeping up
    to 50 ms between looks (CPython's ``Popen._wait``), which added up to half again to
    every short git command of a prepare."""
    fd = _open_pidfd(proc.pid)
    if fd is None:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(0.0, timeout) * 1000):  # EINTR is retried (PEP 475)
            return None
        return proc.wait()
    finally:
        os.close(fd)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the session's group: git and what it started
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_KILL_WAIT_S)
