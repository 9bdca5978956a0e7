"""Throughput: 1,000 jobs of ``/bin/true`` at concurrency 2 on a fresh SQLite store, through the
real ``supervisor.runner.Supervisor`` (``run(until_idle=True)``: ``loop.Loop`` driving
``pool.AgentPool``, ``sync.OutcomeSync`` and the store, the OS through ``procs.OsProcesses``),
as a ratio to a bare claim → spawn → finish loop over the
same ``SQLiteStore`` API measured in the same run (issue 2, "Speed": goal ratio >= 0.5).

    python scripts/bench_throughput.py [--jobs 1000] [--runs 5] [--no-profile]
                                       [--background-procs N]

Each run takes a fresh temp dir and a fresh store for each contender, and the contenders
alternate (bare, supervisor, bare, ...) so that drift of the machine hits both alike. Figures
are medians over the runs. The supervisor's time includes opening its data dir (lock,
reconciliation scan) and closing it: that is what ``run --until-idle`` costs a user.

References (all on a fresh store, same job specs, enqueued before the clock starts):
- bare loop (the goal's denominator): claim 1 → ``os.posix_spawn('/bin/true')`` → ``waitpid``
  → ``finish(Outcome(exit_code=...))``; one job at a time, no wrapper, no log file.
- bare loop x2 (context only): the same with up to 2 agents in flight, ``os.wait()`` for any.

Then one instrumented run (wall time per engine operation, low overhead: each tick's parts —
exits collected, outcomes recorded, claims and spawns, state-file saves, status.json — and the
retention thread beside the loop) and one cProfile run (top 15 by cumulative time; profiling
slows it down, so read it as shares, not speed).

``--background-procs N`` first starts N idle ``sleep`` processes of this user (a desktop's
process table): costs that grow with the number of processes show up.

Own CPU (this process's user + system time per job, agents excluded) is printed next to jobs/s:
it is less sensitive than wall time to other load on a shared machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common as bc  # puts the repo root on sys.path

from bridge.stores.sqlite import SQLiteStore
from supervisor import procs
from supervisor.lifecycle import JobSpec, Outcome, Status
from supervisor.runner import Supervisor, resolve_spec
from supervisor.settings import Settings, load_settings
from supervisor.statefile import StateFile

TRUE = "/bin/true"
WORKER = "bench-bare"


def _specs(settings: Settings, n: int) -> list[JobSpec]:
    # The same specs as `agent-supervisor submit -- /bin/true` (defaults filled in).
    return [resolve_spec(JobSpec(command=(TRUE,)), settings)] * n


def _settings(tmp: Path, db: Path) -> Settings:
    with bc.isolated_settings_env(tmp / "data"):
        # Everything at its default but the store file; concurrency 2 is also the default.
        return load_settings(data_dir=tmp / "data", store=f"sqlite://{db}", concurrency=2)


class _Meter:
    """Wall time and this process's own CPU time of one timed section. Dirty pages of the
    previous contender are flushed first (os.sync), so that its writeback is not charged to
    the next one."""

    last_cpu_s = 0.0  # own CPU (user + system) of the last section

    def __enter__(self) -> _Meter:
        os.sync()
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._t0
        _Meter.last_cpu_s = time.process_time() - self._cpu0


def _check_all_completed(store: SQLiteStore, n: int, who: str) -> None:
    counts = store.counts().by_status
    if counts[Status.COMPLETED] != n:
        raise SystemExit(f"{who}: expected {n} completed jobs, got {dict(counts)}")


# ---------------------------------------------------------------- contenders


def bare_loop(tmp: Path, n: int, settings: Settings) -> float:
    """claim 1 → posix_spawn → waitpid → finish, until the queue is empty; seconds taken."""
    store = SQLiteStore(tmp / "bare.sqlite3")
    try:
        store.enqueue(_specs(settings, n))
        env = dict(os.environ)
        with _Meter() as m:
            while jobs := store.claim(WORKER, 1, lease_s=settings.lease_s):
                job = jobs[0]
                pid = os.posix_spawn(TRUE, [TRUE], env)
                _, status = os.waitpid(pid, 0)
                outcome = Outcome(exit_code=os.waitstatus_to_exitcode(status))
                store.finish(job.id, WORKER, job.attempt, outcome)
        _check_all_completed(store, n, "bare loop")
        return m.elapsed
    finally:
        store.close()


def bare_loop_x2(tmp: Path, n: int, settings: Settings) -> float:
    """The same with up to 2 agents in flight (claim the free slots, wait for any exit)."""
    store = SQLiteStore(tmp / "bare2.sqlite3")
    try:
        store.enqueue(_specs(settings, n))
        env = dict(os.environ)
        running: dict[int, Any] = {}
        with _Meter() as m:
            while True:
                free = 2 - len(running)
                jobs = store.claim(WORKER, free, lease_s=settings.lease_s) if free else []
                for job in jobs:
                    running[os.posix_spawn(TRUE, [TRUE], env)] = job
                if not running:
                    break
                pid, status = os.wait()
                job = running.pop(pid)
                outcome = Outcome(exit_code=os.waitstatus_to_exitcode(status))
                store.finish(job.id, WORKER, job.attempt, outcome)
        _check_all_completed(store, n, "bare loop x2")
        return m.elapsed
    finally:
        store.close()


def supervised(tmp: Path, n: int, *, wrap: Callable[[Callable[[], None]], None] | None = None) -> float:
    """Supervisor.run(until_idle=True) over n pre-enqueued jobs; seconds taken."""
    db = tmp / "sup.sqlite3"
    settings = _settings(tmp, db)
    store = SQLiteStore(db, backoff_cap_s=settings.backoff_cap_s)
    try:
        store.enqueue(_specs(settings, n))
        sup = Supervisor(settings, store, install_signal_handlers=False)

        def run() -> None:
            sup.run(until_idle=True)

        with _Meter() as m:
            if wrap is None:
                run()
            else:
                wrap(run)
        _check_all_completed(store, n, "supervisor")
        return m.elapsed
    finally:
        store.close()


# ---------------------------------------------------------------- instrumentation


class _Timers:
    """Wall time per operation, by wrapping methods for one run (restored afterwards)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> bool:
        """Time ``owner.attr``; False (and nothing done) if the engine has no such thing."""
        if owner is None:
            return False
        original = getattr(owner, attr, None)
        if original is None or not callable(original):
            return False
        own = not isinstance(owner, type) or attr in owner.__dict__
        raw = owner.__dict__[attr] if own and isinstance(owner, type) else original
        # classmethod/staticmethod: time the function inside, re-wrap it the same way.
        kind = type(raw) if isinstance(raw, classmethod | staticmethod) else None
        inner = raw.__func__ if kind is not None else raw

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.total[label] += time.perf_counter() - t0
                self.calls[label] += 1

        setattr(owner, attr, kind(timed) if kind is not None else timed)
        self._undo.append(lambda: setattr(owner, attr, raw) if own else delattr(owner, attr))
        return True

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def _optional(module: str, attr: str | None = None) -> Any:
    """A module (or one of its classes) the engine may or may not have (it is changing)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return mod if attr is None else getattr(mod, attr, None)


def _probes() -> list[tuple[Any, str, str]]:
    """(owner, attribute, label); indentation shows nesting. The loop is ``loop.Loop`` driving
    ``pool.AgentPool`` (agents), ``sync.OutcomeSync`` (outcomes to the store) and the store; the
    OS is reached through ``procs.OsProcesses``. A probe whose target the engine no longer has
    is listed as missing, never silently dropped."""
    from bridge.stores import sqlite as sqlite_mod
    from supervisor import attempt, loop, pool, retention, status, sync, waiting

    setup = _optional("supervisor.limits", "Setup")
    held_lock = _optional("supervisor.statefile", "_HeldFileLock")
    return [
        (loop.Loop, "run", "Loop.run (total)"),
        (waiting.Waiter, "wait", "  Waiter.wait (blocked until an exit, a hint or a timeout)"),
        (loop.Loop, "tick", "  Loop.tick"),
        (pool.AgentPool, "collect_exits", "    pool.collect_exits"),
        (procs.AgentProcess, "poll", "      AgentProcess.poll (reap)"),
        (pool, "exit_outcome", "      attempt.exit_outcome (exit file, result, tail)"),
        (procs.AgentProcess, "close", "      AgentProcess.close"),
        (sync.OutcomeSync, "record", "    sync.record (outcome to the store)"),
        (SQLiteStore, "finish", "      store.finish"),
        (sqlite_mod, "notify", "        wakeup.notify (FIFO hints to other watchers)"),
        (pool.AgentPool, "watch_output", "    pool.watch_output (log caps)"),
        (pool.AgentPool, "act_on_stops", "    pool.act_on_stops (plan_stops)"),
        (loop.Loop, "_heartbeat", "    heartbeat"),
        (SQLiteStore, "heartbeat", "      store.heartbeat"),
        (sync.OutcomeSync, "replay", "    outbox replay"),
        (pool.AgentPool, "reap_strays", "    pool.reap_strays"),
        (procs.OsProcesses, "scan_tagged", "      /proc scan (scan_tagged)"),
        (pool.AgentPool, "sample", "    pool.sample (tree stats)"),
        (loop.Loop, "_reap", "    reap"),
        (SQLiteStore, "reap_stale", "      store.reap_stale"),
        (loop.Loop, "_claim", "    claim + launch"),
        (loop.Loop, "_admit", "      admission"),
        (procs.OsProcesses, "memory", "        memory() (/proc/meminfo)"),
        (SQLiteStore, "claim", "      store.claim"),
        (SQLiteStore, "next_due", "      store.next_due"),
        (pool.AgentPool, "launch", "      pool.launch"),
        (pool, "prepare", "        attempt.prepare (run dir, payload, env)"),
        (procs.OsProcesses, "spawn", "        OsProcesses.spawn (posix_spawn of the sh wrapper)"),
        (setup, "prepare", "          limits Setup.prepare (cgroup create)"),
        (setup, "start", "          limits Setup.start (join cgroup, handshake)"),
        (loop.Loop, "_mark_running", "      mark running"),
        (SQLiteStore, "mark_running", "        store.mark_running"),
        (loop.Loop, "_idle", "    until-idle check"),
        (SQLiteStore, "counts", "      store.counts"),
        (loop.Loop, "_save_state", "    state file save (batched: state_save_delay_s)"),
        (StateFile, "save", "      StateFile.save"),
        (held_lock, "acquire", "        lock acquire (flock on a held fd)"),
        (procs, "identity_of", "        identity_of (/proc/<pid>/stat of new agents)"),
        (StateFile, "_save", "        encode, temp file, rename (fsync only on the first)"),
        (os, "fsync", "          os.fsync (file + dir)"),
        (loop.Loop, "_write_status", "    status.json (when due)"),
        (loop, "disk_use", "      disk_use (statvfs)"),
        (status, "write_private", "      write status.json"),
        (retention.Retention, "sweep", "retention sweeps (their own thread, not in the loop)"),
        (attempt, "read_result", "(attempt.read_result, inside exit_outcome)"),
    ]


def instrumented_run(tmp: Path, n: int) -> tuple[float, list[tuple[str, int, float, float]], list[str]]:
    timers = _Timers()
    probes, missing = [], []
    for owner, attr, label in _probes():
        if owner is not None and timers.wrap(owner, attr, label):
            probes.append(label)
        else:
            missing.append(f"{getattr(owner, '__name__', owner)}.{attr} ({label.strip()})")
    try:
        elapsed = supervised(tmp, n)
    finally:
        timers.restore()
    rows = [
        (label, timers.calls[label], timers.total[label] / n * 1e3, 100 * timers.total[label] / elapsed)
        for label in probes
    ]
    return elapsed, rows, missing


def profiled_run(tmp: Path, n: int, top: int) -> tuple[float, str]:
    prof = cProfile.Profile()
    elapsed = supervised(tmp, n, wrap=lambda run: prof.runcall(run))
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    return elapsed, out.getvalue()


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per contender (median reported)")
    ap.add_argument("--no-profile", action="store_true", help="skip the instrumented and cProfile runs")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument(
        "--background-procs",
        type=int,
        default=0,
        help="start N idle `sleep` processes first (a desktop has hundreds): costs that scale with "
        "the process table show up",
    )
    args = ap.parse_args()
    n = args.jobs

    times: dict[str, list[float]] = {"bare": [], "bare_x2": [], "supervisor": []}
    cpu: dict[str, list[float]] = {"bare": [], "bare_x2": [], "supervisor": []}
    ratios: list[float] = []
    loads: list[float] = []
    root = Path(tempfile.mkdtemp(prefix="as-bench-tp-"))
    background: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(args.background_procs):  # a desktop's process table, all of this user
            background.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL))
        if background:
            time.sleep(0.5)
        for i in range(args.runs):
            tmp = root / f"run{i}"
            tmp.mkdir()
            settings = _settings(tmp, tmp / "unused.sqlite3")
            tb = bare_loop(tmp, n, settings)
            cpu["bare"].append(_Meter.last_cpu_s)
            ts = supervised(tmp, n)
            cpu["supervisor"].append(_Meter.last_cpu_s)
            t2 = bare_loop_x2(tmp, n, settings)
            cpu["bare_x2"].append(_Meter.last_cpu_s)
            times["bare"].append(tb)
            times["supervisor"].append(ts)
            times["bare_x2"].append(t2)
            ratios.append(tb / ts)
            loads.append(os.getloadavg()[0])
            print(
                f"run {i + 1}/{args.runs}: bare {n / tb:7.1f} jobs/s   supervisor {n / ts:7.1f} jobs/s"
                f"   ratio {tb / ts:.3f}   (bare x2 {n / t2:7.1f} jobs/s)   load {loads[-1]:.2f}",
                flush=True,
            )
            shutil.rmtree(tmp, ignore_errors=True)

        rate = {k: n / bc.median(v) for k, v in times.items()}
        ratio_of_medians = rate["supervisor"] / rate["bare"]
        print()
        print(f"machine: {bc.machine_line()}")
        extra = f"; {args.background_procs} idle background processes" if args.background_procs else ""
        print(
            f"{n} jobs of {TRUE}, concurrency 2, fresh SQLite store per contender; median of {args.runs} runs"
            + extra
        )
        print(
            bc.table(
                ["contender", "jobs/s (median)", "ms/job", "own CPU ms/job", "min jobs/s", "max jobs/s"],
                [
                    (
                        name,
                        rate[key],
                        1e3 / rate[key],
                        1e3 * bc.median(cpu[key]) / n,
                        n / max(times[key]),
                        n / min(times[key]),
                    )
                    for name, key in (
                        ("bare claim→spawn→finish loop", "bare"),
                        ("Supervisor.run(until_idle)", "supervisor"),
                        ("bare loop, 2 in flight (context)", "bare_x2"),
                    )
                ],
            )
        )
        print(
            f"ratio supervisor/bare: {ratio_of_medians:.3f} (median of per-run ratios "
            f"{bc.median(ratios):.3f}; goal >= 0.5; a Postgres queue ~0.32, a Redis one ~0.11)"
        )
        best_ratio = min(times["bare"]) / min(times["supervisor"])
        print(f"ratio of the best runs (noise only slows runs down): {best_ratio:.3f}")
        print(f"ratio supervisor/bare x2: {rate['supervisor'] / rate['bare_x2']:.3f} (context)")
        print(
            "own CPU = this process's CPU time (the loop itself, not the agents): less sensitive to "
            "other load on the machine than jobs/s"
        )

        breakdown: list[dict[str, Any]] = []
        if not args.no_profile:
            tmp = root / "instrumented"
            tmp.mkdir()
            elapsed, rows, missing = instrumented_run(tmp, n)
            print()
            print(f"where the supervisor's wall time goes (one instrumented run, {n / elapsed:.1f} jobs/s):")
            print(bc.table(["operation", "calls", "ms/job", "% of wall"], rows))
            if missing:
                print(f"(probes whose target the engine no longer has: {', '.join(missing)})")
            breakdown = [
                {"op": label.strip(), "calls": calls, "ms_per_job": round(ms, 4), "pct_wall": round(pct, 1)}
                for label, calls, ms, pct in rows
            ]
            tmp = root / "profiled"
            tmp.mkdir()
            elapsed, text = profiled_run(tmp, n, args.top)
            print()
            print(
                f"cProfile of one supervisor run (slowed by profiling: {n / elapsed:.1f} jobs/s), "
                f"top {args.top} by cumulative time:"
            )
            print(text.strip())
    finally:
        for proc in background:
            proc.kill()
        for proc in background:
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)

    print()
    bc.emit_json(
        {
            "benchmark": "throughput",
            "jobs": n,
            "concurrency": 2,
            "runs": args.runs,
            "background_procs": args.background_procs,
            "statistic": "median",
            "bare_jobs_per_s": round(rate["bare"], 1),
            "supervisor_jobs_per_s": round(rate["supervisor"], 1),
            "bare_x2_jobs_per_s": round(rate["bare_x2"], 1),
            "ratio": round(ratio_of_medians, 3),
            "ratio_median_of_runs": round(bc.median(ratios), 3),
            "ratio_best_runs": round(best_ratio, 3),
            "loadavg_1m_per_run": [round(x, 2) for x in loads],
            "ratio_vs_bare_x2": round(rate["supervisor"] / rate["bare_x2"], 3),
            "goal_ratio": 0.5,
            "goal_met": ratio_of_medians >= 0.5,
            "own_cpu_ms_per_job": {k: round(1e3 * bc.median(v) / n, 3) for k, v in cpu.items()},
            "per_run_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
            "breakdown_ms_per_job": breakdown,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
