"""The SQLite store under real concurrency: several processes and threads on one file, the
``changed()`` hint across connections, and the failures of the file itself (corrupt, locked,
too new, wrong mode). Every child process is reaped in ``finally``."""

from __future__ import annotations

import json
import os
import queue
import random
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from bridge.stores.sqlite import SQLiteStore
from supervisor.errors import StoreError, StoreUnavailableError
from supervisor.lifecycle import JobSpec, Outcome, Status
from tests.support import kill_tagged, wait_until

ROOT = Path(__file__).resolve().parents[2]

# One worker process: wait at the gate so that all workers start together, then claim a few
# jobs at a time, hold them (so their keys stay live across claims), finish a random share of
# what it holds, until the queue is drained. Prints the ids it claimed as one JSON line.
WORKER = r"""
import json, os, random, sys, time
from bridge.stores.sqlite import SQLiteStore
from supervisor.lifecycle import Outcome

path, name, seed, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
store = SQLiteStore(path, busy_timeout_s=30)
open(gate + "." + name, "w").close()  # ready: imported and connected
deadline = time.monotonic() + 60
while not os.path.exists(gate):  # start the race together
    if time.monotonic() > deadline:
        sys.exit("worker " + name + " never got the start signal")
    time.sleep(0.001)
claimed, held = [], []
while time.monotonic() < deadline:
    jobs = store.claim(name, rng.randint(1, 4), lease_s=600)
    for job in jobs:
        held.append(store.mark_running(job.id, name, job.attempt, os.getpid()))
    claimed += [job.id for job in jobs]
    done = len(held) if not jobs else rng.randint(0, len(held))
    for job in held[:done]:
        store.finish(job.id, name, job.attempt, Outcome(exit_code=0, result=name))
    held = held[done:]
    time.sleep(rng.random() * 0.002)  # the agents' work: SQLite's lock is not fair to waiters
    if not jobs and not held:
        counts = store.counts().by_status
        if counts["pending"] == 0 and counts["waiting_retry"] == 0:
            break
        time.sleep(0.002)  # the rest waits for keys other workers hold: let them finish
else:
    sys.exit("worker " + name + " ran out of time")
store.close()
print(json.dumps(claimed))
"""


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reap(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_processes_racing_to_claim_take_every_job_exactly_once(tmp_path: Path) -> None:
    """Four processes draining 300 jobs each claim every job once, and no two jobs of one
    concurrency key are ever live at the same time."""
    db = tmp_path / "jobs.sqlite3"
    rng = random.Random(11)
    keys = [f"key-{i}" for i in range(20)]
    specs = [
        JobSpec(kind="echo", concurrency_key=(keys[i % 20] if i % 3 else None), priority=rng.randint(0, 3))
        for i in range(300)
    ]
    with_key = {i for i, s in enumerate(specs) if s.concurrency_key}
    assert len(with_key) == 200
    store = SQLiteStore(db)
    try:
        ids = store.enqueue(specs)
    finally:
        store.close()

    procs: list[subprocess.Popen[str]] = []
    try:
        gate = tmp_path / "go"
        procs = [_spawn(WORKER, str(db), f"w{n}", str(n), str(gate)) for n in range(4)]
        ready = [Path(f"{gate}.w{n}") for n in range(4)]
        wait_until(lambda: all(p.exists() for p in ready), 30, message="workers ready")
        gate.touch()
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        _reap(procs)

    claimed = Counter(job_id for out in outputs for job_id in out)
    assert sorted(claimed) == sorted(ids)
    assert set(claimed.values()) == {1}, "a job was claimed twice"
    per_worker = [len(out) for out in outputs]
    assert sum(1 for n in per_worker if n) >= 3, f"hardly a race: claims per worker {per_worker}"

    conn = sqlite3.connect(db)
    try:
        key_of = dict(conn.execute("select id, concurrency_key from jobs"))
        statuses = Counter(s for (s,) in conn.execute("select status from jobs where attempt = 1"))
        assert statuses == {"completed": 300}
        live: Counter[str] = Counter()
        transitions = conn.execute("select job_id, from_status, to_status from job_events order by seq")
        for job_id, src, dst in transitions:
            key = key_of[job_id]
            if key is None or src == dst:
                continue
            if dst == "preparing":
                live[key] += 1
                assert live[key] == 1, f"two live jobs of {key} at once (job {job_id})"
            elif src in ("preparing", "running") and dst != "running":
                live[key] -= 1
    finally:
        conn.close()


def test_threads_sharing_one_store_claim_each_job_once(tmp_path: Path) -> None:
    """Threads that share one store object (one connection) never claim a job twice."""
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        ids = store.enqueue([JobSpec(kind="echo") for _ in range(120)])
        claimed: list[int] = []
        errors: list[BaseException] = []

        def drain(name: str) -> None:
            try:
                while jobs := store.claim(name, 3, lease_s=60):
                    for job in jobs:
                        store.finish(job.id, name, job.attempt, Outcome())
                    claimed.extend(job.id for job in jobs)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=drain, args=(f"t{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert sorted(claimed) == ids
    finally:
        store.close()


def test_watch_hears_commits_of_another_store_and_another_process(tmp_path: Path) -> None:
    """A watcher is told of another store object's enqueue and of another process's, and not
    of its own store object's writes (its supervisor knows of those already)."""
    db = tmp_path / "jobs.sqlite3"
    watcher, writer = SQLiteStore(db), SQLiteStore(db)
    hints: queue.Queue[float | None] = queue.Queue()
    watch = watcher.watch(hints.put)
    procs: list[subprocess.Popen[str]] = []
    try:
        watcher.enqueue([JobSpec(kind="echo")])
        writer.enqueue([JobSpec(kind="echo")])
        assert hints.get(timeout=5) is None
        script = (
            "import sys; from bridge.stores.sqlite import SQLiteStore;"
            "from supervisor.lifecycle import JobSpec;"
            "s = SQLiteStore(sys.argv[1]); s.enqueue([JobSpec(kind='echo')]); s.close()"
        )
        procs.append(_spawn(script, str(db)))
        _, err = procs[0].communicate(timeout=30)
        assert procs[0].returncode == 0, err
        assert hints.get(timeout=5) is None
        assert hints.empty()  # the watcher's own enqueue sent nothing to itself
        assert len(watcher.list()) == 3
    finally:
        _reap(procs)
        watch.close()
        watcher.close()
        writer.close()
    assert [p.name for p in (tmp_path / "jobs.sqlite3.wake").iterdir()] == []  # its FIFO is gone


def test_a_dead_watchers_fifo_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    """A FIFO left by a watcher that died (nobody reads it) is removed when a writer finds it."""
    db = tmp_path / "jobs.sqlite3"
    store = SQLiteStore(db)
    wake_dir = tmp_path / "jobs.sqlite3.wake"
    wake_dir.mkdir(mode=0o700)
    os.mkfifo(wake_dir / "999999-dead.fifo", 0o600)
    try:
        store.enqueue([JobSpec(kind="echo")])
    finally:
        store.close()
    assert list(wake_dir.iterdir()) == []


def test_a_corrupt_file_is_a_one_line_store_error(tmp_path: Path) -> None:
    """Garbage in the database file gives StoreError naming the file as corrupt, not sqlite3's."""
    db = tmp_path / "jobs.sqlite3"
    db.write_bytes(b"this is not a database, just bytes\n" * 200)
    with pytest.raises(StoreError) as info:
        SQLiteStore(db)
    message = str(info.value)
    assert not isinstance(info.value, StoreUnavailableError)
    assert not isinstance(info.value, sqlite3.Error)
    assert "\n" not in message
    assert str(db) in message
    assert "corrupt" in message
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_damaged_pages_are_reported_as_corrupt(tmp_path: Path) -> None:
    """A valid header over damaged pages gives StoreError 'corrupt' on opening or when the
    rows are read (whichever first touches a damaged page: the schema spans several pages)."""
    db = tmp_path / "jobs.sqlite3"
    store = SQLiteStore(db)
    store.enqueue([JobSpec(kind="echo", payload={"pad": "x" * 500}) for _ in range(50)])
    store.close()  # the last connection checkpoints the WAL into the file
    data = bytearray(db.read_bytes())
    assert len(data) > 8192
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size : len(data)] = b"\xa5" * (len(data) - page_size)  # every page but the header's
    db.write_bytes(bytes(data))

    def open_and_list() -> None:
        reopened = SQLiteStore(db)  # the header page is intact
        try:
            reopened.list()
        finally:
            reopened.close()

    with pytest.raises(StoreError, match="corrupt") as info:
        open_and_list()
    assert "\n" not in str(info.value)
    assert not isinstance(info.value, StoreUnavailableError)


def test_a_locked_file_is_store_unavailable(tmp_path: Path) -> None:
    """A write that waits longer than busy_timeout_s for another connection's lock raises the
    retryable StoreUnavailableError, and succeeds once the lock is released."""
    db = tmp_path / "jobs.sqlite3"
    store = SQLiteStore(db, busy_timeout_s=0.05)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("begin immediate")
        with pytest.raises(StoreUnavailableError) as info:
            store.enqueue([JobSpec(kind="echo")])
        assert "\n" not in str(info.value)
        assert str(db) in str(info.value)
        other.execute("rollback")
        assert len(store.enqueue([JobSpec(kind="echo")])) == 1
        assert [job.status for job in store.list()] == [Status.PENDING]
    finally:
        other.close()
        store.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file whose schema version is newer than this code is refused with StoreError."""
    db = tmp_path / "jobs.sqlite3"
    SQLiteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("pragma user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(db)


def test_reopening_keeps_the_jobs(tmp_path: Path) -> None:
    """Jobs written by one store object are there for the next one on the same file."""
    db = tmp_path / "jobs.sqlite3"
    first = SQLiteStore(db)
    [job_id] = first.enqueue([JobSpec(kind="echo", payload={"n": 1})])
    first.close()
    second = SQLiteStore(db)
    try:
        assert second.get(job_id).payload == {"n": 1}
        assert second.events(job_id)[0].to_status is Status.PENDING
    finally:
        second.close()


def test_the_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """The database (and its WAL) is created 0600 in a new 0700 directory even under umask 000."""
    db = tmp_path / "data" / "deeper" / "jobs.sqlite3"
    old = os.umask(0)
    try:
        store = SQLiteStore(db)
    finally:
        os.umask(old)
    try:
        store.enqueue([JobSpec(kind="echo")])
        assert db.stat().st_mode & 0o777 == 0o600
        assert db.parent.stat().st_mode & 0o777 == 0o700
        # SQLite gives the -wal and -shm files the database file's mode.
        for sibling in (Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert sibling.stat().st_mode & 0o777 == 0o600, sibling
    finally:
        store.close()


def test_memory_database_works_for_quick_tests() -> None:
    """path=":memory:" gives a working, private, throwaway store."""
    store = SQLiteStore(":memory:")
    try:
        [job_id] = store.enqueue([JobSpec(kind="echo")])
        assert store.claim("w", 1, lease_s=5)[0].id == job_id
    finally:
        store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(job_id)


def test_one_damaged_row_is_set_aside_and_every_other_job_runs(tmp_path: Path) -> None:
    """A row whose text is not UTF-8 (a damaged file) is moved to jobs_quarantine and
    logged; list keeps working and a supervisor runs every other job."""
    from supervisor.runner import Supervisor
    from supervisor.settings import Settings

    db = tmp_path / "jobs.sqlite3"
    store = SQLiteStore(db)
    ids = store.enqueue([JobSpec(command=(sys.executable, "-c", "pass")) for _ in range(5)])
    store.close()
    raw = sqlite3.connect(db)
    raw.execute("update jobs set command = cast(x'5b22ff22fe5d' as text) where id = ?", (ids[2],))
    raw.commit()
    raw.close()
    store = SQLiteStore(db)
    try:
        assert sorted(j.id for j in store.list()) == sorted(i for i in ids if i != ids[2])  # read: skipped
        settings = Settings(data_dir=tmp_path / "data")
        Supervisor(settings, store, install_signal_handlers=False).run(until_idle=True)
        done = {j.id: j.status.value for j in store.list()}
        assert done == {i: "completed" for i in ids if i != ids[2]}
        with pytest.raises(StoreError, match="quarantine"):
            store.get(ids[2])
    finally:
        store.close()
        kill_tagged(tmp_path)
    raw = sqlite3.connect(db)
    try:
        [(reason,)] = raw.execute("select reason from jobs_quarantine where id = ?", (ids[2],)).fetchall()
    finally:
        raw.close()
    assert "not UTF-8" in reason
