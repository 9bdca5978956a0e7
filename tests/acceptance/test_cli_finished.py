"""The command line's finish (issue 13, item 5), as a user meets it: ``python -m bridge`` as a
subprocess, its stdout, stderr, exit code and timing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, cli, cli_env, kill_tagged, supervisor_process, wait_until

FAST = {
    "AGENT_SUPERVISOR_HEARTBEAT_S": "0.5",
    "AGENT_SUPERVISOR_LEASE_S": "5",
    "AGENT_SUPERVISOR_STOP_GRACE_S": "1",
}


@pytest.fixture(autouse=True)
def _reap_agents(tmp_path: Path):
    yield
    kill_tagged(tmp_path)


def ok(data: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    out = cli(data, *args, **kw)  # type: ignore[arg-type]
    assert out.returncode == 0, out.stderr
    return out


def submit(data: Path, *args: str) -> int:
    return int(ok(data, "submit", *args).stdout)


def show(data: Path, job_id: int) -> dict[str, object]:
    return json.loads(ok(data, "show", str(job_id), "--json").stdout)


def one_error_line(out: subprocess.CompletedProcess[str], needle: str) -> None:
    assert out.returncode != 0
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert needle in out.stderr


# -- --version, pipes, unreachable stores ---------------------------------------------------
def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    """--version prints 'agent-supervisor X.Y.Z' and exits 0."""
    out = ok(tmp_path / "d", "--version")
    assert out.stdout.startswith("agent-supervisor ") and out.stdout.count("\n") == 1


def test_list_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`list --json | head -1` exits 0 with nothing on stderr, as `git log | head` does."""
    data = tmp_path / "d"
    ok(data, "submit", "--batch", "-", input='{"command": ["true"]}\n' * 150)
    env = cli_env(data)
    shell = f"{sys.executable} -m bridge list --json --limit 150 | head -1"
    out = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "[\n", "")


@pytest.mark.parametrize(
    ("store", "env"),
    [
        ("postgresql://agent@127.0.0.1:1/jobs", {}),
        (
            "supabase",
            {
                "AGENT_SUPERVISOR_SUPABASE_URL": "http://127.0.0.1:1",
                "AGENT_SUPERVISOR_SUPABASE_KEY": "sb_secret_not-a-real-key",
            },
        ),
    ],
    ids=["postgres", "supabase"],
)
def test_an_unreachable_store_fails_a_one_off_command_within_2_s(
    tmp_path: Path, store: str, env: dict[str, str]
) -> None:
    """list against a store nobody answers for: one error line, exit 1, in under 2 s."""
    if store.startswith("postgresql"):
        pytest.importorskip("psycopg")
    data = tmp_path / "d"
    started = time.monotonic()
    out = cli(data, "--store", store, "list", env=cli_env(data, **env))
    elapsed = time.monotonic() - started
    one_error_line(out, "agent-supervisor: error:")
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    assert "sb_secret" not in out.stderr


# -- options that must not be ignored -------------------------------------------------------
def test_a_config_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    """--config naming a missing file fails in one line instead of running without it."""
    out = cli(tmp_path / "d", "--config", str(tmp_path / "nope.toml"), "list")
    one_error_line(out, f"config file {tmp_path / 'nope.toml'} does not exist")


def test_a_sqlite_store_in_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    """--store sqlite:///missing/dir/x.sqlite3 fails and creates no directory."""
    url = f"sqlite://{tmp_path}/no/such/dir/jobs.sqlite3"
    out = cli(tmp_path / "d", "--store", url, "list")
    one_error_line(out, "does not exist")
    assert not (tmp_path / "no").exists()


def test_the_default_store_is_still_created_with_the_data_dir(tmp_path: Path) -> None:
    """Without --store, the data dir and its SQLite file are created as before."""
    data = tmp_path / "fresh" / "d"
    ok(data, "list")
    assert (data / "jobs.sqlite3").exists()


def test_a_relative_data_dir_is_taken_from_the_current_directory(tmp_path: Path) -> None:
    """--data-dir rel in /x means /x/rel."""
    env = cli_env(tmp_path / "unused")
    del env["AGENT_SUPERVISOR_DATA_DIR"]
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "--data-dir", "rel/d", "submit", "--", "true"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rel" / "d" / "jobs.sqlite3").exists()


# -- logs --follow ----------------------------------------------------------------------------
def test_logs_follow_waits_for_a_pending_job(tmp_path: Path) -> None:
    """id=$(submit …); logs "$id" --follow: waits for the job to start, prints its output
    across a retry, and exits 0 when it has ended."""
    data = tmp_path / "d"
    code = "import os,sys; a=os.environ['AGENT_SUPERVISOR_ATTEMPT']; print('attempt', a); sys.exit(a == '1')"
    job_id = submit(data, "--backoff", "0", "--", sys.executable, "-c", code)
    follower = subprocess.Popen(
        [sys.executable, "-m", "bridge", "logs", str(job_id), "--follow"],
        env=cli_env(data),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ok(data, "run", "--until-idle", env=cli_env(data, **FAST))
        stdout, stderr = follower.communicate(timeout=20)
    finally:
        follower.kill()
    assert follower.returncode == 0, stderr
    assert stdout == "attempt 1\nattempt 2\n"
    assert f"job {job_id}: attempt 2" in stderr


def test_logs_follow_of_a_job_cancelled_before_it_ran_says_so(tmp_path: Path) -> None:
    """A job that ended without running has no log: one line saying so, exit 1."""
    data = tmp_path / "d"
    job_id = submit(data, "--", "true")
    ok(data, "cancel", str(job_id))
    out = cli(data, "logs", str(job_id), "--follow")
    one_error_line(out, f"job {job_id} was cancelled before it ran; no log")


def test_logs_json_prints_the_chunk_with_its_offsets(tmp_path: Path) -> None:
    """logs --json: data, offset, next_offset, eof, size, attempt."""
    data = tmp_path / "d"
    job_id = submit(data, "--", "sh", "-c", "echo hello")
    ok(data, "run", "--until-idle")
    chunk = json.loads(ok(data, "logs", str(job_id), "--json").stdout)
    assert chunk == {"attempt": 1, "data": "hello\n", "offset": 0, "next_offset": 6, "eof": True, "size": 6}


# -- show, counts, --json of the changes ------------------------------------------------------
def test_show_text_has_the_payload_and_the_events_facts(tmp_path: Path) -> None:
    """show prints the payload and, under each event, its facts (pid, exit code…)."""
    data = tmp_path / "d"
    job_id = submit(
        data, "--max-attempts", "1", "--payload", '{"note": "inbox.md", "n": 3}', "--", "sh", "-c", "exit 4"
    )
    ok(data, "run", "--until-idle", env=cli_env(data, AGENT_SUPERVISOR_HEARTBEAT_S="0.5"))
    text = ok(data, "show", str(job_id)).stdout
    assert '"note": "inbox.md"' in text and '"n": 3' in text
    assert "exit_code=4" in text
    assert "pid=" in text and "runtime_s=" in text


def test_progress_of_a_finished_job_is_marked_final(tmp_path: Path) -> None:
    """A completed job keeps its last progress, shown as final (text) and progress_final (JSON)."""
    data = tmp_path / "d"
    code = (
        "import json,os,time; path = os.environ['AGENT_SUPERVISOR_PROGRESS_FILE'];"
        " json.dump({'step': 4, 'of': 5}, open(path, 'w')); time.sleep(1.5)"
    )
    job_id = submit(data, "--", sys.executable, "-c", code)
    ok(data, "run", "--until-idle", env=cli_env(data, AGENT_SUPERVISOR_HEARTBEAT_S="0.5"))
    job = show(data, job_id)
    assert (job["status"], job["progress"], job["progress_final"]) == (
        "completed",
        {"step": 4, "of": 5},
        True,
    )
    assert "4 of 5  (last reported; the job has ended)" in ok(data, "show", str(job_id)).stdout


def test_health_shows_a_running_agents_progress(tmp_path: Path) -> None:
    """While an agent reports progress, health --json has it in its agents[] row and health
    prints it in words."""
    data = tmp_path / "d"
    code = (
        "import json,os,time; path = os.environ['AGENT_SUPERVISOR_PROGRESS_FILE'];"
        " json.dump({'step': 2, 'of': 5}, open(path, 'w')); time.sleep(60)"
    )
    submit(data, "--", sys.executable, "-c", code)
    with supervisor_process(data, env=cli_env(data, **FAST)):

        def progress() -> object:
            agents = json.loads(ok(data, "health", "--json").stdout)["agents"]
            return agents and agents[0].get("progress")

        assert wait_until(progress, 10, message="progress in health") == {"step": 2, "of": 5}
        assert "progress: 2 of 5" in ok(data, "health").stdout


def test_counts_read_as_plain_english(tmp_path: Path) -> None:
    """purge says '1 job' and '2 jobs', never '1 jobs'."""
    data = tmp_path / "d"
    ids = [submit(data, "--", "true") for _ in range(3)]
    assert ok(data, "purge", str(ids[0])).stdout == "purged 1 job\n"
    assert ok(data, "purge", str(ids[1]), str(ids[2])).stdout == "purged 2 jobs\n"


def test_cancel_retry_purge_reconcile_answer_json(tmp_path: Path) -> None:
    """cancel, retry, purge and reconcile print their documented JSON shapes with --json."""
    data = tmp_path / "d"
    a, b = submit(data, "--", "true"), submit(data, "--", "true")
    cancel = json.loads(ok(data, "cancel", str(a), str(b), "--json").stdout)
    assert cancel == {
        "jobs": [
            {"id": a, "ok": True, "status": "cancelled", "before": "pending", "error": None},
            {"id": b, "ok": True, "status": "cancelled", "before": "pending", "error": None},
        ],
        "changed": 2,
        "refused": 0,
    }
    again = cli(data, "cancel", str(a), "--json")
    assert again.returncode == 1
    [refused] = json.loads(again.stdout)["jobs"]
    assert (refused["ok"], refused["before"]) == (False, "cancelled") and "nothing to cancel" in refused[
        "error"
    ]
    retry = json.loads(ok(data, "retry", str(a), "--json").stdout)
    assert retry["jobs"][0]["status"] == "pending" and retry["changed"] == 1
    assert json.loads(ok(data, "purge", str(b), "--json").stdout) == {"deleted": [b], "cancel_requested": []}
    rec = json.loads(ok(data, "reconcile", "--json").stdout)
    assert rec == {"ran": True, "decisions": [], "outbox_depth": 0}


def test_bulk_cancel_and_retry_by_status(tmp_path: Path) -> None:
    """cancel --status pending cancels every pending job; retry --status cancelled queues
    them again; a status the change cannot take is a usage error."""
    data = tmp_path / "d"
    ids = [submit(data, "--", "true") for _ in range(3)]
    out = ok(data, "cancel", "--status", "pending")
    assert out.stdout.endswith("cancelled: 3 jobs\n")
    assert {show(data, i)["status"] for i in ids} == {"cancelled"}
    assert ok(data, "retry", "--status", "cancelled").stdout.endswith("queued again: 3 jobs\n")
    bad = cli(data, "retry", "--status", "completed")
    assert bad.returncode == 2 and "--status may only name cancelled, failed here" in bad.stderr
    none = cli(data, "cancel")
    assert none.returncode == 2 and "give job ids or a filter" in none.stderr


# -- stopping and waiting ---------------------------------------------------------------------
def test_cancel_wait_returns_once_the_agent_is_gone(tmp_path: Path) -> None:
    """cancel --wait returns after the agent stopped and says it was stopped by SIGTERM;
    kill --wait of one that ignores SIGTERM says killed by SIGKILL."""
    data = tmp_path / "d"
    env = cli_env(data, **FAST)
    polite = submit(data, "--", "sleep", "300")
    stubborn = submit(data, "--", "sh", "-c", "trap '' TERM; sleep 300")
    with supervisor_process(data, env=env):
        wait_until(
            lambda: {show(data, polite)["status"], show(data, stubborn)["status"]} == {"running"},
            15,
            message="both running",
        )
        out = ok(data, "cancel", str(polite), "--wait")
        assert out.stdout == f"job {polite}: stopped by SIGTERM\n"
        assert show(data, polite)["status"] == "cancelled"
        out = ok(data, "kill", str(stubborn), "--wait", "--json")
        [job] = json.loads(out.stdout)["jobs"]
        assert (job["stopped"], job["how"], job["status"]) == (True, "killed by SIGKILL", "cancelled")
    done = ok(data, "cancel", str(polite), "--wait")
    assert done.stdout == f"job {polite}: already finished (cancelled)\n"


def test_cancel_wait_times_out_when_no_supervisor_stops_it(tmp_path: Path) -> None:
    """With the supervisor gone, cancel --wait --timeout gives up, says it still runs, exit 1."""
    data = tmp_path / "d"
    job_id = submit(data, "--", "sleep", "300")
    with supervisor_process(data, env=cli_env(data, **FAST)) as proc:
        wait_until(lambda: show(data, job_id)["status"] == "running", 15, message="running")
        proc.kill()
        proc.wait(10)
    out = cli(data, "cancel", str(job_id), "--wait", "--timeout", "1")
    assert out.returncode == 1 and f"job {job_id}: still running after" in out.stderr


def test_purge_of_a_running_job_stops_and_deletes_it_in_one_call(tmp_path: Path) -> None:
    """purge ID of a running job: cancelled, waited for, deleted; show then finds nothing."""
    data = tmp_path / "d"
    job_id = submit(data, "--", "sleep", "300")
    with supervisor_process(data, env=cli_env(data, **FAST)):
        wait_until(lambda: show(data, job_id)["status"] == "running", 15, message="running")
        started = time.monotonic()
        assert ok(data, "purge", str(job_id)).stdout == "purged 1 job\n"
        assert time.monotonic() - started < 0.5 + 1 + 2 + 2  # heartbeat + grace + margin + start-up
    assert "no job with id" in cli(data, "show", str(job_id)).stderr


# -- completion -------------------------------------------------------------------------------
def test_bash_completion_completes_commands_and_choices(tmp_path: Path) -> None:
    """The bash script completes a command name and the values of --status."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = ok(tmp_path / "d", "completion", "bash").stdout
    probe = (
        f"{script}\n"
        'COMP_WORDS=(agent-supervisor subm); COMP_CWORD=1; _agent_supervisor; echo "${COMPREPLY[*]}"\n'
        "COMP_WORDS=(agent-supervisor list --status fa); COMP_CWORD=3; _agent_supervisor; "
        'echo "${COMPREPLY[*]}"\n'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines() == ["submit", "failed"], out.stderr


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_every_command(tmp_path: Path, shell: str) -> None:
    """The zsh and fish scripts mention every command (and parse, where the shell is here)."""
    script = ok(tmp_path / "d", "completion", shell).stdout
    for command in ("run", "submit", "list", "show", "logs", "cancel", "doctor", "service"):
        assert command in script
    if shutil.which(shell):
        path = tmp_path / f"c.{shell}"
        path.write_text(script)
        assert subprocess.run([shell, "-n", str(path)], timeout=30).returncode == 0


# -- doctor -----------------------------------------------------------------------------------
def test_doctor_on_a_healthy_setup_exits_0(tmp_path: Path) -> None:
    """doctor --json: ok true, and the checks for config, data dir, store, clock, limits, git."""
    submit(tmp_path / "d", "--", "true")
    out = cli(tmp_path / "d", "doctor", "--json")
    report = json.loads(out.stdout)
    names = {c["name"] for c in report["checks"]}
    assert {"config", "settings", "data dir", "disk", "store", "clock", "limits", "git", "node"} <= names
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert (out.returncode, report["ok"], failed) == (0, True, [])


def test_doctor_notices_a_replaced_store(tmp_path: Path) -> None:
    """A data dir that ran jobs on one SQLite store, pointed at another: doctor fails the store
    check, says why and how to fix it; checking creates nothing."""
    data = tmp_path / "d"
    submit(data, "--", "true")
    ok(data, "run", "--until-idle")
    other = tmp_path / "other"
    other.mkdir()
    ok(data, "--store", f"sqlite://{other}/jobs.sqlite3", "list")  # makes a second, new store
    out = cli(data, "--store", f"sqlite://{other}/jobs.sqlite3", "doctor")
    assert out.returncode == 1
    assert (
        "FAIL  store" in out.stdout
        and "is not the one data dir" in out.stdout
        and "--new-store" in out.stdout
    )
    fresh = tmp_path / "fresh"
    assert json.loads(cli(fresh, "doctor", "--json").stdout)["ok"] is True
    assert not fresh.exists()


def test_doctor_lists_what_to_fix_and_exits_1(tmp_path: Path) -> None:
    """A malformed config file is a failed check with a fix, and doctor exits 1."""
    data = tmp_path / "d"
    config = tmp_path / "bad.toml"
    config.write_text("concurrency = [\n")
    out = cli(data, "--config", str(config), "doctor")
    assert out.returncode == 1
    assert "FAIL  settings" in out.stdout and "malformed config file" in out.stdout
    assert "to fix:" in out.stdout and "1 to fix" in out.stdout
    assert "ok    git" in out.stdout  # the checks that need no settings still ran


# -- running at login -------------------------------------------------------------------------
def login_env(tmp_path: Path, data: Path, **extra: str) -> dict[str, str]:
    return cli_env(data, HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "cfg"), **extra)


def test_service_install_writes_a_systemd_user_unit_without_secrets(tmp_path: Path) -> None:
    """service install --no-enable writes the unit under XDG_CONFIG_HOME: it runs `run` on
    the data dir, holds no secret from the environment, and systemd-analyze accepts it."""
    data = tmp_path / "d"
    env = login_env(tmp_path, data, AGENT_SUPERVISOR_SUPABASE_KEY="sb_secret_must-not-leak")
    out = cli(data, "service", "install", "--no-enable", env=env)
    assert out.returncode == 0, out.stderr
    unit = tmp_path / "cfg" / "systemd" / "user" / "agent-supervisor.service"
    text = unit.read_text()
    assert f"-m bridge --data-dir {data} run" in text
    assert "sb_secret" not in text and "AGENT_SUPERVISOR_SUPABASE_KEY" in out.stdout  # named, not copied
    assert "KillMode=mixed" in text and "EnvironmentFile=-" in text
    status = json.loads(cli(data, "service", "status", "--json", env=env).stdout)
    assert (status["installed"], status["up_to_date"]) == (True, True)
    if shutil.which("systemd-analyze"):
        runtime = tmp_path / "run"
        runtime.mkdir(mode=0o700)
        verify = subprocess.run(
            ["systemd-analyze", "--user", "verify", str(unit)],
            capture_output=True,
            text=True,
            env={**env, "XDG_RUNTIME_DIR": str(runtime)},
            timeout=60,
        )
        if "Failed to initialize manager" in verify.stderr:
            pytest.skip(f"systemd-analyze cannot run here: {verify.stderr.strip()}")
        assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr
    assert cli(data, "service", "uninstall", env=env).returncode == 0
    assert not unit.exists()


def test_service_install_writes_a_launchd_agent_on_macos(tmp_path: Path) -> None:
    """On macOS the same install writes a LaunchAgents plist that runs `run` at load."""
    import plistlib

    data = tmp_path / "d"
    env = login_env(tmp_path, data)
    out = cli(data, "service", "--platform", "darwin", "install", "--no-enable", env=env)
    assert out.returncode == 0, out.stderr
    plist = plistlib.loads(
        (tmp_path / "home" / "Library" / "LaunchAgents" / "dev.agent-supervisor.plist").read_bytes()
    )
    assert plist["ProgramArguments"][-4:] == ["bridge", "--data-dir", str(data), "run"]
    assert (plist["Label"], plist["RunAtLoad"], plist["KeepAlive"]) == (
        "dev.agent-supervisor",
        True,
        {"SuccessfulExit": False},
    )


def test_service_install_refuses_a_store_url_with_a_password(tmp_path: Path) -> None:
    """A password in --store never goes into a service file: one error line, nothing written."""
    data = tmp_path / "d"
    env = login_env(tmp_path, data)
    out = cli(data, "--store", "postgresql://u:hunter2@db/jobs", "service", "install", "--dry-run", env=env)
    one_error_line(out, "holds a password")
    assert "hunter2" not in out.stderr
    assert not (tmp_path / "cfg").exists()


def test_service_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    """--dry-run prints the unit and the commands, and writes no file."""
    data = tmp_path / "d"
    out = cli(data, "service", "install", "--dry-run", env=login_env(tmp_path, data))
    assert out.returncode == 0 and "[Service]" in out.stdout and "systemctl --user enable" in out.stdout
    assert not (tmp_path / "cfg").exists()


def test_run_at_login_file_needs_no_shell_environment(tmp_path: Path) -> None:
    """The unit's ExecStart runs as written: the same argv run by hand supervises the data dir."""
    data = tmp_path / "d"
    env = login_env(tmp_path, data)
    ok(data, "service", "install", "--no-enable", env=env)
    unit = (tmp_path / "cfg" / "systemd" / "user" / "agent-supervisor.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    job_id = submit(data, "--", "true")
    clean = {k: v for k, v in env.items() if not k.startswith("AGENT_SUPERVISOR_")} | {
        "PYTHONPATH": str(ROOT)
    }
    proc = subprocess.run(
        [*argv[:-1], "run", "--until-idle"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.environ.get("HOME", "/"),
    )
    assert proc.returncode == 0, proc.stderr
    assert show(data, job_id)["status"] == "completed"


# -- store protocol v2: queue places, delayed jobs, list filters --------------------------------
def test_submit_json_answers_id_status_and_queue_position(tmp_path: Path) -> None:
    """submit --json: {id, status, queue_position, run_after}; --batch: an array of them."""
    data = tmp_path / "d"
    first = json.loads(ok(data, "submit", "--json", "--", "true").stdout)
    assert first == {"id": 1, "status": "pending", "queue_position": 1, "run_after": None}
    urgent = json.loads(ok(data, "submit", "--json", "--priority", "5", "--", "true").stdout)
    assert (urgent["id"], urgent["queue_position"]) == (2, 1)  # claim order: priority first
    batch = json.loads(
        ok(data, "submit", "--json", "--batch", "-", input='{"command": ["true"]}\n' * 2).stdout
    )
    assert [b["queue_position"] for b in batch] == [3, 4]


def test_run_after_is_kept_and_a_past_time_runs_at_once(tmp_path: Path) -> None:
    """submit --run-after stores the time (show --json says it); a time already past is
    claimable at once, so run --until-idle runs it; a time that is neither is a usage error."""
    data = tmp_path / "d"
    later = json.loads(
        ok(data, "submit", "--json", "--run-after", "2026-12-03T09:00:00+01:00", "--", "true").stdout
    )
    assert later["run_after"] == show(data, later["id"])["run_after"] == "2026-12-03T08:00:00.000+00:00"
    relative = json.loads(ok(data, "submit", "--json", "--run-after", "10m", "--", "true").stdout)
    assert 590 < _ts(relative["run_after"]) - time.time() <= 600
    ok(data, "cancel", str(later["id"]), str(relative["id"]))
    past = submit(data, "--run-after", "2020-01-01T00:00:00Z", "--", "true")
    ok(data, "run", "--until-idle", env=cli_env(data, **FAST), timeout=30)
    assert show(data, past)["status"] == "completed"
    bad = cli(data, "submit", "--run-after", "next tuesday", "--", "true")
    assert bad.returncode == 2 and "invalid time 'next tuesday'" in bad.stderr


def test_run_after_delays_a_job(tmp_path: Path) -> None:
    """submit --run-after 2s to a running supervisor: the job starts no earlier than its
    run_after, and after a job submitted later without a delay."""
    data = tmp_path / "d"
    with supervisor_process(data, env=cli_env(data, **FAST)):
        wait_until(lambda: (data / "status.json").exists(), 15, message="supervisor up")
        later = json.loads(ok(data, "submit", "--json", "--run-after", "2s", "--", "true").stdout)
        assert later["run_after"] is not None and later["queue_position"] == 1
        now = submit(data, "--", "true")
        wait_until(lambda: show(data, later["id"])["status"] == "completed", 20, message="delayed job done")
    delayed, prompt = show(data, later["id"]), show(data, now)
    assert (delayed["status"], prompt["status"]) == ("completed", "completed")
    assert delayed["run_after"] == later["run_after"]
    assert _ts(delayed["run_after"]) > _ts(delayed["created_at"]) + 1  # 2 s from when it was typed
    assert _ts(delayed["started_at"]) >= _ts(delayed["run_after"])
    assert _ts(prompt["started_at"]) < _ts(delayed["started_at"])


def test_a_job_delayed_before_the_supervisor_starts_runs_when_due(tmp_path: Path) -> None:
    """submit --run-after 3s, then run --until-idle: the job runs about three seconds later."""
    data = tmp_path / "d"
    job_id = submit(data, "--run-after", "3s", "--", "true")
    out = cli(data, "run", "--until-idle", env=cli_env(data, **FAST), timeout=15)
    assert (out.returncode, show(data, job_id)["status"]) == (0, "completed")


def _ts(text: object) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(text)).timestamp()


def test_list_filters_by_kind_repo_and_time(tmp_path: Path) -> None:
    """list --kind, --repo (any spelling of it) and --since/--until choose the jobs shown."""
    data = tmp_path / "d"
    config = tmp_path / "c.toml"
    config.write_text('[kinds.echo]\nargv = ["echo"]\n[kinds.sum]\nargv = ["true"]\n')
    env = cli_env(data, AGENT_SUPERVISOR_CONFIG=str(config))
    echo = int(cli(data, "submit", "--kind", "echo", "--repo", "octo/notes", env=env).stdout)
    summ = int(cli(data, "submit", "--kind", "sum", env=env).stdout)

    def ids(*args: str) -> list[int]:
        out = cli(data, "list", "--json", *args, env=env)
        assert out.returncode == 0, out.stderr
        return [j["id"] for j in json.loads(out.stdout)]

    assert ids("--kind", "echo") == [echo]
    assert ids("--kind", "echo", "--kind", "sum") == [summ, echo]
    assert ids("--repo", "https://github.com/Octo/notes.git") == [echo]
    assert ids("--since", "1h") == [summ, echo]
    assert ids("--until", "1h") == []
    assert ids("--since", "2020-01-01") == [summ, echo]


def test_bulk_cancel_by_kind_and_repo(tmp_path: Path) -> None:
    """cancel --kind K and cancel --repo R cancel exactly the jobs of that kind or repository."""
    data = tmp_path / "d"
    config = tmp_path / "c.toml"
    config.write_text('[kinds.echo]\nargv = ["echo"]\n[kinds.sum]\nargv = ["true"]\n')
    env = cli_env(data, AGENT_SUPERVISOR_CONFIG=str(config))
    a = int(cli(data, "submit", "--kind", "echo", env=env).stdout)
    b = int(cli(data, "submit", "--kind", "sum", "--repo", "octo/notes", env=env).stdout)
    c = int(cli(data, "submit", "--kind", "sum", env=env).stdout)
    assert cli(data, "cancel", "--kind", "echo", env=env).stdout == f"job {a}: cancelled\n"
    assert cli(data, "cancel", "--repo", "octo/notes", env=env).stdout == f"job {b}: cancelled\n"
    assert show(data, c)["status"] == "pending"
