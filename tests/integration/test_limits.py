"""Per-agent limits on real process trees: cgroup OOM, a bounded fork bomb, SIGXCPU, tree stats."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from bridge.stores.sqlite import SQLiteStore
from supervisor import agentcgroup, cgroups, limits, procs, proctable
from supervisor.job import ErrorKind, JobSpec, Status
from supervisor.limits import Limits
from supervisor.procs import AgentProcess
from supervisor.runner import Supervisor
from supervisor.settings import KindConfig, Settings
from tests.support import kill_tagged, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux limits and cgroups are tested here")

ENF = cgroups.detect_host() if sys.platform == "linux" else None
HOST = ENF.describe() if ENF is not None else "not Linux"
needs_memory_cgroup = pytest.mark.skipif(
    ENF is None or ENF.memory_base is None,
    reason=f"no writable memory cgroup here ({HOST}); memory is only sampled",
)
needs_pids_cgroup = pytest.mark.skipif(
    ENF is None or ENF.pids_base is None,
    reason=f"no writable pids cgroup here ({HOST}); processes are only sampled",
)
PY = sys.executable

# Every process forks 2 children down to depth 10: at most 2**11 - 1 = 2047 processes even if
# the limit failed, each sleeping 0.2 s, waiting for its children, then exiting. A refused
# fork (EAGAIN from pids.max) is written to the log as one line.
BOUNDED_BOMB = """
import os, time
def node(depth):
    kids = []
    for _ in range(2 if depth < 10 else 0):
        try:
            pid = os.fork()
        except BlockingIOError:
            os.write(1, b"refused\\n")
            continue
        if pid == 0:
            try:
                node(depth + 1)
            finally:
                os._exit(0)
        kids.append(pid)
    time.sleep(0.2)
    for pid in kids:
        os.waitpid(pid, 0)
node(0)
"""


class Agents:
    """Spawns tagged agents under one test's tmp_path and reaps everything afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.worker = f"limits-{uuid.uuid4().hex[:10]}"
        self.spawned: list[AgentProcess] = []
        self.cgroups = limits.Cgroups(ENF)

    def spawn(self, argv: list[str], lim: Limits | None, job_id: int = 1) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
        run_dir = self.tmp / f"run-{job_id}"
        # kill_tagged(tmp_path) recognises our agents by this variable
        env["AGENT_SUPERVISOR_PAYLOAD_FILE"] = str(run_dir / "payload.json")
        agent = procs.spawn(
            argv, env=env, run_dir=run_dir, log_path=self.tmp / f"log-{job_id}", job_id=job_id,
            attempt=1, worker=self.worker, limits=lim, cgroups=self.cgroups,
        )  # fmt: skip
        self.spawned.append(agent)
        return agent

    def cleanup(self) -> None:
        dirs = [d for a in self.spawned if a._cgroup is not None for d in a._cgroup.dirs]
        for agent in self.spawned:
            agent.kill_tree()
        kill_tagged(self.tmp)
        for agent in self.spawned:
            wait_until(agent.poll, 10, message=f"{agent.pid} to be reaped")

        def all_removed() -> bool:
            proctable.reap_orphans(())  # killed orphans (ours as subreaper) keep a v1 cgroup busy
            for agent in self.spawned:
                agent.close()
            self.cgroups.sweep()
            return not any(os.path.exists(d) for d in dirs)

        wait_until(all_removed, 10, message="every agent cgroup removed")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    """Spawn helper; as a subreaper we inherit (and reap) whatever a killed tree leaves."""
    procs.set_child_subreaper(True)
    pool = Agents(tmp_path)
    try:
        yield pool
    finally:
        try:
            pool.cleanup()
        finally:
            procs.set_child_subreaper(False)


def finished(agent: AgentProcess, timeout: float) -> procs.ExitStatus:
    return wait_until(agent.poll, timeout, interval=0.01, message="the agent to end")


def cgroup_dirs(agent: AgentProcess) -> list[str]:
    cgroup = agent._cgroup
    assert cgroup is not None, f"no cgroup: {agent.enforcement}"
    return list(cgroup.dirs)


# ---------------------------------------------------------------- memory


@needs_memory_cgroup
def test_agent_allocating_past_its_memory_limit_is_oom_killed_and_named(agents: Agents) -> None:
    """50 MB chunks up to 1 GB under a 200 MiB limit: the kernel kills it and the breach says so."""
    code = "import sys\nx = []\nfor i in range(20):\n    x.append(b'1' * (50 << 20)); print(i, flush=True)"
    agent = agents.spawn([PY, "-c", code], Limits(memory_max_bytes=200 << 20))
    assert "memory 200 MiB: cgroup-v" in agent.enforcement
    status = finished(agent, 15)
    assert status.signal == signal.SIGKILL
    printed = agent.log_path.read_text().split()
    assert "1" in printed  # it did allocate ...
    assert "5" not in printed  # ... but never 300 MB
    assert agent.limit_breach() == "memory limit 200 MiB exceeded (cgroup OOM kill)"
    agent.close()
    assert agent.limit_breach() == "memory limit 200 MiB exceeded (cgroup OOM kill)"  # outlives the cgroup


# ---------------------------------------------------------------- processes


@needs_pids_cgroup
def test_bounded_fork_bomb_hits_the_process_limit_and_we_stay_responsive(agents: Agents) -> None:
    """pids_max 30 refuses the bomb's forks (counted by the agent and by pids.events) while a
    Waiter round trip in this process stays under 0.5 s and the tree never exceeds 30 tasks."""
    agent = agents.spawn([PY, "-c", BOUNDED_BOMB], Limits(pids_max=30))
    waiter = procs.Waiter()
    slowest, most = 0.0, 0
    try:
        waiter.register(agent)
        deadline = time.monotonic() + 20
        while agent.poll() is None:
            assert time.monotonic() < deadline, "the bounded bomb should end within 20 s"
            started = time.monotonic()
            waiter.wait(0.05)
            slowest = max(slowest, time.monotonic() - started)
            stats = agent.tree_stats()
            most = max(most, stats.processes if stats else 0)
    finally:
        waiter.close()
    refused = agent.log_path.read_text().count("refused\n")
    assert refused >= 1
    assert agent.limit_breach() == f"process limit 30 reached (pids.max, {refused} forks refused)"
    assert slowest < 0.5
    assert 1 < most <= 30


# ---------------------------------------------------------------- CPU time


def test_busy_loop_past_its_cpu_time_dies_of_sigxcpu_and_the_breach_says_cpu(agents: Agents) -> None:
    """cpu_time_s 1: RLIMIT_CPU's soft limit sends SIGXCPU (the hard one is a second later)."""
    agent = agents.spawn([PY, "-c", "while True: pass"], Limits(cpu_time_s=1))
    status = finished(agent, 15)
    assert status.signal == signal.SIGXCPU
    assert agent.limit_breach() == "CPU time limit 1 s exceeded (SIGXCPU)"


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_wrapper_sets_the_rlimits_in_the_agent_for_this_shell(tmp_path: Path, shell: str) -> None:
    """The wrapper text, run by dash or bash, leaves the agent with the soft/hard CPU, AS and NPROC limits."""
    if not os.path.exists(shell):
        pytest.skip(f"{shell} is not installed")
    flag = "u" if os.path.realpath(shell).endswith("bash") else "p"
    script = limits.wrapper_script(
        Limits(cpu_time_s=2, address_space_bytes=1 << 32), handshake=False, nproc=4321, flag=flag
    )
    probe = f"ulimit -S -t; ulimit -H -t; ulimit -v; ulimit -{flag}"
    out = subprocess.run(
        [shell, "-c", script, "wrapper", shell, "-c", probe],
        env={"AGENT_SUPERVISOR_EXIT_FILE": str(tmp_path / "exit"), "PATH": os.defpath},
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["2", "3", str(1 << 22), "4321"]
    assert out.stderr == ""
    assert (tmp_path / "exit").read_text() == "0"


# ---------------------------------------------------------------- tree statistics

# Three processes (the agent and two children), each holding 64 MiB of written memory.
THREE_HOLDERS = """
import os, sys, time
for _ in range(2):
    if os.fork() == 0:
        break
block = b"1" * (64 << 20)
os.write(1, b"ready\\n")
time.sleep(30)
"""


def psutil_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.parametrize("lim", [Limits(), None], ids=["cgroup-counters", "proc-scan"])
def test_tree_stats_sum_a_three_process_tree_like_psutil(agents: Agents, lim: Limits | None) -> None:
    """RSS of wrapper + 3 holders is within 20% of psutil's own sum; 4 processes; CPU % is sane."""
    if lim is not None and (ENF is None or ENF.memory_base is None or ENF.pids_base is None):
        pytest.skip(f"no memory and pids cgroups here ({HOST})")
    agent = agents.spawn([PY, "-c", THREE_HOLDERS], lim)
    wait_until(lambda: agent.log_path.read_text().count("ready") == 3, 15, message="3 holders ready")
    first = agent.tree_stats()
    stats = agent.tree_stats()
    expected = sum(p.memory_info().rss for p in psutil_tree(agent.pid))
    assert first is not None
    assert stats is not None
    assert stats.processes == 4
    assert abs(stats.rss_bytes - expected) <= 0.2 * expected, (stats.rss_bytes, expected)
    assert 0 <= stats.cpu_percent < 100  # sleeping holders; since the previous call
    assert first.cpu_percent > 0  # the first interval covers their start-up


def test_tree_stats_is_none_once_the_tree_is_gone(agents: Agents) -> None:
    """After the agent ended and was reaped, there is nothing to sample."""
    agent = agents.spawn(["sh", "-c", "exit 0"], Limits())
    finished(agent, 5)
    assert agent.tree_stats() is None


# ---------------------------------------------------------------- cgroup life cycle


@needs_pids_cgroup
def test_agent_cgroups_hold_the_tree_and_are_removed_after_close(agents: Agents) -> None:
    """The agent runs inside its cgroups with /dev/null as stdin; close() after the end removes them."""
    script = "cat /proc/self/cgroup; readlink /proc/self/fd/0"
    agent = agents.spawn(["sh", "-c", script], Limits(pids_max=10, memory_max_bytes=64 << 20))
    dirs = cgroup_dirs(agent)
    assert finished(agent, 5).exit_code == 0
    shown = agent.log_path.read_text()
    assert shown.endswith("\n/dev/null\n")  # the handshake pipe is not the agent's stdin
    for path in dirs:
        assert "/agent-supervisor/" + os.path.basename(path) in shown
        assert os.path.isdir(path)
    agent.close()
    assert not [p for p in dirs if os.path.exists(p)]
    agent.close()  # idempotent


@needs_pids_cgroup
def test_close_of_a_running_agent_keeps_its_cgroup_for_readoption(agents: Agents) -> None:
    """A supervisor that lets its agent run on (adopt policy) must not remove the agent's cgroup,
    and a later attach finds it again with the limits read back."""
    agent = agents.spawn(["sleep", "30"], Limits(pids_max=7, memory_max_bytes=100 << 20))
    dirs = cgroup_dirs(agent)
    agent.close()
    assert all(os.path.isdir(p) for p in dirs)
    again = AgentProcess.attach(
        pid=agent.pid, pgid=agent.pgid, identity=agent.identity, started_mono=agent.started_mono,
        log_path=agent.log_path, run_dir=agent.run_dir, job_id=1, attempt=1, worker=agents.worker,
        cgroups=agents.cgroups,
    )  # fmt: skip
    assert again.limits == Limits(memory_max_bytes=100 << 20, pids_max=7)
    assert sorted(cgroup_dirs(again)) == sorted(dirs)
    stats = wait_until(lambda: (s := again.tree_stats()) and s.processes == 2 and s, 5, message="sleep")
    assert stats.rss_bytes > 0
    agent.kill_tree()
    finished(agent, 5)
    wait_until(lambda: again.poll() is not None, 5, message="the adopted view to see the end")
    again.close()

    # the killed sleep, re-parented to us, keeps a v1 cgroup busy until reap_orphans reaps it
    def removed() -> bool:
        proctable.reap_orphans(())
        agents.cgroups.sweep()
        return not [p for p in dirs if os.path.exists(p)]

    wait_until(removed, 5, message="the agent's cgroup to be removed")


@needs_pids_cgroup
def test_kill_tree_reaches_an_escapee_that_left_group_and_environment(agents: Agents, tmp_path: Path) -> None:
    """A double-forked setsid child with a cleared environment is still in the cgroup, and dies with it."""
    pidfile = tmp_path / "escapee"
    escape = f"setsid env -i /bin/sh -c 'echo $$ > {pidfile}; exec sleep 30' & wait"
    agent = agents.spawn(["sh", "-c", escape], Limits())
    escapee = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, message="escapee"))
    identity = procs.identity_of(escapee)
    assert identity is not None
    try:
        assert os.getsid(escapee) != agent.pgid
        assert escapee in agent.kill_tree()  # killpg and the env tag miss it; the cgroup does not
        wait_until(lambda: not procs.same_process(escapee, identity), 5, message="the escapee to die")
    finally:  # untagged: no other cleanup would find it
        procs.signal_process(escapee, identity, signal.SIGKILL)


def test_failed_cgroup_join_still_runs_the_agent_and_reports_the_fallback(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If cgroup.procs refuses the wrapper, the agent runs anyway, outside, with the NPROC fallback."""
    if ENF is None or not ENF.bases():
        pytest.skip(f"no cgroup here ({HOST})")
    real_write = agentcgroup.write_file

    def refuse_procs(path: str, text: str) -> None:
        if path.endswith("cgroup.procs"):
            raise PermissionError(13, "Permission denied", path)
        real_write(path, text)

    monkeypatch.setattr(agentcgroup, "write_file", refuse_procs)
    # as if we were not root: the wrapper then receives an RLIMIT_NPROC through the handshake
    not_root = cgroups.Enforcement(**{**vars(ENF), "nproc_exempt": False})
    agents.cgroups = limits.Cgroups(not_root)
    script = f"cat /proc/self/cgroup; ulimit -{limits.nproc_flag()}"
    agent = agents.spawn(["sh", "-c", script], Limits(pids_max=25))
    assert finished(agent, 5).exit_code == 0
    out = agent.log_path.read_text()
    assert "agent-supervisor" not in out
    nproc = int(out.split()[-1])
    assert 25 < nproc < 25 + 100_000
    assert agent.enforcement == "processes 25: RLIMIT_NPROC (per user)"


def test_spawn_without_limits_keeps_the_plain_wrapper(agents: Agents) -> None:
    """limits=None: no cgroup, no handshake, no rlimit, no breach; the agent's stdin is /dev/null."""
    agent = agents.spawn(["sh", "-c", "readlink /proc/self/fd/0; ulimit -t"], None)
    assert finished(agent, 5).exit_code == 0
    assert agent.log_path.read_text().split() == ["/dev/null", "unlimited"]
    assert (agent._cgroup, agent.enforcement, agent.limit_breach()) == (None, "", None)


def test_without_cgroups_the_wrapper_alone_applies_rlimits_and_memory_is_sampled(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rlimit backend (macOS, cgroup-less Linux): no handshake, RLIMIT_NPROC set, memory sampled."""
    agents.cgroups = limits.Cgroups(cgroups.Enforcement("rlimit", nproc_exempt=False))
    script = f"readlink /proc/self/fd/0; ulimit -{limits.nproc_flag()}; cat /proc/self/cgroup"
    agent = agents.spawn(["sh", "-c", script], Limits(pids_max=25, memory_max_bytes=64 << 20))
    assert (
        agent.enforcement == "memory 64 MiB: sampled by the supervisor; processes 25: RLIMIT_NPROC (per user)"
    )
    assert finished(agent, 5).exit_code == 0
    out = agent.log_path.read_text().split()
    assert out[0] == "/dev/null"
    assert 25 < int(out[1]) < 25 + 100_000
    assert "agent-supervisor" not in " ".join(out[2:])
    assert agent.limit_breach() is None


# ---------------------------------------------------------------- CPU rate and address space

needs_cpu_controller = pytest.mark.skipif(
    ENF is None or ENF.cpu_max_base is None,
    reason=f"no writable CPU controller here ({HOST}); cpu_max is reported as not enforced",
)
# A busy loop that measures its own share of a CPU over 2 s of wall time (interpreter start-up,
# also throttled, is left out): CPU seconds used during the loop over its wall seconds.
BUSY = """
import time
t0, c0 = time.monotonic(), time.process_time()
while time.monotonic() - t0 < 2.0:
    pass
print(round((time.process_time() - c0) / (time.monotonic() - t0), 3))
"""


@needs_cpu_controller
def test_cpu_max_caps_a_busy_loop_at_its_rate(agents: Agents) -> None:
    """cpu_max = 0.2: the cgroup holds a 20 ms per 100 ms quota, the busy loop is throttled,
    and it gets at most ~25 % of a CPU over 2 s (the kernel may run one period's quota late)."""
    agent = agents.spawn([PY, "-c", BUSY], Limits(cpu_max=0.2))
    version = agent._cgroup.version if agent._cgroup else 0
    assert agent.enforcement == f"CPU rate 0.2 CPUs: cgroup-v{version} " + (
        "cpu.max" if version == 2 else "cpu.cfs_quota_us"
    )
    assert agent._cgroup is not None
    [cpu_dir] = [d for d, cs in agent._cgroup.dirs.items() if "cpu" in cs]
    assert agentcgroup.read_cpu_max(cpu_dir, version) == 0.2
    assert finished(agent, 15).exit_code == 0
    share = float(agent.log_path.read_text())
    assert share <= 0.25, f"{share:.0%} of a CPU under a 20 % cap"
    stat = Path(cpu_dir, "cpu.stat").read_text().split()
    assert int(stat[stat.index("nr_throttled") + 1]) > 0  # the quota, not a busy machine, held it
    agent.close()


def test_cpu_max_without_a_cpu_controller_runs_the_agent_and_says_so(agents: Agents) -> None:
    """Where the CPU controller cannot be written the agent still starts, unthrottled, and its
    enforcement line says the rate is not enforced and why."""
    if ENF is None:
        pytest.skip("not Linux")
    agents.cgroups = limits.Cgroups(replace(ENF, cpu_max_base=None, cpu_reason="no cgroup v1 cpu hierarchy"))
    agent = agents.spawn(["true"], Limits(cpu_max=0.2))
    assert finished(agent, 5).exit_code == 0
    assert agent.enforcement.endswith("CPU rate 0.2 CPUs: not enforced (no cgroup v1 cpu hierarchy)")


def test_a_job_with_cpu_max_carries_its_enforcement_in_its_facts(tmp_path: Path) -> None:
    """The job's settling event says how its kind's limits were enforced (or why not)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        heartbeat_s=0.5,
        lease_s=5.0,
        kinds={"capped": KindConfig(argv=["true"], cpu_max=0.5)},
    )
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        sup = Supervisor(settings, store, install_signal_handlers=False)
        job_id = sup.submit(JobSpec(kind="capped"))
        sup.run(until_idle=True)
        [done] = [e for e in store.events(job_id) if e.to_status is Status.COMPLETED]
        assert done.facts["limits_enforcement"].startswith("CPU rate 0.5 CPUs: ")
        host = sup.processes.enforcement()  # health's limits_enforcement
        assert ", cpu)" in host or "CPU rate: not enforced (" in host
    finally:
        store.close()


def test_an_address_space_breach_is_recorded_as_resource_limit(tmp_path: Path) -> None:
    """A Python agent allocating 400 MiB under a 300 MiB RLIMIT_AS dies of MemoryError; the
    job ends as resource_limit and names the address-space limit, not as a plain exit code."""
    code = "x = b'1' * (400 << 20)"
    settings = Settings(
        data_dir=tmp_path / "data",
        heartbeat_s=0.5,
        lease_s=5.0,
        kinds={"greedy": KindConfig(argv=[PY, "-c", code], address_space_bytes=300 << 20)},
    )
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        sup = Supervisor(settings, store, install_signal_handlers=False)
        job_id = sup.submit(JobSpec(kind="greedy", max_attempts=1))
        sup.run(until_idle=True)
        job = store.get(job_id)
        assert (job.status, job.error_kind, job.exit_code) == (Status.FAILED, ErrorKind.RESOURCE_LIMIT, 1)
        assert job.error == (
            "address space limit 300 MiB per process exceeded (output: 'MemoryError'); exit code 1"
        )
    finally:
        store.close()
