"""The supervisor end to end with real agent processes on a real SQLite store."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from bridge.stores.sqlite import SQLiteStore
from supervisor import procs
from supervisor.attempt import UNREAD_IDENTITY
from supervisor.errors import StateFileError, StoreUnavailableError
from supervisor.lifecycle import ErrorKind, JobSpec, Status
from supervisor.runner import JobChange, Supervisor
from supervisor.settings import Settings
from supervisor.statefile import AgentEntry, StateFile
from tests.support import agent_code, kill_tagged, log_file, tagged_processes, wait_until


def make(tmp_path: Path, **overrides: object) -> Supervisor:
    fields: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "concurrency": 2,
        "stop_grace_s": 0.5,
        "heartbeat_s": 0.5,
        "lease_s": 3.0,
        "wake_poll_s": 0.02,
        "drain_timeout_s": 1.0,
        **overrides,
    }
    settings = Settings(**fields)  # type: ignore[arg-type]
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    return Supervisor(settings, store, install_signal_handlers=False)


@pytest.fixture(autouse=True)
def _reap_agents(tmp_path: Path):
    yield
    kill_tagged(tmp_path)


def test_agent_ignoring_sigterm_and_its_grandchild_are_killed_after_timeout(tmp_path: Path) -> None:
    """An agent that ignores SIGTERM, with a grandchild that does too, is gone with it within
    timeout + grace + 1 s, and the job records error_kind timeout."""
    pids_file = tmp_path / "pids"
    code = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        f"open({str(pids_file)!r} + '.tmp', 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        f"os.rename({str(pids_file)!r} + '.tmp', {str(pids_file)!r})\n"
        "time.sleep(300)\n"
    )
    sup = make(tmp_path)
    job_id = sup.submit(JobSpec(command=tuple(agent_code(code)), timeout_s=1.0, max_attempts=1))
    sup.start(until_idle=True)
    try:
        wait_until(pids_file.exists, 10, message="the agent to start its grandchild")
        started = time.monotonic()
        pids = [int(p) for p in pids_file.read_text().split()]
        procs = [psutil.Process(p) for p in pids]
        wait_until(
            lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs),
            1.0 + 0.5 + 1.0 + 0.5,
            message="agent and grandchild to be gone",
        )
        assert time.monotonic() - started <= 1.0 + 0.5 + 1.0
        sup.stop(timeout=10)
        job = sup.store.get(job_id)
        assert (job.status, job.error_kind) == (Status.FAILED, ErrorKind.TIMEOUT)
        facts = sup.store.events(job_id)[-1].facts
        assert [s["signal"] for s in facts["signals"]] == ["SIGTERM", "SIGKILL"]
    finally:
        sup.stop(drain=False, timeout=10)
        sup.store.close()


def test_crashing_agent_is_retried_with_backoff_then_fails(tmp_path: Path) -> None:
    """A crash is retried after a jittered backoff until max_attempts, then the job fails."""
    sup = make(tmp_path)
    job_id = sup.submit(JobSpec(command=("sh", "-c", "echo crash; exit 3"), max_attempts=3, backoff_s=0.2))
    sup.run(until_idle=True)
    job = sup.store.get(job_id)
    events = sup.store.events(job_id)
    try:
        assert (job.status, job.error_kind, job.exit_code, job.attempt) == (
            Status.FAILED,
            ErrorKind.EXIT_CODE,
            3,
            3,
        )
        retries = [e for e in events if e.to_status is Status.WAITING_RETRY]
        assert [e.attempt for e in retries] == [1, 2]
        for event in retries:
            assert 0 <= event.facts["retry_delay_s"] <= 0.2 * 2 ** (event.attempt - 1)
        assert "crash" in (job.output_tail or "")
    finally:
        sup.store.close()


def test_result_file_and_progress_are_recorded(tmp_path: Path) -> None:
    """The agent's result file becomes the job's result; every transition is reported."""
    changes: list[JobChange] = []
    sup = make(tmp_path)
    sup._on_change = changes.append
    code = (
        "import json, os\nprint('hi')\n"
        "json.dump({'answer': 42}, open(os.environ['AGENT_SUPERVISOR_RESULT_FILE'], 'w'))\n"
    )
    job_id = sup.submit(JobSpec(command=tuple(agent_code(code)), payload={"q": "life"}))
    sup.run(until_idle=True)
    try:
        job = sup.store.get(job_id)
        assert (job.status, job.result, job.exit_code) == (Status.COMPLETED, {"answer": 42}, 0)
        assert job.output_tail == "hi\n"
        assert [(c.from_status, c.to_status) for c in changes] == [
            (Status.PENDING, Status.PREPARING),
            (Status.PREPARING, Status.RUNNING),
            (Status.RUNNING, Status.COMPLETED),
        ]
        started = next(e for e in sup.store.events(job_id) if e.to_status is Status.RUNNING)
        assert started.facts["pid"] > 0
        assert not tagged_processes(tmp_path)
    finally:
        sup.store.close()


LEDGER_AGENT = (
    "import os, sys, time\n"
    "f = open(sys.argv[2], 'a')\n"
    "f.write(f'start {sys.argv[1]} {time.time()}\\n'); f.flush(); time.sleep(0.15)\n"
    "f.write(f'end {sys.argv[1]} {time.time()}\\n')\n"
)


def test_jobs_start_by_priority_then_age(tmp_path: Path) -> None:
    """With one slot, jobs start strictly by priority (higher first), then oldest first."""
    ledger = tmp_path / "ledger"
    sup = make(tmp_path, concurrency=1)
    for name, priority in [("a", 1), ("b", 5), ("c", 3), ("d", 5), ("e", 0), ("f", 9)]:
        sup.submit(JobSpec(command=(*agent_code(LEDGER_AGENT), name, str(ledger)), priority=priority))
    sup.run(until_idle=True)
    sup.store.close()
    starts = [line.split()[1] for line in ledger.read_text().splitlines() if line.startswith("start")]
    assert starts == ["f", "b", "d", "c", "a", "e"]


def test_one_running_job_per_concurrency_key(tmp_path: Path) -> None:
    """Two jobs of one key never overlap, while jobs of other keys use the free slots."""
    ledger = tmp_path / "ledger"
    sup = make(tmp_path, concurrency=3)
    plan = [("a", "k"), ("b", "k"), ("c", "k"), ("d", "k"), ("e", None), ("f", "other")]
    for name, key in plan:
        sup.submit(JobSpec(command=(*agent_code(LEDGER_AGENT), name, str(ledger)), concurrency_key=key))
    sup.run(until_idle=True)
    sup.store.close()
    rows = [line.split() for line in ledger.read_text().splitlines()]
    spans = {name: [float(t) for _, n, t in rows if n == name] for name, _ in plan}
    keyed = sorted(spans[n] for n in "abcd")
    for (_, end), (start, _) in itertools.pairwise(keyed):
        assert end <= start, "two jobs of one concurrency key ran at once"
    overlaps_k = any(spans["e"][0] < end and start < spans["e"][1] for start, end in keyed)
    assert overlaps_k, "the unkeyed job should have run beside the keyed ones"


def test_garbage_state_file_is_quarantined_and_the_supervisor_runs(tmp_path: Path) -> None:
    """A corrupt running-agents.json is moved to quarantine/ and the supervisor still works."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "running-agents.json").write_bytes(b"\x00garbage{{{")
    sup = make(tmp_path)
    job_id = sup.submit(JobSpec(command=("true",)))
    sup.run(until_idle=True)
    try:
        assert sup.store.get(job_id).status is Status.COMPLETED
        assert [p.name for p in (data / "quarantine").iterdir()]
        assert json.loads((data / "running-agents.json").read_text())["agents"] == []
    finally:
        sup.store.close()


def test_the_state_file_records_a_running_agent_with_its_kernel_identity(tmp_path: Path) -> None:
    """A running agent reaches running-agents.json (batched, within state_save_delay_s) with
    its real start identity, not the placeholder it has before the first save."""
    sup = make(tmp_path)
    job_id = sup.submit(JobSpec(command=("sleep", "30"), max_attempts=1))
    sup.start()
    statefile = StateFile(tmp_path / "data" / "running-agents.json", tmp_path / "q")
    try:

        def recorded() -> AgentEntry | None:
            state = statefile.load().state
            return state.agent(job_id) if state else None

        entry = wait_until(recorded, 10, message="the agent in the state file")
        assert entry.start_identity != UNREAD_IDENTITY
        assert entry.start_identity == procs.identity_of(entry.pid)
        assert entry.pid == sup.store.get(job_id).pid
    finally:
        sup.stop(drain=False, timeout=10)
        statefile.close()
        sup.store.close()


def test_an_unwritable_state_file_neither_stops_agents_nor_spins_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every save fails (a full disk): agents still run and are recorded in the store, and
    the failed save is retried about once a second, not on every tick."""
    attempts: list[float] = []

    def failing_save(self: StateFile, state: object, *, durable: bool = True) -> None:
        attempts.append(time.monotonic())
        raise StateFileError("cannot write running-agents.json: No space left on device")

    monkeypatch.setattr(StateFile, "save", failing_save)
    sup = make(tmp_path)
    ids = [sup.submit(JobSpec(command=("sleep", "1.5"))) for _ in range(2)]
    started = time.monotonic()
    sup.run(until_idle=True)
    elapsed = time.monotonic() - started
    try:
        assert all(sup.store.get(i).status is Status.COMPLETED for i in ids)
        # the durable save at start, then at most one retry per second, plus the one at close
        assert len(attempts) <= 2 + elapsed / 1.0 + 1, (len(attempts), elapsed)
    finally:
        sup.store.close()


class _FlakyStore:
    """A SQLite store that can be taken down: while down, every call the loop makes fails as
    a dead remote store would, and ``finish`` first spends a (short) retry budget."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.down = False
        self.finishes_while_down = 0
        self.probes_while_down = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in ("heartbeat", "claim", "reap_stale", "mark_running", "counts"):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreUnavailableError(f"{name}: connection refused")
            return method(*args, **kwargs)

        return call

    def now(self) -> float:
        if self.down:
            self.probes_while_down += 1
            raise StoreUnavailableError("now: connection refused")
        return self.inner.now()

    def finish(self, *args: Any) -> Any:
        if self.down:
            self.finishes_while_down += 1
            time.sleep(0.3)  # the retry budget a dead remote store costs
            raise StoreUnavailableError("finish: connection refused")
        return self.inner.finish(*args)


def test_outbox_probes_a_dead_store_cheaply_and_replays_at_the_first_good_heartbeat(tmp_path: Path) -> None:
    """While the store is down, the outbox is retried with a quick probe, not with another
    finish (which would hold the loop for its whole retry budget); the first heartbeat that
    gets through replays it at once instead of after the backoff."""
    sup = make(tmp_path, heartbeat_s=0.2)
    flaky = _FlakyStore(sup.store)  # type: ignore[arg-type]
    sup.store = flaky  # type: ignore[assignment]
    short = sup.submit(JobSpec(command=("sleep", "0.5"), max_attempts=1))
    long = sup.submit(JobSpec(command=("sleep", "30"), max_attempts=1))
    sup.start()
    try:
        wait_until(lambda: sup.running_jobs == [short, long], 10, message="both agents running")
        flaky.down = True
        wait_until(lambda: sup.outbox_depth == 1, 10, message="the short job's outcome kept")
        wait_until(lambda: flaky.probes_while_down >= 3, 20, message="three replay probes")
        assert flaky.finishes_while_down <= 1  # at most the first record, never a replay
        flaky.down = False
        # the backoff after three failed probes is 2-4 s; a heartbeat comes every 0.2 s
        wait_until(lambda: sup.outbox_depth == 0, 1.5, message="the outbox replayed at the first beat")
        assert flaky.inner.get(short).status is Status.COMPLETED
    finally:
        flaky.down = False
        sup.stop(drain=False, timeout=10)
        flaky.inner.close()


def test_unknown_kind_and_missing_command_fail_without_retry(tmp_path: Path) -> None:
    """A job whose command does not exist fails as invalid at once (no pointless retries)."""
    sup = make(tmp_path)
    missing = sup.submit(JobSpec(command=("/nonexistent/agent",), max_attempts=3))
    sup.run(until_idle=True)
    try:
        job = sup.store.get(missing)
        assert (job.status, job.error_kind, job.attempt) == (Status.FAILED, ErrorKind.INVALID, 1)
        assert "command not found" in (job.error or "")
    finally:
        sup.store.close()


def test_no_sigpipe_needed_output_goes_to_a_file(tmp_path: Path) -> None:
    """Agent output is written to the per-attempt log file, not through the supervisor."""
    sup = make(tmp_path)
    job_id = sup.submit(JobSpec(command=(sys.executable, "-c", "print('x' * 10)")))
    sup.run(until_idle=True)
    try:
        log = log_file(tmp_path / "data", job_id)
        assert log.read_text() == "x" * 10 + "\n"
        assert log.stat().st_mode & 0o077 == 0
    finally:
        sup.store.close()


def test_per_kind_max_concurrent_is_respected(tmp_path: Path) -> None:
    """A kind with max_concurrent 1 never runs two agents at once, even with free slots."""
    ledger = tmp_path / "ledger"
    code = (
        "import sys, time\n"
        f"f = open({str(ledger)!r}, 'a')\n"
        "f.write(f'{time.time()} 1\\n'); f.flush(); time.sleep(0.1); f.write(f'{time.time()} -1\\n')\n"
    )
    template = code.replace("{", "{{").replace("}", "}}")  # argv templates escape literal braces
    sup = make(
        tmp_path,
        concurrency=4,
        kinds={"solo": {"argv": [sys.executable, "-c", template], "max_concurrent": 1}},
    )
    for _ in range(4):
        sup.submit(JobSpec(kind="solo"))
    sup.run(until_idle=True)
    sup.store.close()
    running = peak = 0
    for _, delta in sorted(tuple(map(float, line.split())) for line in ledger.read_text().splitlines()):
        running += int(delta)
        peak = max(peak, running)
    assert peak == 1
    assert len(ledger.read_text().splitlines()) == 8


def test_raw_command_from_a_shared_store_is_refused(tmp_path: Path) -> None:
    """A raw command row in a shared (remote) store fails as invalid instead of running."""
    from supervisor.testing import MemoryStore

    marker = tmp_path / "ran"
    store = MemoryStore(shared=True)
    [job_id] = store.enqueue([JobSpec(command=("touch", str(marker)))])
    settings = Settings(data_dir=tmp_path / "data", wake_poll_s=0.02, heartbeat_s=0.5, lease_s=3.0)
    Supervisor(settings, store, install_signal_handlers=False).run(until_idle=True)
    job = store.get(job_id)
    assert (job.status, job.error_kind) == (Status.FAILED, ErrorKind.INVALID)
    assert "shared store" in (job.error or "")
    assert not marker.exists()
