"""Starting an agent's wrapper, and reading what the wrapper leaves behind (its exit file).

An agent runs as ``/bin/sh -c WRAPPER agent-supervisor-wrapper argv...`` in a new session (so
its pgid is the wrapper's pid) with stdin from /dev/null and stdout/stderr appended straight to a
log file: the agent never writes into a pipe that the supervisor holds, so it cannot die of
SIGPIPE or block when the supervisor goes away, its output never sits in our memory, and a
grandchild that inherited the output cannot keep our wait hanging on a pipe (bpo-37424).

The wrapper (``supervisor.limits.wrapper_script``) writes the agent's exit status to
``$AGENT_SUPERVISOR_EXIT_FILE`` (``run_dir/exit``, mode 0600); ``read_exit_file`` decodes it.
``start`` resolves the command, prepares the run dir and the log, and starts the wrapper
(``os.posix_spawn`` where it can, ``subprocess.Popen`` for a cwd or the cgroup handshake);
``supervisor.procs.spawn`` wraps the result in an ``AgentProcess``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from supervisor.clock import Clock
from supervisor.datadir import AttemptFiles
from supervisor.errors import SpawnError
from supervisor.limits import Cgroups, Setup, plain_wrapper
from supervisor.processes import TAG_ATTEMPT, TAG_JOB, TAG_WORKER, ExitStatus, Limits

__all__ = ["EXIT_FILE_ENV", "UNKNOWN", "WRAPPER_NAME", "Started", "from_wait", "read_exit_file", "start"]

EXIT_FILE_ENV: Final = "AGENT_SUPERVISOR_EXIT_FILE"
WRAPPER_NAME: Final = "agent-supervisor-wrapper"
_SH: Final = "/bin/sh"


# ---------------------------------------------------------------- exit status


UNKNOWN: Final = ExitStatus(None, None, None)


def _from_rc(rc: int, rss: int | None) -> ExitStatus:
    if 128 < rc < 128 + signal.NSIG:  # sh's $? for "killed by signal rc-128"
        return ExitStatus(None, rc - 128, rss)
    return ExitStatus(rc, None, rss)


def from_wait(status: int, usage: object) -> ExitStatus:
    """The wrapper's status as ``wait4`` gave it (its rusage: the peak RSS bound)."""
    # ru_maxrss is KiB on Linux, bytes on macOS. It is the max over the wrapper and the agent
    # it waited for, and Linux carries the pre-exec high-water mark over exec, so it is at
    # least the supervisor's RSS at spawn time: an upper bound, not the agent's exact peak.
    maxrss = int(getattr(usage, "ru_maxrss", 0))
    rss = maxrss if sys.platform == "darwin" else maxrss * 1024
    if os.WIFSIGNALED(status):
        return ExitStatus(None, os.WTERMSIG(status), rss or None)
    return _from_rc(os.WEXITSTATUS(status), rss or None)


def read_exit_file(path: Path) -> ExitStatus:
    """What the wrapper recorded in its exit file; ``UNKNOWN`` when it is missing (the wrapper
    was SIGKILLed, or is still waiting), empty (killed mid-write) or garbled."""
    try:
        rc = int(path.read_text(encoding="ascii", errors="replace").strip())
    except (OSError, ValueError):
        return UNKNOWN
    return _from_rc(rc, None) if 0 <= rc <= 255 else UNKNOWN


# ---------------------------------------------------------------- starting the wrapper


_CAN_POSIX_SPAWN: Final = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_CLOSE")
_FD_DIR: Final = "/proc/self/fd" if sys.platform == "linux" else "/dev/fd"
_SIGDEF: Final = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, n))


def _inheritable_fds() -> list[int]:
    """Our descriptors above 2 that an exec would pass on. Python opens everything
    close-on-exec (PEP 446), so this is empty unless the host made one inheritable."""
    found = []
    for name in os.listdir(_FD_DIR):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # listdir's own descriptor, closed by now
                if os.get_inheritable(fd):
                    found.append(fd)
    return found


def _posix_spawn(args: list[str], env: Mapping[str, str], log_fd: int) -> int:
    """``args`` in a new session, stdin /dev/null, stdout/stderr onto ``log_fd``, with the
    signals Python ignores back at their defaults (as Popen does). It takes half of Popen's
    time (no error pipe, no Python in the child): the wrapper spawn is in every job's path."""
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, log_fd, 1),
        (os.POSIX_SPAWN_DUP2, log_fd, 2),
    ]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd != log_fd]
    return os.posix_spawn(args[0], args, env, file_actions=actions, setsid=True, setsigdef=_SIGDEF)


def _resolve(argv0: str, env: Mapping[str, str], cwd: str | None) -> str:
    if "/" in argv0:
        path = os.path.join(cwd, argv0) if cwd is not None else argv0
        if not os.path.exists(path):
            raise SpawnError(errno.ENOENT, f"command not found: {argv0}")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise SpawnError(errno.EACCES, f"command not executable: {argv0}")
        return argv0  # sh resolves a relative path after the chdir, like the check above
    search = env["PATH"] if "PATH" in env else os.environ.get("PATH", os.defpath)
    found = shutil.which(argv0, path=search)
    if found is not None:
        return found
    if any(os.path.isfile(os.path.join(d or ".", argv0)) for d in search.split(os.pathsep)):
        raise SpawnError(errno.EACCES, f"command not executable: {argv0}")
    raise SpawnError(errno.ENOENT, f"command not found: {argv0}")


class Started(NamedTuple):
    """A wrapper just started: its pid (session and group leader), when, and its limits."""

    pid: int
    started_mono: float
    setup: Setup | None


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    run_dir: Path,
    log_path: Path,
    cwd: str | None,
    job_id: int,
    attempt: int,
    worker: str,
    limits: Limits | None,
    cgroups: Cgroups | None,
    clock: Clock,
) -> Started:
    """Start ``argv`` through the exit-status wrapper (``supervisor.procs.spawn`` documents
    the contract); ``cgroups`` must be given when ``limits`` is."""
    if not argv:
        raise SpawnError(errno.EINVAL, "empty command")
    tags = {TAG_JOB: str(job_id), TAG_ATTEMPT: str(attempt), TAG_WORKER: worker}
    for key, value in tags.items():
        if env.get(key, value) != value:
            raise ValueError(f"env {key}={env[key]!r} contradicts {value!r}")
    if cwd is not None and not os.path.isdir(cwd):
        raise SpawnError(errno.ENOENT, f"working directory not found: {cwd}")
    exe = _resolve(argv[0], env, cwd)
    exit_file = AttemptFiles(run_dir).exit
    full_env = {**tags, **env, EXIT_FILE_ENV: str(exit_file)}
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        exit_file.unlink(missing_ok=True)  # an earlier run's status must not pass for this one's
        # O_CLOEXEC in the parent; Popen dup2()s it onto the child's 1 and 2 only.
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SpawnError(exc.errno, f"cannot prepare {run_dir}: {exc.strerror}") from exc
    setup = Setup.prepare(limits, job_id, attempt, worker, cgroups) if limits and cgroups else None
    args = [_SH, "-c", setup.script if setup else plain_wrapper(), WRAPPER_NAME, exe, *argv[1:]]
    proc: subprocess.Popen[bytes] | None = None
    try:
        if cwd is None and not (setup and setup.handshake) and _CAN_POSIX_SPAWN:
            pid = _posix_spawn(args, full_env, log_fd)
        else:
            # Popen for cwd and the cgroup handshake's stdin pipe, which os.posix_spawn lacks
            # on 3.11; close_fds closes everything but 0-2 in the child.
            proc = subprocess.Popen(
                args,
                env=full_env,
                cwd=cwd,
                stdin=subprocess.PIPE if setup and setup.handshake else subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                close_fds=True,
                start_new_session=True,
            )
            # We reap with wait4 ourselves. A Popen whose returncode is None would waitpid()
            # our child in __del__ or later via subprocess._cleanup()/_active, stealing its
            # status; a non-None returncode makes the object inert (Popen.__del__).
            proc.returncode = 0
            pid = proc.pid
    except OSError as exc:
        if setup is not None:
            setup.abandon()
        raise SpawnError(exc.errno, f"cannot start {argv[0]}: {exc.strerror}") from exc
    finally:
        os.close(log_fd)
    started = clock.monotonic()
    if setup is not None:
        # cgroups joined before the wrapper reads its line
        setup.start(pid, proc.stdin if proc is not None else None)
    return Started(pid, started, setup)
