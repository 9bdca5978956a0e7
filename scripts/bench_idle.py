"""Idle cost of a supervisor, and the import cost of the engine (issue 2 "Speed", issue 11 "No
idle wake-ups": goal <= 1 wake-up per second idle, RQ's idle worker makes none):

- an idle ``python -m bridge run`` on an empty store (fresh data dir, a config file that does
  not exist): after a warm-up, CPU % over a window (psutil cpu_times delta / wall), wake-ups
  per second (voluntary context switches summed over every thread of the process, from
  ``/proc/<pid>/task/*/status``; the main thread runs the loop; Python's thread names are not
  visible there, so the other threads — the store's FIFO reader, retention, ``run``'s talk
  line — show as a sum and their busiest), RSS, USS and peak RSS. Goals: CPU near zero,
  <= 1 wake-up/s, RSS < 45 MB.
- why an idle loop wakes: the same loop in-process (``Supervisor.start``) for a window, counting
  ``Waiter.wait`` returns (the loop's own wake-ups) with the timeouts it asked for, the ticks,
  and the periodic work they did (store claims and reaps, ``status.json`` writes, retention
  sweeps, change hints from the store's FIFO thread, /proc scans), plus each thread's
  voluntary context switches by name.
- import cost: ``python -X importtime -c "import supervisor"`` (the supervisor package's
  cumulative time and the process's total), and the wall time of ``python -c "import
  supervisor"`` vs ``python -c "pass"`` (interleaved, median of 20 each).
- that ``import supervisor``, building the SQLite store, building the supervisor on it and
  importing the CLI load none of supabase, httpx, postgrest, psycopg (and their client
  libraries), nor does running the loop (this process, after the in-process window).

    python scripts/bench_idle.py [--warmup 3] [--window 30] [--windows 1] [--inproc 30]
                                 [--starts 20] [--background-procs N]

CPU time comes from /proc in clock ticks (10 ms), so over a 30 s window the CPU % has a
resolution of 0.033 percentage points. The status file is rewritten every 10 s as a sign of
life (``supervisor.status.EVERY_S``) and other supervisors' leases are reaped every ``reap_s``
(30 s): a window shorter than 30 s undercounts those.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import bench_common as bc  # puts the repo root on sys.path
import psutil

FORBIDDEN = (
    "supabase", "httpx", "postgrest", "psycopg", "psycopg2", "psycopg_binary", "realtime",
    "gotrue", "supabase_auth", "storage3", "supafunc", "supabase_functions", "httpcore",
)  # fmt: skip
MB = 1e6  # the goal says MB; we report MB (10^6) and MiB in the JSON


# ---------------------------------------------------------------- idle process


def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def idle_window(tmp: Path, warmup_s: float, window_s: float) -> dict[str, Any]:
    data = tmp / "data"
    err = (tmp / "run.stderr").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run"],
        cwd=bc.ROOT,
        env=bc.child_env(data),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        time.sleep(warmup_s)
        if proc.poll() is not None:
            raise SystemExit(
                f"`bridge run` exited with {proc.returncode}: {(tmp / 'run.stderr').read_text()}"
            )
        p = psutil.Process(proc.pid)
        c0, x0, w0 = p.cpu_times(), bc.task_switches(proc.pid), time.perf_counter()
        time.sleep(window_s)
        c1, x1, w1 = p.cpu_times(), bc.task_switches(proc.pid), time.perf_counter()
        mem = p.memory_full_info()
        wall = w1 - w0
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        delta = bc.switch_delta(x0, x1)
        voluntary = sum(v for v, _ in delta.values())
        main_thread = delta.get(proc.pid, (0, 0))[0]
        return {
            "cpu_pct": 100 * cpu / wall,
            "cpu_ms_per_s": 1e3 * cpu / wall,
            "user_s": c1.user - c0.user,
            "system_s": c1.system - c0.system,
            "wakeups_per_s": voluntary / wall,
            "main_thread_wakeups_per_s": main_thread / wall,
            "other_threads_wakeups_per_s": (voluntary - main_thread) / wall,
            "busiest_other_thread_wakeups_per_s": max(
                (v for tid, (v, _) in delta.items() if tid != proc.pid), default=0
            )
            / wall,
            "involuntary_per_s": sum(i for _, i in delta.values()) / wall,
            "rss_mb": mem.rss / MB,
            "uss_mb": mem.uss / MB,
            "pss_mb": getattr(mem, "pss", 0) / MB,
            "peak_rss_mb": (_status_kib(proc.pid, "VmHWM") or 0) * 1024 / MB,
            "threads": p.num_threads(),
            "fds": p.num_fds(),
            "window_s": wall,
        }
    finally:
        bc.stop_process(proc)
        err.close()


# ---------------------------------------------------------------- in-process idle profile


class _Probes:
    """Counts and wall time of engine calls, by wrapping them for one run (restored after)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.timeouts: list[float | None] = []
        self.missing: list[str] = []
        self.labels: list[str] = []
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str, *, record_timeout: bool = False) -> None:
        raw = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
        if raw is None:
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
            return

        def timed(*a: Any, **k: Any) -> Any:
            if record_timeout:
                self.timeouts.append(k.get("timeout", a[1] if len(a) > 1 else None))
            t0 = time.perf_counter()
            try:
                return raw(*a, **k)
            finally:
                self.total[label] += time.perf_counter() - t0
                self.calls[label] += 1

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, raw))
        self.labels.append(label)

    def snapshot(self) -> tuple[dict[str, int], dict[str, float], int]:
        return dict(self.calls), dict(self.total), len(self.timeouts)

    def restore(self) -> None:
        for owner, attr, raw in reversed(self._undo):
            setattr(owner, attr, raw)
        self._undo.clear()


def idle_breakdown(tmp: Path, seconds: float) -> dict[str, Any]:
    """Run the real loop on an empty store in a thread of this process; count why it wakes."""
    from bridge.compose import build_supervisor
    from bridge.stores.sqlite import SQLiteStore
    from supervisor import loop, procs, retention, status, waiting
    from supervisor.settings import load_settings

    probes = _Probes()
    probes.wrap(waiting.Waiter, "wait", "Waiter.wait returns (the loop's wake-ups)", record_timeout=True)
    probes.wrap(loop.Loop, "tick", "Loop.tick")
    probes.wrap(loop.Loop, "_hinted", "store change hints (FIFO thread -> loop)")
    probes.wrap(SQLiteStore, "claim", "store.claim")
    probes.wrap(SQLiteStore, "next_due", "store.next_due")
    probes.wrap(SQLiteStore, "reap_stale", "store.reap_stale (reap_s)")
    probes.wrap(SQLiteStore, "heartbeat", "store.heartbeat")
    probes.wrap(SQLiteStore, "counts", "store.counts")
    probes.wrap(status, "write_private", "status.json writes (sign of life)")
    probes.wrap(loop, "disk_use", "disk_use (statvfs, for status.json)")
    probes.wrap(loop.Loop, "_save_state", "state file saves")
    probes.wrap(retention.Retention, "sweep", "retention sweeps (their own thread)")
    probes.wrap(procs.OsProcesses, "scan_tagged", "/proc scans (scan_tagged)")
    probes.wrap(procs.OsProcesses, "orphans", "orphans (escapees, waitid)")
    probes.wrap(procs.OsProcesses, "memory", "memory() (admission)")
    data = tmp / "inproc"
    threads: dict[str, tuple[int, int]] = {}
    try:
        with bc.isolated_settings_env(data):
            settings = load_settings(data_dir=data)
        sup = build_supervisor(settings, install_signal_handlers=False)
        try:
            cpu0 = time.process_time()
            thread = sup.start()
            time.sleep(min(2.0, seconds / 4))  # opening, reconciling, the first claim: not idle yet
            ours = {
                t.native_id: t.name for t in threading.enumerate() if t.name.startswith("agent-supervisor")
            }
            before, snap0, cpu1 = bc.task_switches(os.getpid()), probes.snapshot(), time.process_time()
            t0 = time.perf_counter()
            time.sleep(seconds)
            wall = time.perf_counter() - t0
            after, snap1, cpu2 = bc.task_switches(os.getpid()), probes.snapshot(), time.process_time()
            sup.stop(timeout=10)
            thread.join(10)
        finally:
            sup.store.close()
        del cpu0
    finally:
        probes.restore()
    delta = bc.switch_delta(before, after)
    for tid, name in ours.items():
        if tid in delta:
            threads[name] = delta[tid]
    calls0, total0, n0 = snap0
    calls1, total1, n1 = snap1
    rows = [
        (
            label,
            calls1.get(label, 0) - calls0.get(label, 0),
            (calls1.get(label, 0) - calls0.get(label, 0)) / wall,
            1e3 * (total1.get(label, 0.0) - total0.get(label, 0.0)) / wall,
        )
        for label in probes.labels
    ]
    asked = [t for t in probes.timeouts[n0:n1]]
    finite = sorted(t for t in asked if t is not None)
    return {
        "rows": rows,
        "wall_s": wall,
        "cpu_ms_per_s": 1e3 * (cpu2 - cpu1) / wall,
        "threads": threads,
        "wait_timeouts_s": {
            "min": min(finite) if finite else None,
            "median": bc.median(finite) if finite else None,
            "max": max(finite) if finite else None,
            "unbounded": sum(1 for t in asked if t is None),
        },
        "missing": probes.missing,
    }


# ---------------------------------------------------------------- imports


_IMPORTTIME = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def importtime(runs: int) -> dict[str, float]:
    """Median over runs of: the 'supervisor' package's cumulative µs, the sum of every
    module's self µs (all imports of the process, site included), and the number of modules."""
    pkg, total, count = [], [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import supervisor"],
            cwd=bc.ROOT, env=bc.child_env(Path(tempfile.gettempdir()) / "unused"),
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
        self_sum, n, cum = 0, 0, None
        for line in out.splitlines():
            m = _IMPORTTIME.match(line)
            if not m:
                continue
            self_sum += int(m.group(1))
            n += 1
            if m.group(4) == "supervisor" and not m.group(3).strip(" ") and len(m.group(3)) <= 1:
                cum = int(m.group(2))
        if cum is None:
            raise SystemExit("importtime: no top-level 'supervisor' line\n" + out[-2000:])
        pkg.append(cum)
        total.append(self_sum)
        count.append(n)
    return {
        "supervisor_cumulative_ms": bc.median(pkg) / 1e3,
        "all_imports_self_sum_ms": bc.median(total) / 1e3,
        "modules_imported": bc.median(count),
    }


def start_times(snippets: dict[str, str], runs: int) -> dict[str, float]:
    """Median wall seconds of `python -c SNIPPET`, the snippets interleaved run by run."""
    env = bc.child_env(Path(tempfile.gettempdir()) / "unused")
    times: dict[str, list[float]] = {k: [] for k in snippets}
    for _ in range(runs):
        for name, code in snippets.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=bc.ROOT, env=env, check=True)
            times[name].append(time.perf_counter() - t0)
    return {k: bc.median(v) for k, v in times.items()}


_CHECK = r"""
import json, sys
from pathlib import Path
FORBIDDEN = set(json.loads(sys.argv[1]))
def loaded():
    return sorted({m.split(".")[0] for m in sys.modules} & FORBIDDEN)
report = {}
import supervisor
report["import supervisor"] = loaded()
from supervisor.settings import load_settings
from bridge.compose import build_store, build_supervisor
settings = load_settings(data_dir=Path(sys.argv[2]))
store = build_store(settings)
report["build the SQLite store (bridge.compose.build_store)"] = loaded()
sup = build_supervisor(settings, store=store, install_signal_handlers=False)
report["build the supervisor on it (bridge.compose.build_supervisor)"] = loaded()
import bridge.cli
report["import bridge.cli (the `run` command's module)"] = loaded()
store.close()
report["_modules"] = len(sys.modules)
print(json.dumps(report))
"""


def remote_client_check(tmp: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(FORBIDDEN), str(tmp / "check")],
        cwd=bc.ROOT, env=bc.child_env(tmp / "check"), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--windows", type=int, default=1, help="idle processes to measure (median reported)")
    ap.add_argument("--starts", type=int, default=20, help="interpreter starts per snippet (median)")
    ap.add_argument("--importtime-runs", type=int, default=10)
    ap.add_argument("--inproc", type=float, default=30.0, help="seconds of the in-process idle breakdown")
    ap.add_argument(
        "--background-procs",
        type=int,
        default=0,
        help="start N idle `sleep` processes first (a desktop has hundreds)",
    )
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="as-bench-idle-"))
    background: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(args.background_procs):  # a desktop's process table, all of this user
            background.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL))
        windows = []
        for i in range(args.windows):
            tmp = root / f"idle{i}"
            tmp.mkdir()
            print(f"idle `python -m bridge run` {i + 1}/{args.windows}: {args.warmup:g} s warm-up, "
                  f"{args.window:g} s window ...", flush=True)  # fmt: skip
            windows.append(idle_window(tmp, args.warmup, args.window))
        idle = {k: bc.median([w[k] for w in windows]) for k in windows[0]}

        print(f"in-process idle loop: {args.inproc:g} s ...", flush=True)
        inproc = idle_breakdown(root, args.inproc)
        ran_loop = sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))
        imp = importtime(args.importtime_runs)
        starts = start_times(
            {
                "pass": "pass",
                "import supervisor": "import supervisor",
                "import supervisor.runner": "import supervisor.runner",
                "import bridge.cli": "import bridge.cli",
            },
            args.starts,
        )
        check = remote_client_check(root)
        check["run the loop in-process for the window above (this process)"] = ran_loop
    finally:
        for proc in background:
            proc.kill()
        for proc in background:
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"machine: {bc.machine_line()}")
    plural = "es" if args.windows > 1 else ""
    print(
        f"idle `python -m bridge run`, empty SQLite store, {args.window:g} s window "
        f"after {args.warmup:g} s (median of {args.windows} process{plural})"
        + (f"; {args.background_procs} idle background processes" if args.background_procs else "")
        + ":"
    )
    print(
        bc.table(
            ["figure", "measured", "goal"],
            [
                ("CPU %", round(idle["cpu_pct"], 3), "near 0"),
                ("CPU ms per s (user + system)", round(idle["cpu_ms_per_s"], 2), ""),
                ("  of which system", round(1e3 * idle["system_s"] / idle["window_s"], 2), ""),
                (
                    "wake-ups per s (voluntary ctx switches, all threads)",
                    round(idle["wakeups_per_s"], 2),
                    "<= 1",
                ),
                ("  main thread (the loop)", round(idle["main_thread_wakeups_per_s"], 2), ""),
                (
                    "  other threads (store hints, retention)",
                    round(idle["other_threads_wakeups_per_s"], 2),
                    "",
                ),
                ("involuntary ctx switches per s", round(idle["involuntary_per_s"], 2), ""),
                ("RSS MB", round(idle["rss_mb"], 1), "< 45"),
                ("USS MB", round(idle["uss_mb"], 1), ""),
                ("peak RSS MB (VmHWM)", round(idle["peak_rss_mb"], 1), ""),
                ("threads", int(idle["threads"]), ""),
                ("open fds", int(idle["fds"]), ""),
            ],
        )
    )
    print()
    waits = inproc["wait_timeouts_s"]
    print(
        f"why an idle loop wakes (in-process, {inproc['wall_s']:.0f} s after a warm-up; whole process CPU "
        f"{inproc['cpu_ms_per_s']:.2f} ms/s):"
    )
    print(bc.table(["operation", "calls", "calls/s", "ms per s"], inproc["rows"]))
    if waits["min"] is not None:
        print(
            f"Waiter.wait timeouts asked: min {waits['min']:.3f} s, median {waits['median']:.3f} s, "
            f"max {waits['max']:.3f} s; without a timeout: {waits['unbounded']}"
        )
    elif waits["unbounded"]:
        print(f"Waiter.wait without a timeout: {waits['unbounded']}")
    if inproc["threads"]:
        print(
            "voluntary ctx switches per thread in that window: "
            + ", ".join(
                f"{name} {v} ({v / inproc['wall_s']:.2f}/s)"
                for name, (v, _) in sorted(inproc["threads"].items())
            )
        )
    if inproc["missing"]:
        print(f"(probes whose target the engine no longer has: {', '.join(inproc['missing'])})")
    print()
    print(f"import cost (median of {args.importtime_runs} -X importtime runs, {args.starts} starts each):")
    print(
        bc.table(
            ["figure", "ms"],
            [
                ("-X importtime: 'supervisor' cumulative", imp["supervisor_cumulative_ms"]),
                ("-X importtime: all imports (self sum, incl. site)", imp["all_imports_self_sum_ms"]),
                ("wall: python -c 'pass'", 1e3 * starts["pass"]),
                ("wall: python -c 'import supervisor'", 1e3 * starts["import supervisor"]),
                ("  difference", 1e3 * (starts["import supervisor"] - starts["pass"])),
                (
                    "wall: python -c 'import supervisor.runner' (context)",
                    1e3 * starts["import supervisor.runner"],
                ),
                ("wall: python -c 'import bridge.cli' (context)", 1e3 * starts["import bridge.cli"]),
            ],
        )
    )
    print()
    stages = {k: v for k, v in check.items() if not k.startswith("_")}
    clean = all(not v for v in stages.values())
    print("remote clients (supabase, httpx, postgrest, psycopg, ...) loaded?")
    for stage, found in stages.items():
        print(f"  {stage}: {'none' if not found else 'LOADED ' + ', '.join(found)}")
    print(f"verdict: {'PASS — the SQLite path imports no remote client' if clean else 'FAIL'}")
    print()
    loop_wakeups = {label: cps for label, _, cps, _ in inproc["rows"]}
    bc.emit_json(
        {
            "benchmark": "idle",
            "idle_processes": args.windows,
            "warmup_s": args.warmup,
            "window_s": args.window,
            "background_procs": args.background_procs,
            "cpu_resolution_pct": round(100 * 0.01 / args.window, 3),
            "statistic": "median",
            "cpu_pct": round(idle["cpu_pct"], 3),
            "cpu_ms_per_s": round(idle["cpu_ms_per_s"], 3),
            "system_ms_per_s": round(1e3 * idle["system_s"] / idle["window_s"], 3),
            "wakeups_per_s": round(idle["wakeups_per_s"], 3),
            "main_thread_wakeups_per_s": round(idle["main_thread_wakeups_per_s"], 3),
            "other_threads_wakeups_per_s": round(idle["other_threads_wakeups_per_s"], 3),
            "busiest_other_thread_wakeups_per_s": round(idle["busiest_other_thread_wakeups_per_s"], 3),
            "goal_wakeups_per_s": 1,
            "wakeups_goal_met": idle["wakeups_per_s"] <= 1,
            "rss_mb": round(idle["rss_mb"], 1),
            "rss_mib": round(idle["rss_mb"] * MB / 2**20, 1),
            "uss_mb": round(idle["uss_mb"], 1),
            "peak_rss_mb": round(idle["peak_rss_mb"], 1),
            "threads": int(idle["threads"]),
            "fds": int(idle["fds"]),
            "goal_rss_mb": 45,
            "rss_goal_met": idle["rss_mb"] < 45,
            "inproc_window_s": round(inproc["wall_s"], 1),
            "inproc_loop_wakeups_per_s": round(
                loop_wakeups.get("Waiter.wait returns (the loop's wake-ups)", 0.0), 3
            ),
            "inproc_cpu_ms_per_s": round(inproc["cpu_ms_per_s"], 3),
            "inproc_wait_timeouts_s": {k: rnd(v) for k, v in waits.items()},
            "inproc_thread_voluntary_switches": {k: v for k, (v, _) in inproc["threads"].items()},
            "idle_breakdown_ms_per_s": {label: round(ms, 3) for label, _, _, ms in inproc["rows"]},
            "idle_calls_per_s": {label: round(cps, 3) for label, _, cps, _ in inproc["rows"]},
            "importtime_runs": args.importtime_runs,
            "importtime_supervisor_ms": round(imp["supervisor_cumulative_ms"], 2),
            "importtime_all_ms": round(imp["all_imports_self_sum_ms"], 2),
            "starts": args.starts,
            "wall_pass_ms": round(1e3 * starts["pass"], 2),
            "wall_import_supervisor_ms": round(1e3 * starts["import supervisor"], 2),
            "wall_import_supervisor_extra_ms": round(1e3 * (starts["import supervisor"] - starts["pass"]), 2),
            "wall_import_runner_ms": round(1e3 * starts["import supervisor.runner"], 2),
            "wall_import_bridge_cli_ms": round(1e3 * starts["import bridge.cli"], 2),
            "remote_clients_loaded": stages,
            "modules_after_building_supervisor": check.get("_modules"),
            "no_remote_clients": clean,
        }
    )
    return 0


def rnd(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


if __name__ == "__main__":
    raise SystemExit(main())
