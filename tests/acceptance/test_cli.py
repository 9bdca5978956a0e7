"""The command line as a user runs it: a subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.support import cli, cli_env, kill_tagged, log_file, supervisor_process, wait_until

SHOW_FIELDS = {
    "id",
    "kind",
    "command",
    "status",
    "priority",
    "concurrency_key",
    "attempt",
    "max_attempts",
    "timeout_s",
    "exit_code",
    "error_kind",
    "error",
    "result",
    "output_tail",
    "created_at",
    "started_at",
    "finished_at",
}


@pytest.fixture(autouse=True)
def _reap_agents(tmp_path: Path):
    yield
    kill_tagged(tmp_path)


def submit(data: Path, *args: str) -> int:
    out = cli(data, "submit", *args)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def show(data: Path, job_id: int) -> dict[str, object]:
    out = cli(data, "show", str(job_id), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_submit_run_show_list(tmp_path: Path) -> None:
    """submit prints only the id; run --until-idle runs it; show/list --json have the fields."""
    data = tmp_path / "d"
    job_id = submit(data, "--priority", "3", "--key", "repo", "--", "sh", "-c", "echo hello")
    run = cli(data, "run", "--until-idle")
    assert run.returncode == 0, run.stderr
    job = show(data, job_id)
    assert set(job) >= SHOW_FIELDS
    assert (job["status"], job["exit_code"], job["priority"], job["concurrency_key"]) == (
        "completed",
        0,
        3,
        "repo",
    )
    assert job["output_tail"] == "hello\n"
    assert [e["to"] for e in job["events"]] == ["pending", "preparing", "running", "completed"]
    listed = json.loads(cli(data, "list", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert set(listed[0]) >= SHOW_FIELDS
    logs = cli(data, "logs", str(job_id))
    assert logs.stdout == "hello\n"


def test_batch_submit_is_one_transaction(tmp_path: Path) -> None:
    """submit --batch takes JSON lines and prints one id per line; one bad line submits nothing."""
    data = tmp_path / "d"
    good = '{"command": ["true"], "priority": 2}\n{"command": ["true"], "dedup_key": "x"}\n'
    out = cli(data, "submit", "--batch", "-", input=good)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 2
    bad = '{"command": ["true"]}\n{"command": ["true"], "colour": "red"}\n'
    out = cli(data, "submit", "--batch", "-", input=bad)
    assert out.returncode == 1
    assert "batch line 2: unknown job field 'colour'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert len(json.loads(cli(data, "list", "--json").stdout)) == 2


def test_dedup_key_returns_existing_id(tmp_path: Path) -> None:
    """Submitting twice with one dedup key while the first waits returns the same id."""
    data = tmp_path / "d"
    first = submit(data, "--dedup-key", "nightly", "--", "true")
    assert submit(data, "--dedup-key", "nightly", "--", "true") == first


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit"], "needs --kind"),
        (["submit", "--payload", "{nope", "--", "true"], "--payload is not valid JSON"),
        (["submit", "--kind", "ghost"], "unknown kind 'ghost'"),
        (["submit", "--timeout", "-3", "--", "true"], "must be positive"),
        (["show", "999"], "no job with id 999"),
        (["show", "abc"], "invalid int value"),
        (["cancel", "999"], "no job with id 999"),
        (["purge"], "purge needs"),
        (["frobnicate"], "invalid choice"),
        (["--store", "mysql://x", "list"], "invalid setting store"),
    ],
)
def test_bad_input_gets_one_line_error(tmp_path: Path, args: list[str], needle: str) -> None:
    """Bad arguments and unknown ids exit non-zero with a one-line message naming the problem."""
    out = cli(tmp_path / "d", *args)
    assert out.returncode != 0
    assert needle in out.stderr
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1


def test_config_option_names_the_config_file(tmp_path: Path) -> None:
    """--config FILE is read in place of $AGENT_SUPERVISOR_CONFIG's file: its kinds submit."""
    data = tmp_path / "d"
    config = tmp_path / "other.toml"
    config.write_text('[kinds.echo]\nargv = ["echo", "{job_id}"]\n')
    assert "unknown kind 'echo'" in cli(data, "submit", "--kind", "echo").stderr
    out = cli(data, "--config", str(config), "submit", "--kind", "echo")
    assert out.returncode == 0, out.stderr
    assert show(data, int(out.stdout))["kind"] == "echo"


def test_cancel_from_another_process_stops_running_agent(tmp_path: Path) -> None:
    """cancel in another process ends a running agent within grace + 1 s."""
    data = tmp_path / "d"
    env = cli_env(
        data,
        AGENT_SUPERVISOR_STOP_GRACE_S="1",
        AGENT_SUPERVISOR_HEARTBEAT_S="1",
        AGENT_SUPERVISOR_LEASE_S="5",
    )
    job_id = submit(data, "--", "sleep", "300")
    with supervisor_process(data, env=env):
        wait_until(lambda: show(data, job_id)["status"] == "running", 15, message="running")
        pid = show(data, job_id)["pid"]
        assert isinstance(pid, int)
        started = time.monotonic()
        assert cli(data, "cancel", str(job_id)).returncode == 0
        wait_until(lambda: show(data, job_id)["status"] == "cancelled", 1 + 1 + 1, message="cancelled")
        assert time.monotonic() - started <= 1 + 1
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        job = show(data, job_id)
        assert job["error_kind"] == "cancelled"


def test_kill_skips_grace(tmp_path: Path) -> None:
    """kill stops an agent that ignores SIGTERM without waiting for the grace period."""
    data = tmp_path / "d"
    env = cli_env(
        data,
        AGENT_SUPERVISOR_STOP_GRACE_S="30",
        AGENT_SUPERVISOR_HEARTBEAT_S="1",
        AGENT_SUPERVISOR_LEASE_S="5",
    )
    job_id = submit(data, "--", "sh", "-c", "trap '' TERM; sleep 300")
    with supervisor_process(data, env=env):
        wait_until(lambda: show(data, job_id)["status"] == "running", 15, message="running")
        started = time.monotonic()
        assert cli(data, "kill", str(job_id)).returncode == 0
        wait_until(lambda: show(data, job_id)["status"] == "cancelled", 5, message="killed")
        assert time.monotonic() - started < 5


def test_second_supervisor_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    """A second `run` on a data dir in use exits 1 with a clear error."""
    data = tmp_path / "d"
    with supervisor_process(data) as first:
        wait_until(
            lambda: (data / "supervisor.lock").exists() and (data / "running-agents.json").exists(),
            15,
            message="first supervisor up",
        )
        second = cli(data, "run", "--until-idle")
        assert second.returncode == 1
        assert "another supervisor is running" in second.stderr
        assert first.poll() is None


def test_sigterm_stops_supervisor_gracefully_and_records_outcome(tmp_path: Path) -> None:
    """SIGTERM to `run` stops claiming, stops the agent after the drain timeout and records it."""
    data = tmp_path / "d"
    env = cli_env(data, AGENT_SUPERVISOR_DRAIN_TIMEOUT_S="0.5", AGENT_SUPERVISOR_STOP_GRACE_S="1")
    job_id = submit(data, "--", "sleep", "300")
    with supervisor_process(data, env=env) as proc:
        wait_until(lambda: show(data, job_id)["status"] == "running", 15, message="running")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    job = show(data, job_id)
    assert (job["status"], job["error_kind"], job["attempt"]) == ("waiting_retry", "killed", 1)
    assert job["attempts_used"] == 0


def test_purge_and_retry(tmp_path: Path) -> None:
    """retry re-queues a failed job; purge deletes finished jobs by status."""
    data = tmp_path / "d"
    job_id = submit(data, "--max-attempts", "1", "--", "false")
    cli(data, "run", "--until-idle")
    assert show(data, job_id)["status"] == "failed"
    assert cli(data, "retry", str(job_id)).returncode == 0
    assert show(data, job_id)["status"] == "pending"
    cli(data, "run", "--until-idle")
    out = cli(data, "purge", "--status", "failed")
    assert out.returncode == 0 and "purged 1" in out.stdout
    assert cli(data, "show", str(job_id)).returncode == 1


def test_health_json(tmp_path: Path) -> None:
    """health --json reports counts, utilization and alerts in the documented shape."""
    data = tmp_path / "d"
    submit(data, "--", "true")
    out = cli(data, "health", "--json")
    assert out.returncode == 0, out.stderr
    health = json.loads(out.stdout)
    assert {
        "running",
        "pending",
        "waiting_retry",
        "max_concurrent",
        "utilization",
        "oldest_running_age_s",
        "alerts",
    } <= set(health)
    assert (health["pending"], health["running"], health["supervisor_running"]) == (1, 0, False)
    assert [a["kind"] for a in health["alerts"]] == ["no_supervisor"]


def test_stuck_alert_appears_and_disappears_with_the_job(tmp_path: Path) -> None:
    """health reports a job running past its stuck threshold, live admission and per-agent
    stats while the supervisor runs, and the alert is gone once the job has ended."""
    data = tmp_path / "d"
    env = cli_env(data, AGENT_SUPERVISOR_HEARTBEAT_S="0.5", AGENT_SUPERVISOR_LEASE_S="5")
    job_id = submit(data, "--stuck-after", "1", "--", "sleep", "3")

    def health() -> dict[str, object]:
        out = cli(data, "health", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def kinds(h: dict[str, object]) -> list[object]:
        return [a["kind"] for a in h["alerts"]]  # type: ignore[union-attr]

    with supervisor_process(data, env=env):

        def stuck_report() -> dict[str, object] | None:
            report = health()
            return report if "stuck" in kinds(report) else None

        stuck = wait_until(stuck_report, 10, message="stuck alert")
        assert stuck["supervisor_running"] is True
        assert stuck["admission"]["state"] in ("open", "full")  # type: ignore[index]
        assert [a["job_id"] for a in stuck["agents"]] == [job_id]  # type: ignore[union-attr]
        wait_until(lambda: show(data, job_id)["status"] == "completed", 10, message="job done")
        assert "stuck" not in kinds(health())


def test_data_dir_is_private(tmp_path: Path) -> None:
    """The data dir and the SQLite file are readable by the user only."""
    data = tmp_path / "d"
    submit(data, "--", "true")
    assert os.stat(data).st_mode & 0o077 == 0
    assert os.stat(data / "jobs.sqlite3").st_mode & 0o077 == 0


def test_demo_runs_in_under_30_seconds(tmp_path: Path) -> None:
    """`agent-supervisor demo` shows every sample ending as intended, in under 30 s."""
    started = time.monotonic()
    out = cli(tmp_path / "d", "demo", timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - started < 30
    for needle in ("completed", "cancelled", "timed out", "retry in", "{'answer': 42}"):
        assert needle in out.stdout


def test_huge_output_is_capped_and_supervisor_memory_stays_small(tmp_path: Path) -> None:
    """An agent writing 500 MB leaves a log of at most cap + marker, and the supervisor's RSS
    stays under 100 MB meanwhile."""
    data = tmp_path / "d"
    cap = 1 << 20
    env = cli_env(data, AGENT_SUPERVISOR_LOG_CAP_BYTES=str(cap))
    job_id = submit(data, "--", "sh", "-c", "head -c 500000000 /dev/zero; echo; echo the end")
    peak = 0
    with supervisor_process(data, "--until-idle", env=env) as proc:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)  # sampling RSS while it runs: there is nothing to await
        assert proc.wait(timeout=60) == 0
    log = log_file(data, job_id)
    size = log.stat().st_size
    assert cap < size <= cap + 200
    assert b"output truncated" in log.read_bytes()[cap:]
    assert peak < 100 * 1024 * 1024, f"supervisor RSS peaked at {peak / 2**20:.0f} MB"
    job = show(data, job_id)
    assert job["status"] == "completed"
    assert str(job["output_tail"]).endswith("the end\n")
