"""supervisor.procs against real process trees: spawn, exit status, signals, escapees, logs, waiting."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from supervisor import procs
from supervisor.errors import SpawnError
from supervisor.logcap import LogCap
from supervisor.procs import AgentProcess
from tests import support

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux process semantics are tested here")

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition") -> None:
    """tests.support.wait_until, keeping this file's positional ``what``."""
    support.wait_until(predicate, timeout, interval=0.01, message=what)


def gone(pid: int, identity: str | None) -> bool:
    """True once ``pid`` no longer runs as the process ``identity`` names (a zombie counts as gone)."""
    return not psutil.pid_exists(pid) or identity is None or not procs.same_process(pid, identity)


def reap_zombie_children() -> list[int]:
    reaped = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE and os.waitpid(child.pid, os.WNOHANG)[0]:
                reaped.append(child.pid)
        except (psutil.Error, ChildProcessError):
            continue
    return reaped


class Agents:
    """Spawns agents tagged with a worker id unique to one test, and cleans up after it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.worker = f"test-{uuid.uuid4().hex[:12]}"
        self.spawned: list[AgentProcess] = []
        self._next = 0

    def env(self, job_id: int, attempt: int = 1) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
        env.update(
            {procs.TAG_JOB: str(job_id), procs.TAG_ATTEMPT: str(attempt), procs.TAG_WORKER: self.worker}
        )
        return env

    def spawn(self, argv: list[str], job_id: int | None = None, **kw: str) -> AgentProcess:
        self._next += 1
        job = job_id if job_id is not None else self._next
        run_dir = self.tmp / f"run-{job}"
        agent = procs.spawn(
            argv, env=self.env(job), run_dir=run_dir, log_path=run_dir / "log", job_id=job, attempt=1,
            worker=self.worker, **kw,
        )  # fmt: skip
        self.spawned.append(agent)
        return agent

    def cleanup(self) -> None:
        for agent in self.spawned:
            agent.kill_tree()
        for agent in self.spawned:
            wait_until(agent.poll, 5, f"{agent} to be reaped")
            agent.close()
        for tagged in procs.scan_tagged(self.worker):  # escapees of agents we did not keep
            procs.signal_process(tagged.pid, tagged.identity, signal.SIGKILL)
        wait_until(lambda: not procs.scan_tagged(self.worker), 5, "no tagged process left")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    """Spawn helper; as a child subreaper we inherit and reap every orphan the test makes."""
    assert procs.set_child_subreaper(True)
    pool = Agents(tmp_path)
    try:
        yield pool
    finally:
        try:
            pool.cleanup()
            wait_until(lambda: (reap_zombie_children(), not any(
                c.status() == psutil.STATUS_ZOMBIE for c in psutil.Process().children()
            ))[1], 5, "orphans reaped")  # fmt: skip
        finally:
            procs.set_child_subreaper(False)


def wait_exec(agent: AgentProcess, name: str) -> None:
    """Wait until the wrapper's child has exec'd ``name``.

    A signal that reaches the wrapper's forked child before it execs is lost: dash has not yet
    reset its ``trap :`` handler there, and exec then discards the pending signal.
    """

    def running() -> bool:
        for pid in procs._group_members(agent.pgid):
            with contextlib.suppress(psutil.Error):
                if pid != agent.pid and psutil.Process(pid).name() == name:
                    return True
        return False

    wait_until(running, 5, f"{name} to start")


def finished(agent: AgentProcess, timeout: float = 5) -> procs.ExitStatus:
    waiter = procs.Waiter()
    try:
        waiter.register(agent)
        deadline = time.monotonic() + timeout
        while (status := agent.poll()) is None:
            assert time.monotonic() < deadline, f"{agent} still running after {timeout} s"
            waiter.wait(deadline - time.monotonic())
        return status
    finally:
        waiter.close()


# ---------------------------------------------------------------- exit status


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_recorded_by_wait_and_in_the_exit_file(agents: Agents, code: int) -> None:
    """An agent's exit code comes back from poll() and the wrapper writes it to run_dir/exit."""
    agent = agents.spawn(["sh", "-c", f"exit {code}"])
    status = finished(agent)
    assert (status.exit_code, status.signal) == (code, None)
    assert status.peak_rss_bytes is not None
    assert status.peak_rss_bytes > 0
    assert agent.exit_file.read_text() == str(code)
    assert agent.poll() is status  # reaped once, cached


def test_exit_file_is_private_and_the_agent_keeps_its_umask(agents: Agents) -> None:
    """The wrapper writes the exit file 0600 (README: the run dir's files are private) and the
    agent still runs with the umask it inherited (022 here), not the wrapper's 077."""
    old = os.umask(0o022)
    try:
        agent = agents.spawn(["sh", "-c", "umask"])
    finally:
        os.umask(old)
    assert finished(agent).exit_code == 0
    assert agent.log_path.read_text().strip() == "0022"
    assert stat.S_IMODE(agent.exit_file.stat().st_mode) == 0o600
    assert agent.recorded_exit() == procs.ExitStatus(0, None, None)


def test_status_survives_a_child_reaped_behind_our_back(agents: Agents) -> None:
    """If someone else reaps the wrapper (ECHILD), poll() reads the outcome from the exit file."""
    agent = agents.spawn(["sh", "-c", "exit 4"])
    assert os.waitpid(agent.pid, 0)[0] == agent.pid  # the thief, e.g. a host's waitpid(-1)
    assert agent.poll() == procs.ExitStatus(4, None, None)


def test_agent_killed_by_sigterm_is_recorded_as_signal_15(agents: Agents) -> None:
    """SIGTERM to the group kills the agent; the wrapper survives it and records signal 15."""
    agent = agents.spawn(["sleep", "30"])
    wait_exec(agent, "sleep")
    assert agent.signal_group(signal.SIGTERM)
    status = finished(agent)
    assert (status.exit_code, status.signal) == (None, signal.SIGTERM)
    assert status.describe() == "killed by SIGTERM"
    assert agent.exit_file.read_text() == "143"


def test_agent_ignoring_sigterm_dies_with_the_group_on_sigkill(agents: Agents) -> None:
    """SIGKILL of the group kills wrapper and agent; wait4 reports SIGKILL and no exit file is left."""
    agent = agents.spawn(["sh", "-c", "trap '' TERM; echo ready; sleep 30"])
    wait_until(lambda: agent.log_path.read_bytes() == b"ready\n", 5, "agent to trap TERM")
    agent.signal_group(signal.SIGTERM)
    time.sleep(0.1)
    assert agent.poll() is None  # TERM was ignored by the agent and deferred by the wrapper
    assert agent.signal_group(signal.SIGKILL)
    status = finished(agent)
    assert (status.exit_code, status.signal) == (None, signal.SIGKILL)
    assert not agent.exit_file.exists()


def test_agent_sees_the_tags_a_file_log_a_null_stdin_and_its_own_session(agents: Agents) -> None:
    """The agent's env carries the job tags and the exit file path; stdin is /dev/null; it leads a session."""
    script = (
        'echo "$AGENT_SUPERVISOR_JOB_ID/$AGENT_SUPERVISOR_ATTEMPT/$AGENT_SUPERVISOR_WORKER";'
        'echo "$AGENT_SUPERVISOR_EXIT_FILE"; cat; echo "to stderr" >&2'
    )
    agent = agents.spawn(["sh", "-c", script], job_id=42)
    assert os.getsid(agent.pid) == agent.pid == agent.pgid
    assert finished(agent).exit_code == 0
    lines = agent.log_path.read_text().splitlines()
    assert lines == [f"42/1/{agents.worker}", str(agent.run_dir / "exit"), "to stderr"]
    assert stat.S_IMODE(agent.log_path.stat().st_mode) == 0o600


def test_agent_inherits_no_descriptor_of_ours_and_default_sigpipe(agents: Agents) -> None:
    """A descriptor the host made inheritable does not reach the agent (nor the log fd beyond
    1 and 2), and SIGPIPE, which Python ignores, is back at its default in the agent."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # a host's careless pipe: would keep readers waiting
    try:
        agent = agents.spawn(["sh", "-c", "ls /proc/$$/fd; grep SigIgn /proc/$$/status"])
        assert finished(agent).exit_code == 0
    finally:
        os.close(read_end)
        os.close(write_end)
    lines = agent.log_path.read_text().split()
    fds = sorted(int(x) for x in lines if x.isdigit())
    assert fds[:3] == [0, 1, 2]
    assert write_end not in fds
    assert len(fds) <= 4, fds  # 0-2, and the directory ls itself has open
    ignored = int(lines[lines.index("SigIgn:") + 1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), hex(ignored)


def test_a_childs_identity_is_read_when_first_needed(agents: Agents) -> None:
    """spawn does not read the new process's start identity (that blocks while it starts);
    the first use reads it, and it names that process."""
    agent = agents.spawn(["sleep", "30"])
    assert agent._identity == ""
    assert agent.identity == procs.identity_of(agent.pid)
    assert procs.same_process(agent.pid, agent.identity)
    agent.kill_tree()
    finished(agent)


def test_the_log_is_appended_to_not_overwritten(agents: Agents, tmp_path: Path) -> None:
    """A second attempt's output is appended to an existing log (O_APPEND)."""
    (tmp_path / "run-5").mkdir()
    (tmp_path / "run-5" / "log").write_text("before\n")
    assert finished(agents.spawn(["echo", "after"], job_id=5)).exit_code == 0
    assert (tmp_path / "run-5" / "log").read_text() == "before\nafter\n"


# ---------------------------------------------------------------- spawn errors


def test_spawn_of_a_missing_command_raises_enoent(agents: Agents, tmp_path: Path) -> None:
    """A command that is not on PATH, or a path that does not exist, is SpawnError(ENOENT)."""
    for argv0 in ("no-such-agent-command-xyz", str(tmp_path / "missing")):
        with pytest.raises(SpawnError) as info:
            agents.spawn([argv0])
        assert info.value.errno == errno.ENOENT
        assert isinstance(info.value, OSError)
        assert f"command not found: {argv0}" in str(info.value)


def test_spawn_of_a_non_executable_file_raises_eacces(agents: Agents, tmp_path: Path) -> None:
    """A file without the execute bit is SpawnError(EACCES), by path and by PATH lookup."""
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(SpawnError) as info:
        agents.spawn([str(script)])
    assert info.value.errno == errno.EACCES
    env = agents.env(1) | {"PATH": str(tmp_path)}
    with pytest.raises(SpawnError) as info:
        procs.spawn(["agent.sh"], env=env, run_dir=tmp_path, log_path=tmp_path / "log", job_id=1,
                    attempt=1, worker=agents.worker)  # fmt: skip
    assert info.value.errno == errno.EACCES


def test_spawn_in_a_missing_cwd_raises_enoent(agents: Agents, tmp_path: Path) -> None:
    """A working directory that does not exist is SpawnError(ENOENT) and starts nothing."""
    with pytest.raises(SpawnError) as info:
        agents.spawn(["true"], cwd=str(tmp_path / "nowhere"))
    assert info.value.errno == errno.ENOENT


def test_spawn_resolves_the_command_on_the_agents_path(agents: Agents, tmp_path: Path) -> None:
    """A bare name is looked up on env's PATH, and cwd is honoured."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "my-agent"
    tool.write_text('#!/bin/sh\necho "$0 in $(pwd)"\n')
    tool.chmod(0o755)
    env = agents.env(9) | {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    agent = procs.spawn(["my-agent"], env=env, run_dir=tmp_path / "r", log_path=tmp_path / "log",
                        cwd=str(bin_dir), job_id=9, attempt=1, worker=agents.worker)  # fmt: skip
    agents.spawned.append(agent)
    assert finished(agent).exit_code == 0
    assert (tmp_path / "log").read_text() == f"{tool} in {bin_dir}\n"


# ---------------------------------------------------------------- stopping trees


def test_sigterm_ignoring_tree_is_killed_after_grace(agents: Agents, tmp_path: Path) -> None:
    """An agent and grandchild that both ignore SIGTERM are gone within grace + 1 s of stop()."""
    gc_file = tmp_path / "gc.pid"
    script = f'trap "" TERM; sh -c \'trap "" TERM; exec sleep 300\' & echo $! > {gc_file}; wait'
    agent = agents.spawn(["sh", "-c", script])
    wait_until(lambda: gc_file.exists() and gc_file.read_text().strip(), 5, "grandchild pid")
    grandchild = int(gc_file.read_text())
    wait_until(lambda: psutil.Process(grandchild).name() == "sleep", 5, "grandchild to exec sleep")
    gc_identity = procs.identity_of(grandchild)
    started = time.monotonic()
    status = support.stop_agent(agent, 0.5)
    elapsed = time.monotonic() - started
    wait_until(lambda: gone(agent.pid, agent.identity) and gone(grandchild, gc_identity), 1.5 - elapsed)
    assert time.monotonic() - started < 0.5 + 1
    assert elapsed >= 0.5, (
        status,
        agent.log_path.read_text(),
        agent.exit_file.exists() and agent.exit_file.read_text(),
    )  # TERM really was ignored
    assert status is not None
    assert status.signal == signal.SIGKILL


def test_stop_returns_early_when_the_agent_obeys_sigterm(agents: Agents) -> None:
    """stop() does not sit out the grace when the whole group exits on SIGTERM."""
    agent = agents.spawn(["sleep", "30"])
    wait_exec(agent, "sleep")
    started = time.monotonic()
    status = support.stop_agent(agent, 5.0)
    assert time.monotonic() - started < 1.0
    assert status is not None
    assert status.signal == signal.SIGTERM


def test_setsid_escapee_is_found_by_tag_and_killed(agents: Agents, tmp_path: Path) -> None:
    """A grandchild that left the group with setsid() escapes killpg but not kill_tree's tag scan."""
    esc_file = tmp_path / "esc.pid"
    code = (
        f"import os, time; os.setsid(); open({str(esc_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    )
    agent = agents.spawn(["sh", "-c", f'"{PY}" -c "{code}" & sleep 300'])
    wait_until(lambda: esc_file.exists() and esc_file.read_text(), 10, "escapee pid")
    escapee = int(esc_file.read_text())
    escapee_identity = procs.identity_of(escapee)
    assert os.getsid(escapee) == escapee != agent.pgid  # really outside the group
    hit = agent.kill_tree()
    assert escapee in hit
    assert agent.pid in hit
    wait_until(lambda: gone(escapee, escapee_identity), 2, "escapee to die")
    assert finished(agent).signal == signal.SIGKILL
    wait_until(lambda: not procs.scan_tagged(agents.worker), 2, "the killed tree to finish exiting")
    assert agent.kill_tree() == []  # nothing of ours is left, so nothing is signalled


def test_signal_group_after_the_leader_is_reaped_needs_a_tagged_member(agents: Agents) -> None:
    """Once the leader is reaped, the group is signalled only while a tagged member remains."""
    agent = agents.spawn(["sh", "-c", "sleep 300 & exit 0"])
    assert finished(agent).exit_code == 0
    assert procs._group_members(agent.pgid)  # the background sleep keeps the group alive
    assert agent.signal_group(signal.SIGKILL)
    wait_until(lambda: not procs._group_members(agent.pgid), 2, "group to die")
    assert agent.signal_group(signal.SIGKILL) is False


# ---------------------------------------------------------------- log capping under load


def test_500mb_of_output_stays_capped_with_small_memory(agents: Agents) -> None:
    """An agent writing 500 MB ends with a log of cap + marker and the supervisor's RSS stays small."""
    total, cap_bytes = 500_000_000, 1 << 20
    me = psutil.Process()
    agent = agents.spawn(["head", "-c", str(total), "/dev/zero"])
    cap = LogCap(agent.log_path, cap_bytes)
    waiter = procs.Waiter()
    waiter.register(agent)
    baseline = me.memory_info().rss  # the test process already holds the whole suite's imports
    peak_rss, peak_file, checks = 0, 0, 0
    started = time.monotonic()
    try:
        while agent.poll() is None:
            waiter.wait(0.1)
            peak_file = max(peak_file, agent.log_path.stat().st_size)
            cap.check()
            checks += 1
            peak_rss = max(peak_rss, me.memory_info().rss)
            assert time.monotonic() - started < 15
    finally:
        waiter.close()
    tail = cap.finish()
    elapsed = time.monotonic() - started
    size = agent.log_path.stat().st_size
    print(f"\n500 MB: {elapsed:.2f} s, {checks} checks, peak file {peak_file / 1e6:.1f} MB, "
          f"final {size} B, dropped {cap.dropped}, test RSS peak {peak_rss / 1e6:.1f} MB")  # fmt: skip
    status = agent.poll()
    assert status is not None
    assert status.exit_code == 0
    final_marker = (
        f"\n[agent-supervisor: output truncated at {cap_bytes} bytes; at least {cap.dropped} bytes dropped]\n"
    )
    assert size == cap_bytes + len(final_marker)
    assert agent.log_path.read_bytes()[cap_bytes:] == final_marker.encode()
    assert 0.95 * (total - cap_bytes) <= cap.dropped <= total - cap_bytes  # a lower bound, see logcap
    assert tail == "\0" * 4096
    assert peak_rss - baseline < 20_000_000, "capping 500 MB of output must not grow our memory"


# ---------------------------------------------------------------- waiting


def test_waiter_returns_promptly_when_an_agent_exits(agents: Agents) -> None:
    """wait() wakes within 0.5 s of a registered agent's exit (pidfd), not at its timeout."""
    agent = agents.spawn(["sleep", "0.2"])
    waiter = procs.Waiter()
    try:
        waiter.register(agent)
        started = time.monotonic()
        waiter.wait(5)
        assert time.monotonic() - started < 0.5
        assert agent.poll() is not None
        waiter.unregister(agent)
        started = time.monotonic()
        waiter.wait(0.1)  # unregistered: the exited agent no longer wakes us
        assert time.monotonic() - started >= 0.09
    finally:
        waiter.close()


def test_waiter_polls_agents_without_a_pidfd(agents: Agents) -> None:
    """Without a pidfd (macOS, old kernels) wait() caps its timeout at 0.05 s and still notices exits."""
    agent = agents.spawn(["sleep", "0.2"])
    agent.close()  # as if pidfd_open were unavailable
    assert agent.fileno() is None
    waiter = procs.Waiter()
    try:
        waiter.register(agent)
        started = time.monotonic()
        while agent.poll() is None:
            waiter.wait(5)
            assert time.monotonic() - started < 0.5
    finally:
        waiter.close()


def test_waiter_wake_from_another_thread_and_timeout() -> None:
    """wake() from another thread ends wait() at once; otherwise wait() lasts about its timeout."""
    waiter = procs.Waiter()
    try:
        timer = threading.Timer(0.1, waiter.wake)
        started = time.monotonic()
        timer.start()
        waiter.wait(5)
        assert 0.09 <= time.monotonic() - started < 0.5
        timer.join()
        started = time.monotonic()
        waiter.wait(0.2)
        assert 0.19 <= time.monotonic() - started < 0.5
        for _ in range(100_000):  # a full pipe must not block or raise
            waiter.wake()
        started = time.monotonic()
        waiter.wait(5)  # a wake-up before the wait counts
        waiter.wait(0.05)  # and all of them were drained
        assert time.monotonic() - started < 0.5
    finally:
        waiter.close()
    waiter.close()  # idempotent
    waiter.wake()  # harmless after close
    with pytest.raises(ValueError, match="closed"):
        waiter.wait(0)


# ---------------------------------------------------------------- scan, subreaper, supervisor death


def test_scan_tagged_finds_our_agent(agents: Agents) -> None:
    """scan_tagged(worker) lists the wrapper and the agent with their job, attempt and group."""
    agent = agents.spawn(["sleep", "30"], job_id=77)
    wait_until(lambda: len(procs.scan_tagged(agents.worker)) == 2, 5, "wrapper and agent in the scan")
    found = {t.pid: t for t in procs.scan_tagged(agents.worker)}
    assert agent.pid in found
    assert found[agent.pid].identity == agent.identity
    assert all(
        (t.job_id, t.attempt, t.worker, t.pgid) == (77, 1, agents.worker, agent.pgid) for t in found.values()
    )
    assert procs.scan_tagged("another-worker-" + agents.worker) == []


def test_child_subreaper_adopts_orphaned_grandchildren() -> None:
    """With PR_SET_CHILD_SUBREAPER an orphaned grandchild is re-parented to us, and we reap it."""
    assert procs.set_child_subreaper(True)
    grandchild = None
    try:
        out = subprocess.run(
            ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True
        )
        grandchild = int(out.stdout)
        wait_until(lambda: psutil.Process(grandchild).ppid() == os.getpid(), 2, "re-parenting")
    finally:
        if grandchild is not None:
            os.kill(grandchild, signal.SIGKILL)
            assert os.waitpid(grandchild, 0)[0] == grandchild
        assert procs.set_child_subreaper(False)


FAKE_SUPERVISOR = """
import json, sys, time
from pathlib import Path
from supervisor import procs
run_dir, worker = Path(sys.argv[1]), sys.argv[2]
env = {"PATH": "/usr/bin:/bin", procs.TAG_JOB: "1", procs.TAG_ATTEMPT: "1", procs.TAG_WORKER: worker}
agent_code = "import sys, time\\nfor i in range(20): print(i, flush=True); time.sleep(0.05)\\nsys.exit(7)"
a = procs.spawn([sys.executable, "-c", agent_code], env=env, run_dir=run_dir, log_path=run_dir / "log",
                job_id=1, attempt=1, worker=worker)
print(json.dumps({"pid": a.pid, "pgid": a.pgid, "identity": a.identity}), flush=True)
time.sleep(300)
"""


def test_agent_outlives_a_killed_supervisor_and_its_exit_code_is_recovered(
    agents: Agents, tmp_path: Path
) -> None:
    """SIGKILL of the supervisor leaves the agent running; attach().poll() later reads its exit code 7."""
    run_dir = tmp_path / "run"
    fake = subprocess.Popen([PY, "-c", FAKE_SUPERVISOR, str(run_dir), agents.worker], stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True)  # fmt: skip
    try:
        assert fake.stdout is not None
        record = json.loads(fake.stdout.readline())
        fake.kill()
        fake.wait()
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()
        assert fake.stdout is not None
        fake.stdout.close()
    adopted = AgentProcess.attach(pid=record["pid"], pgid=record["pgid"], identity=record["identity"],
                                  started_mono=0.0, log_path=run_dir / "log", run_dir=run_dir, job_id=1,
                                  attempt=1, worker=agents.worker)  # fmt: skip
    agents.spawned.append(adopted)
    assert procs.same_process(adopted.pid, adopted.identity)
    assert psutil.Process(adopted.pid).ppid() == os.getpid()  # re-parented to us, the subreaper
    size = (run_dir / "log").stat().st_size if (run_dir / "log").exists() else 0
    wait_until(lambda: (run_dir / "log").stat().st_size > size, 2, "the log to keep growing")
    status = finished(adopted)
    assert status.exit_code == 7  # reaped by attach().poll() as our (adopted) zombie
    assert (run_dir / "exit").read_text() == "7"
    assert (run_dir / "log").read_text().splitlines() == [str(i) for i in range(20)]
    # A later supervisor that cannot reap it reads the same outcome from the exit file.
    later = AgentProcess.attach(pid=record["pid"], pgid=record["pgid"], identity=record["identity"],
                                started_mono=0.0, log_path=run_dir / "log", run_dir=run_dir, job_id=1,
                                attempt=1, worker=agents.worker)  # fmt: skip
    assert later.poll() == procs.ExitStatus(7, None, None)
    later.close()
    assert procs.scan_tagged(agents.worker) == []
