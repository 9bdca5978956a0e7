"""``agent-supervisor run`` talks (issue 13, item 4): what a person sees on stderr."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, cli, cli_env, kill_tagged

FAST = {"AGENT_SUPERVISOR_HEARTBEAT_S": "0.5", "AGENT_SUPERVISOR_STOP_GRACE_S": "0.5"}


@pytest.fixture(autouse=True)
def _reap_agents(tmp_path: Path):
    yield
    kill_tagged(tmp_path)


def submit(data: Path, *args: str) -> int:
    out = cli(data, "submit", *args)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def three_jobs(data: Path) -> tuple[int, int, int]:
    """One that completes, one that fails and is retried once, one that times out."""
    good = submit(data, "--", "sh", "-c", "sleep 0.2")
    flaky = submit(data, "--max-attempts", "2", "--backoff", "0", "--", "sh", "-c", "exit 3")
    slow = submit(data, "--timeout", "1", "--max-attempts", "1", "--", "sleep", "30")
    return good, flaky, slow


def test_run_says_one_line_per_transition(tmp_path: Path) -> None:
    """Started, completed in N s, failed with its retry, timed out: one line each, in words."""
    data = tmp_path / "d"
    good, flaky, slow = three_jobs(data)
    out = cli(data, "run", "--until-idle", env=cli_env(data, **FAST))
    assert out.returncode == 0, out.stderr
    lines = [line.split(" ", 1)[1] for line in out.stderr.splitlines()]
    assert f"job {good}: claimed (attempt 1)" in lines
    assert any(line.startswith(f"job {good}: started (pid ") for line in lines)
    assert any(line.startswith(f"job {good}: completed in ") and line.endswith(" s") for line in lines)
    assert f"job {flaky}: failed: exit code 3 — retry in 0.0 s (1 of 2 attempts used)" in lines
    assert f"job {flaky}: failed: exit code 3" in lines
    assert any(line.startswith(f"job {slow}: timed out after 1 s") for line in lines)
    assert lines[-1] == "1 done, 2 failed"
    assert out.stdout == ""


def test_run_quiet_says_nothing_when_all_is_well(tmp_path: Path) -> None:
    """-q: no transition lines, no tally."""
    data = tmp_path / "d"
    three_jobs(data)
    out = cli(data, "-q", "run", "--until-idle", env=cli_env(data, **FAST))
    assert (out.returncode, out.stderr) == (0, "")


def test_run_json_lines_are_one_object_each(tmp_path: Path) -> None:
    """--log-format json: every stderr line is a JSON object with ts, type and message."""
    data = tmp_path / "d"
    good, _, _ = three_jobs(data)
    out = cli(data, "--log-format", "json", "run", "--until-idle", env=cli_env(data, **FAST))
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stderr.splitlines()]
    assert all({"ts", "type", "message"} <= set(e) for e in events)
    done = next(e for e in events if e["type"] == "job" and e["job_id"] == good and e["to"] == "completed")
    assert (
        done["from"] == "running" and done["duration_s"] >= 0.15
    )  # sh -c "sleep 0.2", timed from its start event


def test_run_on_a_terminal_draws_a_live_summary_line(tmp_path: Path) -> None:
    """With stderr on a terminal, a 'running · pending · done · failed' line is redrawn in place."""
    data = tmp_path / "d"
    three_jobs(data)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--until-idle"],
        env=cli_env(data, **FAST),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(primary)
    text = seen.decode()
    assert "\r\x1b[Krunning " in text and " · pending " in text
    assert "done 1 · failed 2" in text
