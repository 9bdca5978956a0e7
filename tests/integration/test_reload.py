"""A restart of the supervisor is a non-event: adopt or kill orphans, never run a job twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from bridge.stores.sqlite import SQLiteStore
from supervisor import procs
from supervisor.lifecycle import ErrorKind, JobSpec, Status
from supervisor.procs import OsProcesses
from supervisor.runner import Supervisor
from supervisor.settings import Settings
from supervisor.statefile import AgentEntry, State, StateFile
from tests.support import ROOT, cli, cli_env, kill_tagged, tagged_processes, wait_until

AGENT = (
    "import json, os, sys, time\n"
    "time.sleep(float(sys.argv[1]))\n"
    "json.dump({'job': os.environ['AGENT_SUPERVISOR_JOB_ID']},"
    " open(os.environ['AGENT_SUPERVISOR_RESULT_FILE'], 'w'))\n"
    "sys.exit(int(sys.argv[2]))\n"
)
HELD = (
    "import json, os, subprocess, sys, time\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.01)\n"
    "if sys.argv[3] == 'leftover':\n"
    "    subprocess.Popen(['sleep', '300'])  # keeps the tag; outlives the agent\n"
    "json.dump({'job': os.environ['AGENT_SUPERVISOR_JOB_ID']},"
    " open(os.environ['AGENT_SUPERVISOR_RESULT_FILE'], 'w'))\n"
    "sys.exit(int(sys.argv[2]))\n"
)
"""An agent that runs until the file ``argv[1]`` exists, then (``argv[3] == 'leftover'``:
leaving a tagged background child) writes its result and exits with ``argv[2]``: a test
decides when it ends instead of racing a sleep."""


@pytest.fixture(autouse=True)
def _reap_agents(tmp_path: Path):
    yield
    kill_tagged(tmp_path)


def show(data: Path, job_id: int) -> dict[str, object]:
    out = cli(data, "show", str(job_id), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def recorded_entry(data: Path, job_id: int) -> AgentEntry:
    """The state file's record of ``job_id``'s agent."""
    loaded = StateFile(data / "running-agents.json", data / "quarantine").load()
    assert loaded.state is not None
    [found] = [a for a in loaded.state.agents if a.job_id == job_id]
    return found


def recorded_jobs(data: Path) -> set[int]:
    """The job ids in the data dir's state file (empty while it is missing)."""
    loaded = StateFile(data / "running-agents.json", data / "quarantine").load()
    return {a.job_id for a in loaded.state.agents} if loaded.state else set()


def start_and_sigkill(
    data: Path, env: dict[str, str], job_ids: list[int], *, recorded: bool = True
) -> list[int]:
    """Run a supervisor until every job's agent runs (and, with ``recorded``, is in the state
    file), then SIGKILL it; the agents' pids."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: (
                all(show(data, i)["status"] == "running" for i in job_ids)
                and (not recorded or recorded_jobs(data) >= set(job_ids))
            ),
            20,
            message="both agents running",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    return [int(show(data, i)["pid"]) for i in job_ids]  # type: ignore[arg-type]


def settle_events(data: Path, job_id: int) -> list[dict[str, object]]:
    return [
        e
        for e in show(data, job_id)["events"]
        if e["from"] in ("running", "preparing")  # type: ignore[union-attr]
        and e["to"] not in ("running", "preparing")
    ]


def test_sigkilled_supervisor_adopts_its_agents_and_records_them_once(tmp_path: Path) -> None:
    """After a SIGKILL of the supervisor, the next start adopts both live agents; their exit
    codes and results are recorded exactly once, and no tagged process is left."""
    data, release = tmp_path / "d", tmp_path / "release"
    env = cli_env(data, AGENT_SUPERVISOR_HEARTBEAT_S="0.5", AGENT_SUPERVISOR_LEASE_S="5")
    ids = [
        int(
            cli(
                data,
                "submit",
                "--max-attempts",
                "1",
                "--",
                sys.executable,
                "-c",
                HELD,
                str(release),
                code,
                "-",
            ).stdout
        )
        for code in ("0", "3")
    ]
    wrappers = start_and_sigkill(data, env, ids)
    assert all(psutil.pid_exists(p) for p in wrappers)
    # the agents run on until the second supervisor has adopted them (no race with a sleep)
    log = tmp_path / "second.log"
    with log.open("w") as err:
        second = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--until-idle"], env=env, cwd=ROOT, stderr=err
        )
        try:
            wait_until(lambda: log.read_text().count("adopted (pid") == 2, 20, message="both adopted")
            release.touch()
            assert second.wait(timeout=30) == 0, log.read_text()
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
    done, crashed = show(data, ids[0]), show(data, ids[1])
    assert (done["status"], done["exit_code"], done["result"]) == ("completed", 0, {"job": str(ids[0])})
    assert (crashed["status"], crashed["exit_code"], crashed["error_kind"]) == ("failed", 3, "exit_code")
    for job_id in ids:
        assert len(settle_events(data, job_id)) == 1, "an outcome was recorded twice"
        assert show(data, job_id)["attempt"] == 1
    assert not tagged_processes(tmp_path)


def test_sigkilled_supervisor_with_kill_policy_kills_orphans_and_retries(tmp_path: Path) -> None:
    """With orphan_policy kill, the orphans are gone within grace + 1 s of the restart and
    their jobs are retried."""
    data = tmp_path / "d"
    env = cli_env(
        data,
        AGENT_SUPERVISOR_HEARTBEAT_S="0.5",
        AGENT_SUPERVISOR_LEASE_S="5",
        AGENT_SUPERVISOR_ORPHAN_POLICY="kill",
        AGENT_SUPERVISOR_STOP_GRACE_S="1",
    )
    ids = [
        int(cli(data, "submit", "--backoff", "0", "--", sys.executable, "-c", AGENT, "30", "0").stdout)
        for _ in range(2)
    ]
    pids = start_and_sigkill(data, env, ids)
    agents = [psutil.Process(p) for p in pids]
    restarted = time.monotonic()
    out = cli(data, "reconcile", env=env)
    assert out.returncode == 0, out.stderr
    wait_until(
        lambda: not any(a.is_running() and a.status() != psutil.STATUS_ZOMBIE for a in agents),
        2,
        message="orphans gone",
    )
    assert time.monotonic() - restarted <= 1 + 1 + 3  # grace + 1 s, plus the CLI's own start-up
    assert out.stdout.count("kill_and_record") == 2
    for job_id in ids:
        job = show(data, job_id)
        assert (job["status"], job["error_kind"]) == ("waiting_retry", "lost")
    assert not tagged_processes(tmp_path)


def _leave_running(settings: Settings, store: SQLiteStore, argv: list[str]) -> int:
    """Start a supervisor, run one job until its agent runs, and stop leaving it running (a
    host reload): the state file records it and the lease stays ours. The job's id."""
    first = Supervisor(settings, store, install_signal_handlers=False)
    job_id = first.submit(JobSpec(command=tuple(argv), max_attempts=3, backoff_s=0))
    first.start()
    try:
        wait_until(lambda: store.get(job_id).status is Status.RUNNING, 10, message="running")
        wait_until(lambda: job_id in recorded_jobs(settings.data_dir), 10, message="recorded")
    finally:
        first.stop(leave_agents=True, timeout=10)
    return job_id


def test_kill_policy_records_an_agent_that_already_exited_with_its_real_status(tmp_path: Path) -> None:
    """orphan_policy kill: an agent that exited 0 while no supervisor watched, leaving a tagged
    child behind, is recorded completed with its result (not lost, not re-run), and the
    leftover is stopped and listed in the job's facts."""
    release = tmp_path / "release"
    settings = Settings(data_dir=tmp_path / "data", heartbeat_s=0.5, lease_s=30.0, orphan_policy="kill")
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        argv = [sys.executable, "-c", HELD, str(release), "0", "leftover"]
        job_id = _leave_running(settings, store, argv)
        run_dir = Path(recorded_entry(settings.data_dir, job_id).run_dir)
        release.touch()
        wait_until(lambda: (run_dir / "exit").is_file() and (run_dir / "exit").read_text() == "0", 10,
                   message="the agent's exit recorded by its wrapper")  # fmt: skip
        [leftover] = wait_until(lambda: tagged_processes(tmp_path), 5, message="the tagged leftover")
        decisions = Supervisor(settings, store, install_signal_handlers=False).reconcile()
        assert [d.action.value for d in decisions] == ["record_exit"]
        job = store.get(job_id)
        assert (job.status, job.exit_code, job.result, job.attempt) == (
            Status.COMPLETED, 0, {"job": str(job_id)}, 1,
        )  # fmt: skip
        [settled] = [e for e in store.events(job_id) if e.to_status is Status.COMPLETED]
        assert [e["pid"] for e in settled.facts["escaped"]] == [leftover.pid]
        wait_until(lambda: not tagged_processes(tmp_path), 5, message="the leftover stopped")
    finally:
        store.close()


class ExitsAfterTheLook(OsProcesses):
    """The real process layer, except that the agent ends right after reconciliation has
    seen it alive (``same_process``) and before it acts: the race of issue 11, made certain."""

    def __init__(self, release: Path, exit_file: Path) -> None:
        super().__init__()
        self.release, self.exit_file, self.fired = release, exit_file, False

    def same_process(self, pid: int, identity: str) -> bool:
        alive = super().same_process(pid, identity)
        if alive and not self.fired:
            self.fired = True
            self.release.touch()
            wait_until(lambda: self.exit_file.is_file() and self.exit_file.read_text() == "7", 10,
                       message="the agent's exit recorded by its wrapper")  # fmt: skip
        return alive


def test_an_agent_ending_between_the_look_and_the_kill_is_recorded_not_lost(tmp_path: Path) -> None:
    """orphan_policy kill: the agent is alive when reconcile looks and has exited (code 7) by
    the time it kills; the exit file read after the kill records exit code 7, not lost."""
    release = tmp_path / "release"
    settings = Settings(data_dir=tmp_path / "data", heartbeat_s=0.5, lease_s=30.0, orphan_policy="kill")
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        argv = [sys.executable, "-c", HELD, str(release), "7", "-"]
        job_id = _leave_running(settings, store, argv)
        exit_file = Path(recorded_entry(settings.data_dir, job_id).run_dir) / "exit"
        racing = ExitsAfterTheLook(release, exit_file)
        decisions = Supervisor(settings, store, install_signal_handlers=False, processes=racing).reconcile()
        assert racing.fired
        assert [(d.action.value, d.why) for d in decisions] == [
            ("record_exit", "ended between our look and the kill (its exit file says how)")
        ]
        job = store.get(job_id)
        assert (job.status, job.error_kind, job.exit_code, job.attempt) == (
            Status.WAITING_RETRY, ErrorKind.EXIT_CODE, 7, 1,
        )  # fmt: skip
    finally:
        store.close()


def test_agent_started_just_before_a_crash_is_killed_and_retried_not_orphaned(tmp_path: Path) -> None:
    """A supervisor SIGKILLed before its state file records a running agent (the save is
    batched, ``state_save_delay_s``; here an hour, to hold that window open): the restart
    finds the agent by its env tag, kills it, and retries the job; nothing is left running
    and the agent's first attempt is never recorded as completed."""
    data = tmp_path / "d"
    env = cli_env(
        data,
        AGENT_SUPERVISOR_HEARTBEAT_S="0.5",
        AGENT_SUPERVISOR_LEASE_S="5",
        AGENT_SUPERVISOR_STATE_SAVE_DELAY_S="3600",
    )
    [job_id] = [
        int(cli(data, "submit", "--backoff", "0", "--", sys.executable, "-c", AGENT, "30", "0").stdout)
    ]
    [pid] = start_and_sigkill(data, env, [job_id], recorded=False)
    assert job_id not in recorded_jobs(data)
    agent = psutil.Process(pid)
    out = cli(data, "reconcile", env=env)
    assert out.returncode == 0, out.stderr
    assert "kill_and_record" in out.stdout
    wait_until(
        lambda: not agent.is_running() or agent.status() == psutil.STATUS_ZOMBIE, 5, message="agent gone"
    )
    job = show(data, job_id)
    assert (job["status"], job["error_kind"], job["attempt"]) == ("waiting_retry", "lost", 1)
    assert not tagged_processes(tmp_path)


def test_setsid_grandchild_dies_with_its_agent_at_timeout(tmp_path: Path) -> None:
    """An agent whose grandchild calls setsid and sleeps: after the agent's timeout both are gone."""
    pids = tmp_path / "pids"
    code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, '-c',
            'import os, time; os.setsid(); time.sleep(300)'])
        open({str(pids)!r} + '.tmp', 'w').write(f'{{os.getpid()}} {{child.pid}}')
        os.rename({str(pids)!r} + '.tmp', {str(pids)!r})
        time.sleep(300)
    """)
    settings = Settings(
        data_dir=tmp_path / "data", stop_grace_s=0.5, heartbeat_s=0.5, lease_s=3.0, wake_poll_s=0.02
    )
    sup = Supervisor(settings, SQLiteStore(tmp_path / "jobs.sqlite3"), install_signal_handlers=False)
    job_id = sup.submit(JobSpec(command=(sys.executable, "-c", code), timeout_s=1.0, max_attempts=1))
    sup.start(until_idle=True)
    try:
        wait_until(pids.exists, 10, message="agent and escaped grandchild up")
        agent, grandchild = (psutil.Process(int(p)) for p in pids.read_text().split())
        wait_until(lambda: os.getpgid(grandchild.pid) != os.getpgid(agent.pid), 5, message="setsid")
        gone = lambda p: not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        wait_until(lambda: gone(agent) and gone(grandchild), 1.0 + 0.5 + 2, message="both gone")
        sup.stop(timeout=10)
        assert sup.store.get(job_id).error_kind is ErrorKind.TIMEOUT
    finally:
        sup.stop(drain=False, timeout=10)
        sup.store.close()


def test_reused_pid_in_state_file_is_never_killed(tmp_path: Path) -> None:
    """A state file entry whose pid now belongs to an unrelated process (same pid, other start
    identity) never leads to signalling that process."""
    data = tmp_path / "data"
    settings = Settings(data_dir=data, heartbeat_s=0.5, lease_s=3.0)
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    [job_id] = store.enqueue([JobSpec(command=("true",))])
    [job] = store.claim("w-old", 1, lease_s=30)
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        store.mark_running(job_id, "w-old", job.attempt, unrelated.pid)
        real = procs.identity_of(unrelated.pid)
        assert real is not None
        fake = real.rsplit(":", 1)[0] + ":1"  # same boot, another start time: PID reuse
        data.mkdir(mode=0o700)
        entry = AgentEntry(
            job_id=job_id,
            attempt=job.attempt,
            worker="w-old",
            pid=unrelated.pid,
            pgid=unrelated.pid,
            start_identity=fake,
            command=["x"],
            started_at=time.time(),
            started_mono=time.monotonic(),
            timeout_s=60,
            idle_timeout_s=None,
            log_path=str(data / "x.log"),
            run_dir=str(data / "runs" / "x"),
        )
        StateFile(data / "running-agents.json", data / "quarantine").save(
            State(
                format="agent-supervisor/running-agents",
                version=1,
                worker_id="w-old",
                boot_id=procs.boot_id(),
                updated_at=time.time(),
                agents=[entry],
            )
        )
        decisions = Supervisor(settings, store, install_signal_handlers=False).reconcile()
        assert unrelated.poll() is None, "an unrelated process was signalled"
        assert [d.action.value for d in decisions] == ["record_exit"]
        assert store.get(job_id).error_kind is ErrorKind.LOST
    finally:
        unrelated.kill()
        unrelated.wait()
        store.close()


def test_embedded_start_stop_reload_cycles_leak_nothing(tmp_path: Path) -> None:
    """50 start/reload/stop cycles of an embedded Supervisor leave threads, fds and children
    where they started."""
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    me = psutil.Process()
    base = Settings(data_dir=tmp_path / "data", heartbeat_s=0.5, lease_s=3.0, wake_poll_s=0.01)
    faster = base.model_copy(update={"heartbeat_s": 0.2, "concurrency": 3})

    def footprint() -> tuple[int, int, int]:
        # An OS thread outlives its Thread.join() by a moment: wait until the kernel agrees.
        wait_until(lambda: me.num_threads() == threading.active_count(), 5, message="threads settled")
        return me.num_threads(), me.num_fds(), len(me.children())

    try:
        sup = Supervisor(base, store, install_signal_handlers=False)
        sup.start()
        sup.stop()
        before = footprint()
        for i in range(50):
            sup = Supervisor(base, store, install_signal_handlers=False)
            sub = sup.subscribe()
            sup.start()
            if i % 10 == 0:
                job_id = sup.submit(JobSpec(command=("true",)))
                wait_until(lambda j=job_id: store.get(j).status is Status.COMPLETED, 10, message="job done")
            sup.reload(faster)
            sup.stop(timeout=10)
            sub.close()
        assert footprint() == before
    finally:
        store.close()


def test_subscription_streams_changes_sync_and_async(tmp_path: Path) -> None:
    """A host sees every state change of its jobs through subscribe(), blocking or async."""
    import asyncio

    settings = Settings(data_dir=tmp_path / "data", heartbeat_s=0.5, lease_s=3.0, wake_poll_s=0.01)
    store = SQLiteStore(tmp_path / "jobs.sqlite3")

    async def main() -> list[str]:
        sup = Supervisor(settings, store, install_signal_handlers=False)
        sub = sup.subscribe(loop=asyncio.get_running_loop())
        sync_sub = sup.subscribe()
        sup.submit(JobSpec(command=("true",)))
        runner = asyncio.create_task(sup.run_async(until_idle=True))
        seen = []
        async for change in sub:
            seen.append(change.to_status.value)
            if change.to_status is Status.COMPLETED:
                break
        await runner
        sync_seen = [c.to_status.value for c in iter(lambda: sync_sub.get(timeout=0), None)]
        assert sync_seen == seen
        return seen

    try:
        assert asyncio.run(main()) == ["preparing", "running", "completed"]
    finally:
        store.close()


def test_stop_leaving_agents_lets_the_next_start_adopt_them(tmp_path: Path) -> None:
    """A host reload (stop with leave_agents) keeps the agent running; the next supervisor
    adopts it with its original deadline and records its result."""
    settings = Settings(data_dir=tmp_path / "data", heartbeat_s=0.5, lease_s=5.0, wake_poll_s=0.01)
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        first = Supervisor(settings, store, install_signal_handlers=False)
        job_id = first.submit(JobSpec(command=(sys.executable, "-c", AGENT, "1", "0")))
        first.start()
        wait_until(lambda: store.get(job_id).status is Status.RUNNING, 10, message="running")
        pid = store.get(job_id).pid
        first.stop(leave_agents=True, timeout=10)
        assert pid is not None and psutil.pid_exists(pid)
        second = Supervisor(settings, store, install_signal_handlers=False)
        second.run(until_idle=True)
        assert [d.action.value for d in second.last_reconcile] == ["adopt"]
        job = store.get(job_id)
        assert (job.status, job.result, job.attempt) == (Status.COMPLETED, {"job": str(job_id)}, 1)
    finally:
        store.close()


RACE = textwrap.dedent("""
    import os, sys, tempfile
    sys.path.insert(0, {root!r})
    from supervisor.runner import Supervisor
    from supervisor.settings import Settings
    from supervisor.testing import MemoryStore
    from supervisor.errors import DataDirLockedError
    base = tempfile.mkdtemp()
    for round_ in range(100):
        settings = Settings(data_dir=os.path.join(base, str(round_)), wake_poll_s=0.01)
        res_r, res_w = os.pipe()
        kids = []
        for _ in range(2):
            go_r, go_w = os.pipe()      # per child: "start now", then "you may stop"
            pid = os.fork()
            if pid == 0:
                os.read(go_r, 1)
                sup = Supervisor(settings, MemoryStore(), install_signal_handlers=False)
                try:
                    sup.start()
                except DataDirLockedError as exc:
                    os.write(res_w, b"L" + str(exc).encode()[:200] + b"\\n")
                    os._exit(0)
                os.write(res_w, b"W\\n")
                os.read(go_r, 1)  # hold the lock until the loser has answered
                sup.stop()
                os._exit(0)
            kids.append((pid, go_w))
        for _, go_w in kids:
            os.write(go_w, b"x")
        answers = b""
        while answers.count(b"\\n") < 2:  # both answers may arrive in one read
            answers += os.read(res_r, 600)
        for pid, go_w in kids:
            os.write(go_w, b"x")
            os.waitpid(pid, 0)
        text = answers.decode()
        print(text.count("W"), text.count("another supervisor is running"), flush=True)
""")


def test_two_supervisors_started_at_once_on_one_data_dir(tmp_path: Path) -> None:
    """Two supervisors started at the same instant on one data dir: exactly one runs and the
    other gets a clear error — 100 times."""
    out = subprocess.run(
        [sys.executable, "-c", RACE.format(root=str(ROOT))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    rounds = [tuple(map(int, line.split())) for line in out.stdout.splitlines()]
    assert len(rounds) == 100
    assert set(rounds) == {(1, 1)}
