"""Idle cost of a supervisor, and the import cost of the engine (issue 2, "Speed"):

- an idle ``python -m bridge run`` on an empty store (fresh data dir, a config file that does
  not exist): after a warm-up, CPU % over a window (psutil cpu_times delta / wall), wake-ups
  per second (voluntary context switches), RSS, USS and peak RSS. Goals: CPU near zero,
  RSS < 45 MB.
- where an idle supervisor's time goes: the same loop in-process for a few seconds, with its
  periodic store and /proc operations timed.
- import cost: ``python -X importtime -c "import supervisor"`` (the supervisor package's
  cumulative time and the process's total), and the wall time of ``python -c "import
  supervisor"`` vs ``python -c "pass"`` (interleaved, median of 20 each).
- that ``import supervisor``, building the SQLite store and building the supervisor on it
  import none of supabase, httpx, postgrest, psycopg (and their client libraries).

    python scripts/bench_idle.py [--warmup 3] [--window 20] [--windows 1] [--starts 20]
                                 [--wake-poll-s S] [--background-procs N]

CPU time comes from /proc in clock ticks (10 ms), so over a 20 s window the CPU % has a
resolution of 0.05 percentage points.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
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


def idle_window(tmp: Path, warmup_s: float, window_s: float, extra_env: dict[str, str]) -> dict[str, Any]:
    data = tmp / "data"
    err = (tmp / "run.stderr").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run"],
        cwd=bc.ROOT,
        env=bc.child_env(data, **extra_env),
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
        c0, x0, w0 = p.cpu_times(), p.num_ctx_switches(), time.perf_counter()
        time.sleep(window_s)
        c1, x1, w1 = p.cpu_times(), p.num_ctx_switches(), time.perf_counter()
        mem = p.memory_full_info()
        wall = w1 - w0
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        return {
            "cpu_pct": 100 * cpu / wall,
            "cpu_ms_per_s": 1e3 * cpu / wall,
            "user_s": c1.user - c0.user,
            "system_s": c1.system - c0.system,
            "wakeups_per_s": (x1.voluntary - x0.voluntary) / wall,
            "rss_mb": mem.rss / MB,
            "uss_mb": mem.uss / MB,
            "pss_mb": getattr(mem, "pss", 0) / MB,
            "peak_rss_mb": (_status_kib(proc.pid, "VmHWM") or 0) * 1024 / MB,
            "threads": p.num_threads(),
            "window_s": wall,
        }
    finally:
        bc.stop_process(proc)
        err.close()


# ---------------------------------------------------------------- in-process idle profile


def idle_breakdown(
    tmp: Path, seconds: float, overrides: dict[str, Any]
) -> tuple[list[tuple[str, int, float, float]], float]:
    """Run the real loop on an empty store in a thread; time its periodic operations."""
    from bridge.compose import build_supervisor
    from bridge.stores.sqlite import SQLiteStore
    from supervisor import procs
    from supervisor.runner import Supervisor
    from supervisor.settings import load_settings

    total: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    undo = []
    probes = [
        (procs.Waiter, "wait", "Waiter.wait (asleep)"),
        (SQLiteStore, "changed", "store.changed (PRAGMA data_version)"),
        (SQLiteStore, "claim", "store.claim"),
        (SQLiteStore, "reap_stale", "store.reap_stale"),
        (SQLiteStore, "heartbeat", "store.heartbeat"),
        (procs, "scan_tagged", "procs.scan_tagged (/proc scan)"),
        (procs, "reap_orphans", "procs.reap_orphans (waitid)"),
        (Supervisor, "_save_state", "state file save"),
    ]
    used = []
    for owner, attr, label in probes:
        original = getattr(owner, attr, None)
        if original is None:
            continue
        if isinstance(owner, type):
            original = owner.__dict__.get(attr, original)

        def timed(*a: Any, _o: Any = original, _l: str = label, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _o(*a, **k)
            finally:
                total[_l] += time.perf_counter() - t0
                calls[_l] += 1

        setattr(owner, attr, timed)
        undo.append((owner, attr, original))
        used.append(label)
    data = tmp / "inproc"
    try:
        with bc.isolated_settings_env(data):
            settings = load_settings(data_dir=data, **overrides)
        sup = build_supervisor(settings, install_signal_handlers=False)
        thread_cpu0 = time.process_time()
        thread = sup.start()
        time.sleep(seconds)
        sup.stop(timeout=10)
        thread.join(10)
        cpu = time.process_time() - thread_cpu0
        sup.store.close()
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)
    rows = [(label, calls[label], calls[label] / seconds, 1e3 * total[label] / seconds) for label in used]
    return rows, 1e3 * cpu / seconds


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
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--windows", type=int, default=1, help="idle processes to measure (median reported)")
    ap.add_argument("--starts", type=int, default=20, help="interpreter starts per snippet (median)")
    ap.add_argument("--importtime-runs", type=int, default=10)
    ap.add_argument("--inproc", type=float, default=10.0, help="seconds of the in-process idle breakdown")
    ap.add_argument(
        "--wake-poll-s",
        type=float,
        default=None,
        help="the user setting wake_poll_s (AGENT_SUPERVISOR_WAKE_POLL_S); default: its default",
    )
    ap.add_argument(
        "--background-procs",
        type=int,
        default=0,
        help="start N idle `sleep` processes first (a desktop has hundreds)",
    )
    args = ap.parse_args()
    extra_env = {} if args.wake_poll_s is None else {"AGENT_SUPERVISOR_WAKE_POLL_S": str(args.wake_poll_s)}
    overrides = {} if args.wake_poll_s is None else {"wake_poll_s": args.wake_poll_s}

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
            windows.append(idle_window(tmp, args.warmup, args.window, extra_env))
        idle = {k: bc.median([w[k] for w in windows]) for k in windows[0]}

        rows, inproc_cpu_ms = idle_breakdown(root, args.inproc, overrides)
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
    finally:
        for proc in background:
            proc.kill()
        for proc in background:
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"machine: {bc.machine_line()}")
    poll = "default" if args.wake_poll_s is None else f"{args.wake_poll_s:g} s"
    plural = "es" if args.windows > 1 else ""
    print(
        f"idle `python -m bridge run`, empty SQLite store, wake_poll_s {poll}, {args.window:g} s window "
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
                ("wake-ups per s (voluntary ctx switches)", round(idle["wakeups_per_s"], 1), ""),
                ("RSS MB", round(idle["rss_mb"], 1), "< 45"),
                ("USS MB", round(idle["uss_mb"], 1), ""),
                ("peak RSS MB (VmHWM)", round(idle["peak_rss_mb"], 1), ""),
                ("threads", int(idle["threads"]), ""),
            ],
        )
    )
    print()
    print(f"where an idle loop's time goes (in-process, {args.inproc:g} s; whole process CPU "
          f"{inproc_cpu_ms:.2f} ms/s):")  # fmt: skip
    print(bc.table(["operation", "calls", "calls/s", "ms per s"], rows))
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
    bc.emit_json(
        {
            "benchmark": "idle",
            "idle_processes": args.windows,
            "warmup_s": args.warmup,
            "window_s": args.window,
            "wake_poll_s": args.wake_poll_s if args.wake_poll_s is not None else "default",
            "background_procs": args.background_procs,
            "cpu_resolution_pct": round(100 * 0.01 / args.window, 3),
            "statistic": "median",
            "cpu_pct": round(idle["cpu_pct"], 3),
            "cpu_ms_per_s": round(idle["cpu_ms_per_s"], 3),
            "system_ms_per_s": round(1e3 * idle["system_s"] / idle["window_s"], 3),
            "wakeups_per_s": round(idle["wakeups_per_s"], 1),
            "rss_mb": round(idle["rss_mb"], 1),
            "rss_mib": round(idle["rss_mb"] * MB / 2**20, 1),
            "uss_mb": round(idle["uss_mb"], 1),
            "peak_rss_mb": round(idle["peak_rss_mb"], 1),
            "goal_rss_mb": 45,
            "rss_goal_met": idle["rss_mb"] < 45,
            "idle_breakdown_ms_per_s": {label: round(ms, 3) for label, _, _, ms in rows},
            "idle_calls_per_s": {label: round(cps, 2) for label, _, cps, _ in rows},
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


if __name__ == "__main__":
    raise SystemExit(main())
