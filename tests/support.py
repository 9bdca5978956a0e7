"""Helpers for tests that run real processes: await conditions, run the CLI, reap everything."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import psutil

from supervisor import procs
from supervisor.procs import AgentProcess, ExitStatus

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


def wait_until(
    predicate: Callable[[], T], timeout: float, *, interval: float = 0.02, message: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    env.update(
        {
            "AGENT_SUPERVISOR_DATA_DIR": str(data_dir),
            "AGENT_SUPERVISOR_CONFIG": str(data_dir / "no-config.toml"),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def cli(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bridge ARGS`` to completion with the data dir set."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(data_dir),
        input=input,
        timeout=timeout,
        cwd=ROOT,
    )


@contextmanager
def supervisor_process(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``python -m bridge run ARGS`` in the background; SIGKILLed with its agents on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", *args],
        env=env or cli_env(data_dir),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        kill_tagged(data_dir)


def tagged_processes(under: Path | None = None) -> list[psutil.Process]:
    """Live processes carrying an agent-supervisor job tag, optionally only those whose files
    live under ``under`` (a test's tmp_path), so parallel test runs leave each other alone."""
    found = []
    for p in psutil.process_iter():
        try:
            env = p.environ()
            if "AGENT_SUPERVISOR_JOB_ID" not in env or p.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, OSError):
            continue
        if under is None or env.get("AGENT_SUPERVISOR_PAYLOAD_FILE", "").startswith(str(under)):
            found.append(p)
    return found


def kill_tagged(under: Path | None = None) -> None:
    for p in tagged_processes(under):
        with suppress(psutil.Error):
            p.kill()


def agent_code(code: str) -> Sequence[str]:
    """An argv that runs ``code`` in this Python."""
    return [sys.executable, "-c", code]


def stop_agent(agent: AgentProcess, grace_s: float) -> ExitStatus | None:
    """SIGTERM the agent's group, wait up to ``grace_s`` for it to end, then ``kill_tree`` and
    reap (within 2 s): the supervisor's stop ladder, composed of AgentProcess's own methods,
    for tests that drive one agent without a supervisor loop."""
    agent.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if agent.poll() is not None and not _group_alive(agent.pgid):
            break
        _await_exit(agent, min(deadline - time.monotonic(), 0.05))
    agent.kill_tree()
    deadline = time.monotonic() + 2.0
    while (status := agent.poll()) is None and time.monotonic() < deadline:
        _await_exit(agent, 0.05)
    return status


def _await_exit(agent: AgentProcess, timeout: float) -> None:
    fd = agent.fileno()
    if agent.status is None and fd is not None and sys.platform == "linux":
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(max(0.0, timeout) * 1000)  # a pidfd turns readable as soon as the leader exits
    else:
        time.sleep(max(0.0, timeout))  # no exit notification here: a bounded poll step


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg succeeds on a group of zombies (orphans of an init that never reaps)
    return bool(procs._group_members(pgid))


def log_file(data_dir: Path, job_id: int, attempt: int = 1) -> Path:
    """The log of a job's attempt in a data dir (``logs/<store>/<job>-<attempt>.log``)."""
    found = sorted(data_dir.glob(f"logs/*/{job_id}-{attempt}.log"))
    assert len(found) == 1, found
    return found[0]
