"""Nothing escapes: a grandchild that calls setsid and clears its environment ends with its job.

Before issue 11 such a grandchild outlived its job in 30 of 30 trials: ``killpg`` misses it
(another session), the env-tag scan misses it (no environment), and agents without limits
have no cgroup. Here it is found as the supervisor's orphan (the supervisor is the subreaper,
as the CLI's ``run`` and the stdio bridge make it), tied to its job by the descriptor it still
holds on the job's log, stopped when its attempt ends, and listed in the job's facts; after a
supervisor crash the restart finds it in the agent's cgroup. Every test reaps what it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.service import JobService
from bridge.stores.sqlite import SQLiteStore
from supervisor import procs
from supervisor.job import CancelMode
from supervisor.lifecycle import ErrorKind, JobSpec, Status
from supervisor.runner import Supervisor
from supervisor.settings import Settings
from supervisor.statefile import AgentEntry, StateFile
from tests.support import ROOT, cli, cli_env, kill_tagged, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="a child subreaper exists only on Linux")

# The escapee: a background job that calls setsid (a new session, so killpg misses it), clears
# its environment (so the env-tag scan misses it), writes its pid, and sleeps. ``{quiet}``
# redirects its output away from the job's log: then nothing but a cgroup can name its job.
ESCAPE = (
    "setsid env -i /bin/sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 300' {quiet} &"
)
WAIT = "while [ ! -e {file} ]; do sleep 0.01; done"


def agent_script(pidfile: Path, then: str, *, quiet: bool = False, escape: str = ESCAPE) -> list[str]:
    """An agent that starts the escapee, waits until the test has seen it (``<pidfile>.seen``),
    then runs ``then``."""
    escape = escape.format(pidfile=pidfile, quiet=">/dev/null 2>&1" if quiet else "")
    return ["/bin/sh", "-c", f"{escape} {WAIT.format(file=str(pidfile) + '.seen')}; {then}"]


class Escapee:
    """The escapee's pid and kernel identity, read from its pid file."""

    def __init__(self, pidfile: Path) -> None:
        """Read it while its agent waits, then let the agent go on (``agent_script``)."""
        self.pid = int(
            wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, message="escapee")
        )
        identity = procs.identity_of(self.pid)
        assert identity is not None
        self.identity = identity
        assert os.getsid(self.pid) == self.pid  # its own session: killpg cannot reach it
        wait_until(lambda: Path(f"/proc/{self.pid}/comm").read_text() == "sleep\n", 5, message="exec sleep")
        assert b"AGENT_SUPERVISOR" not in Path(f"/proc/{self.pid}/environ").read_bytes()  # no tag
        Path(str(pidfile) + ".seen").touch()

    def alive(self) -> bool:
        return procs.same_process(self.pid, self.identity)

    def kill(self) -> None:
        procs.signal_process(self.pid, self.identity, signal.SIGKILL)


@pytest.fixture
def escapees() -> Iterator[list[Escapee]]:
    """Escapees a test saw; whatever is left of them is killed afterwards (no tag to find them by)."""
    seen: list[Escapee] = []
    yield seen
    for e in seen:
        e.kill()


def facts_of(store: SQLiteStore, job_id: int, to: Status) -> dict[str, Any]:
    [event] = [e for e in store.events(job_id) if e.to_status is to and e.from_status is not to]
    return dict(event.facts)


def run_one(
    tmp_path: Path,
    spec: JobSpec,
    escapees: list[Escapee],
    *,
    during: Any = None,
    subreaper: bool = True,
    **settings: Any,
) -> tuple[SQLiteStore, int, Escapee]:
    """Run one job on an embedded supervisor (the subreaper, unless told otherwise) until it
    has settled and its escapee is gone, the supervisor still running (so no shutdown did the
    work); ``during(store, job_id)`` acts while it runs (after the escape). The escapee."""
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    sup = Supervisor(
        Settings(data_dir=tmp_path / "data", heartbeat_s=0.5, lease_s=5.0, stop_grace_s=1.0, **settings),
        store,
        install_signal_handlers=False,
        subreaper=subreaper,
    )
    job_id = sup.submit(spec)
    thread = sup.start()
    try:
        escapee = Escapee(tmp_path / "escapee.pid")
        escapees.append(escapee)
        if during is not None:
            during(store, job_id)
        wait_until(lambda: store.get(job_id).status not in (Status.PENDING, Status.PREPARING, Status.RUNNING),
                   15, message="the job settled")  # fmt: skip
        wait_until(lambda: not escapee.alive(), 5, message="the escapee gone")
        assert thread.is_alive()
    finally:
        sup.stop(drain=False, timeout=15)
        kill_tagged(tmp_path)
    return store, job_id, escapee


def test_an_escapee_of_an_agent_that_exits_normally_is_stopped_and_recorded(
    tmp_path: Path, escapees: list[Escapee]
) -> None:
    """Exit 0: the env-cleared setsid grandchild is gone once the job completes, and the job's
    facts name it (tied to the job by its descriptor on the job's log) and its SIGTERM."""
    argv = agent_script(tmp_path / "escapee.pid", "exit 0")
    store, job_id, escapee = run_one(tmp_path, JobSpec(command=tuple(argv)), escapees)
    try:
        assert store.get(job_id).status is Status.COMPLETED
        [fact] = facts_of(store, job_id, Status.COMPLETED)["escaped"]
        assert (fact["pid"], fact["name"], fact["signal"]) == (escapee.pid, "sleep", "SIGTERM")
        # what tied it to the job: a tree sample that saw it before its parent died, else the
        # descriptor it holds on the job's log (it has neither tag nor cgroup)
        assert fact["found_by"] in ("tree sample", "open file")
    finally:
        store.close()


def test_an_escapee_of_an_agent_that_times_out_is_stopped_and_recorded(
    tmp_path: Path, escapees: list[Escapee]
) -> None:
    """Timeout: SIGTERM reaches the agent's group, the escapee gets its own at the agent's
    end; both are gone and the timed-out job's facts list the escapee."""
    argv = agent_script(tmp_path / "escapee.pid", "exec sleep 300")
    spec = JobSpec(command=tuple(argv), timeout_s=1.0, max_attempts=1)
    store, job_id, escapee = run_one(tmp_path, spec, escapees)
    try:
        job = store.get(job_id)
        assert (job.status, job.error_kind) == (Status.FAILED, ErrorKind.TIMEOUT)
        escaped = facts_of(store, job_id, Status.FAILED)["escaped"]
        assert [(e["pid"], e["signal"]) for e in escaped] == [(escapee.pid, "SIGTERM")]
    finally:
        store.close()


def test_an_escapee_of_a_cancelled_agent_is_stopped_and_recorded(
    tmp_path: Path, escapees: list[Escapee]
) -> None:
    """Cancel: the cancelled job's facts list the escapee, which is gone."""
    argv = agent_script(tmp_path / "escapee.pid", "exec sleep 300")

    def cancel(store: SQLiteStore, job_id: int) -> None:
        store.request_cancel(job_id, CancelMode.CANCEL)

    store, job_id, escapee = run_one(tmp_path, JobSpec(command=tuple(argv)), escapees, during=cancel)
    try:
        assert store.get(job_id).status is Status.CANCELLED
        escaped = facts_of(store, job_id, Status.CANCELLED)["escaped"]
        assert [e["pid"] for e in escaped] == [escapee.pid]
    finally:
        store.close()


def test_without_the_subreaper_an_escapee_a_tree_sample_saw_is_stopped_and_recorded(
    tmp_path: Path, escapees: list[Escapee]
) -> None:
    """An embedded host that is not the subreaper (the default): the escapee goes to init, yet
    the agent's tree samples (one a second) saw it before its parent died, so it is stopped at
    the agent's end and recorded. The agent lives 2.5 s after the escape: two samples."""
    argv = agent_script(tmp_path / "escapee.pid", "sleep 2.5; exit 0")
    store, job_id, escapee = run_one(tmp_path, JobSpec(command=tuple(argv)), escapees, subreaper=False)
    try:
        assert store.get(job_id).status is Status.COMPLETED
        [fact] = facts_of(store, job_id, Status.COMPLETED)["escaped"]
        assert (fact["pid"], fact["found_by"], fact["signal"]) == (escapee.pid, "tree sample", "SIGTERM")
    finally:
        store.close()


def test_an_escapee_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, escapees: list[Escapee]
) -> None:
    """An escapee that ignores SIGTERM gets SIGKILL once the stop grace has passed, on a later
    tick of a loop that is idle by then (it wakes for the escalation): it never waits for it."""
    deaf = ESCAPE.replace("-c 'echo", '-c \'trap "" TERM; echo')  # an ignored TERM survives exec
    argv = agent_script(tmp_path / "escapee.pid", "exit 0", escape=deaf)
    store, job_id, escapee = run_one(tmp_path, JobSpec(command=tuple(argv)), escapees)
    try:
        assert store.get(job_id).status is Status.COMPLETED
        escaped = facts_of(store, job_id, Status.COMPLETED)["escaped"]
        assert [(e["pid"], e["signal"]) for e in escaped] == [(escapee.pid, "SIGTERM")]
    finally:
        store.close()


def test_an_orphan_no_job_can_be_named_for_is_stopped_logged_and_counted(
    tmp_path: Path, escapees: list[Escapee], caplog: pytest.LogCaptureFixture
) -> None:
    """A re-parented orphan with no tag, no cgroup, no descriptor on a job's files and never
    seen in an agent's tree (here: double-forked by this process itself while it is the
    subreaper) still does not survive: it is stopped, logged, and counted."""
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    sup = Supervisor(
        Settings(data_dir=tmp_path / "data", heartbeat_s=0.5, lease_s=5.0, stop_grace_s=1.0),
        store,
        install_signal_handlers=False,
        subreaper=True,
    )
    job_id = sup.submit(JobSpec(command=("sleep", "30")))  # while an agent runs, orphans are looked for
    sup.start()
    try:
        wait_until(lambda: store.get(job_id).status is Status.RUNNING, 10, message="running")
        pidfile = tmp_path / "escapee.pid"
        subprocess.run(["/bin/sh", "-c", ESCAPE.format(pidfile=pidfile, quiet=">/dev/null 2>&1")], check=True)
        escapee = Escapee(pidfile)
        escapees.append(escapee)
        assert int(Path(f"/proc/{escapee.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
        wait_until(lambda: not escapee.alive(), 5, message="the orphan gone")
        pool = sup._loop.pool if sup._loop is not None else None
        # counted by the loop's thread just after the SIGTERM that ended it: await, not race
        wait_until(lambda: pool is not None and pool.unattributed_escapees == 1, 5, message="counted")
        line = f"escaped process {escapee.pid} (sleep) of no job we can name: SIGTERM"
        wait_until(lambda: line in caplog.text, 5, message="logged")
        service = JobService(sup.settings, store)
        wait_until(lambda: service.health().escapees_unattributed == 1, 5, message="in health")
    finally:
        sup.stop(drain=False, timeout=15)
        store.close()


# ---------------------------------------------------------------- a supervisor crash


@pytest.mark.parametrize("ends", ["after the restart", "while no supervisor runs"])
def test_after_a_supervisor_crash_the_restart_finds_the_escapee_by_its_cgroup(
    tmp_path: Path, escapees: list[Escapee], ends: str
) -> None:
    """SIGKILL the supervisor (the CLI's ``run``) while the agent, which has limits and so a
    cgroup, runs with a quiet escapee; the restart finds the escapee in the agent's cgroup
    (neither tag nor descriptor is left), stops it when the agent's end is recorded, and the
    job's facts list it: whether the agent ends after the restart (adopted) or before it."""
    if not procs.OsProcesses().cgroups.enforcement.bases():
        pytest.skip(f"no writable cgroup here: {procs.OsProcesses().enforcement()}")
    data, release, pidfile = tmp_path / "d", tmp_path / "release", tmp_path / "escapee.pid"
    argv = agent_script(pidfile, f"while [ ! -e {release} ]; do sleep 0.01; done; exit 0", quiet=True)
    config = tmp_path / "config.toml"
    config.write_text(f"[kinds.escaping]\nargv = {json.dumps(argv)}\npids_max = 100\n")
    env = cli_env(
        data,
        AGENT_SUPERVISOR_CONFIG=str(config),
        AGENT_SUPERVISOR_HEARTBEAT_S="0.5",
        AGENT_SUPERVISOR_LEASE_S="5",
        AGENT_SUPERVISOR_STOP_GRACE_S="1",
    )
    submitted = cli(data, "submit", "--kind", "escaping", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)
    first = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        escapee = Escapee(pidfile)
        escapees.append(escapee)
        assert b"/agent-supervisor/" in Path(f"/proc/{escapee.pid}/cgroup").read_bytes()
        entry = wait_until(lambda: recorded(data, job_id), 10, message="the agent in the state file")
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.wait()
    if ends == "while no supervisor runs":
        release.touch()
        assert entry is not None
        exit_file = Path(entry.run_dir) / "exit"
        wait_until(lambda: exit_file.exists() and exit_file.read_text() == "0", 10, message="the agent's end")
    log = tmp_path / "second.log"
    with log.open("w") as err:
        second = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--until-idle"], env=env, cwd=ROOT, stderr=err
        )
        try:
            if ends == "after the restart":  # the agent runs on until it is adopted
                wait_until(lambda: "adopted (pid" in log.read_text(), 20, message="adopted")
            release.touch()
            assert second.wait(timeout=60) == 0, log.read_text()
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
    wait_until(lambda: not escapee.alive(), 5, message="the escapee gone")
    store = SQLiteStore(data / "jobs.sqlite3")
    try:
        assert store.get(job_id).status is Status.COMPLETED
        escaped = facts_of(store, job_id, Status.COMPLETED)["escaped"]
        assert [(e["pid"], e["found_by"]) for e in escaped] == [(escapee.pid, "cgroup")]
    finally:
        store.close()


def recorded(data: Path, job_id: int) -> AgentEntry | None:
    """The state file's record of ``job_id``'s agent, once it is there."""
    loaded = StateFile(data / "running-agents.json", data / "quarantine").load()
    found = [a for a in loaded.state.agents if a.job_id == job_id] if loaded.state else []
    return found[0] if found else None


# ---------------------------------------------------------------- finding our children


@pytest.mark.parametrize("kernel_lists_children", [True, False])
def test_new_children_finds_a_child_born_after_a_given_process(
    monkeypatch: pytest.MonkeyPatch, kernel_lists_children: bool
) -> None:
    """Our live child born after process ``after`` is found, with its start time and session,
    whether the kernel lists children (CONFIG_PROC_CHILDREN, emulated here) or the pids born
    since are read one by one; a process that is not our child never is."""
    from supervisor import escapees as module

    listed: list[int] = []
    monkeypatch.setattr(module, "_KERNEL_LISTS_CHILDREN", kernel_lists_children)
    monkeypatch.setattr(module, "_children_listed", lambda: list(listed) if kernel_lists_children else None)
    before = subprocess.Popen(["sleep", "30"])
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    script = "sleep 30 & echo $!; wait"
    stranger = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        assert stranger.stdout is not None
        grandchild = int(stranger.stdout.readline())
        listed += [before.pid, child.pid, stranger.pid]
        found = {pid: (start, session) for pid, start, session in module.new_children(before.pid)}
        assert child.pid in found and grandchild not in found
        identity = procs.identity_of(child.pid)
        assert identity is not None and identity.endswith(f":{found[child.pid][0]}")
        assert found[child.pid][1] == child.pid  # start_new_session: its own session
    finally:
        if grandchild is not None:
            os.kill(grandchild, signal.SIGKILL)
        for p in (before, child, stranger):
            p.kill()
            p.communicate()


def test_another_supervisors_agent_is_never_taken_for_an_escapee(tmp_path: Path) -> None:
    """A wrapper this supervisor did not start but that is our child (another supervisor's
    agent in the same process) is left alone by the orphan pass: wrappers are told by their
    command line, not only by the agents one supervisor knows."""
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    sup = Supervisor(
        Settings(data_dir=tmp_path / "data"), store, install_signal_handlers=False, subreaper=True
    )
    job_id = sup.submit(JobSpec(command=("sleep", "30")))  # while an agent runs, orphans are looked for
    sup.start()
    other = procs.spawn(
        ["sleep", "30"], env=dict(os.environ), run_dir=tmp_path / "other", log_path=tmp_path / "other.log",
        job_id=99, attempt=1, worker="another-supervisor",
    )  # fmt: skip
    try:
        wait_until(lambda: store.get(job_id).status is Status.RUNNING, 10, message="running")
        escapes = sup.processes.escapes  # type: ignore[attr-defined]
        first = escapes._next_scan
        wait_until(lambda: escapes._next_scan > first + 1.5, 10, message="two orphan passes")
        assert other.poll() is None
        assert sup._loop is not None and sup._loop.pool.unattributed_escapees == 0
    finally:
        other.kill_tree()
        wait_until(other.poll, 5, message="the other agent reaped")
        other.close()
        sup.stop(drain=False, timeout=15)
        store.close()


def test_a_child_this_process_starts_for_its_own_work_is_neither_stopped_nor_reaped(tmp_path: Path) -> None:
    """A helper started in a new session for the supervisor's own work (git for a workspace)
    and marked in ``OWN_CHILDREN`` survives the orphan passes, and its exit status stays its
    own ``Popen``'s: the subreaper's reaper leaves its zombie alone (a stolen status reads 0)."""
    from supervisor.proctable import OWN_CHILDREN

    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    sup = Supervisor(
        Settings(data_dir=tmp_path / "data"), store, install_signal_handlers=False, subreaper=True
    )
    job_id = sup.submit(JobSpec(command=("sleep", "30")))  # while an agent runs, orphans are looked for
    sup.start()
    release = tmp_path / "release"
    with OWN_CHILDREN.spawning() as mark:
        helper = subprocess.Popen(
            ["/bin/sh", "-c", f"while [ ! -e {release} ]; do sleep 0.01; done; exit 7"],
            start_new_session=True,
        )
        mark(helper.pid)
    try:
        wait_until(lambda: store.get(job_id).status is Status.RUNNING, 10, message="running")
        escapes = sup.processes.escapes  # type: ignore[attr-defined]
        first = escapes._next_scan
        wait_until(lambda: escapes._next_scan > first + 1.5, 10, message="two orphan passes")
        assert helper.poll() is None  # not stopped
        release.touch()
        stat = Path(f"/proc/{helper.pid}/stat")
        wait_until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", 5, message="helper exited")
        passed = escapes._next_scan
        wait_until(
            lambda: escapes._next_scan > passed, 5, message="another pass (the reaper runs every tick)"
        )
        assert helper.wait(timeout=5) == 7  # its own status, not a reaped-away 0
    finally:
        OWN_CHILDREN.release(helper.pid)
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        sup.stop(drain=False, timeout=15)
        store.close()
