"""Benchmark the stdio bridge the way a plugin host uses it: round trips over its pipes.

A real ``python -m bridge bridge`` (running its supervisor) on a SQLite store holding 10,000
finished jobs; a Python client writes one request line and reads one answer line, one at a
time. Per run: ``health`` x 1,000 after 200 warm-up requests, ``list`` of 100 jobs (all, and
filtered by status) and ``get`` x 200; the figures are the median over 5 runs of each run's
p50/p90. The bridge serves ``health`` from a snapshot at most 0.5 s old (dropped on every job
change it sees), so those round trips are mostly cached: ``health (cache expired)`` asks
``--uncached`` more times, each after a pause longer than that, for what a host pays when the
snapshot is gone. Also: ``check_health`` computed in-process without any cache, and the
bridge's CPU use and wake-ups (voluntary context switches of all its threads) while idle, with
its supervisor loop and without (``--no-run``).

Targets (issue 6): health round trip p50 < 2 ms; list of 100 out of 10,000 < 20 ms; (issue 11)
health under 10 ms whatever the history, so also with the cache expired.

    python scripts/bench_bridge.py [--runs 5] [--jobs 10000] [--uncached 10] [--idle-s 15]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from bench_common import (
    ROOT,
    child_env,
    emit_json,
    isolated_settings_env,
    machine_line,
    median,
    percentile,
    stop_process,
    switch_delta,
    table,
    task_switches,
)

from bridge.stores.sqlite import SQLiteStore
from supervisor.health import check_health
from supervisor.lifecycle import ErrorKind, JobSpec, Outcome
from supervisor.settings import load_settings

TARGETS_MS = {"health": 2.0, "list_100": 20.0, "health_cache_expired": 10.0}
CACHE_TTL_S = 0.5  # bridge/jsonrpc/backend.py _HEALTH_TTL_S


def fill(store: SQLiteStore, jobs: int) -> None:
    """``jobs`` finished jobs: 60 % completed, 20 % failed, 20 % cancelled, with events."""
    chunk = 500
    for start in range(0, jobs, chunk):
        n = min(chunk, jobs - start)
        ids = store.enqueue(
            [JobSpec(command=("true",), payload={"n": start + i}, max_attempts=1) for i in range(n)]
        )
        for job_id in ids[: n // 5]:
            store.request_cancel(job_id)
        for job in store.claim("bench", n, lease_s=600):
            failed = job.id % 4 == 0
            outcome = Outcome(error_kind=ErrorKind.EXIT_CODE, exit_code=1) if failed else Outcome(exit_code=0)
            store.finish(job.id, "bench", job.attempt, outcome)


def idle_use(pid: int, seconds: float) -> tuple[float, float]:
    """CPU time (in % of one core) and wake-ups per second (voluntary context switches of all
    threads) of a process while nobody talks to it."""
    proc = psutil.Process(pid)
    cpu0, sw0, wall0 = sum(proc.cpu_times()[:2]), task_switches(pid), time.monotonic()
    time.sleep(seconds)  # measuring idleness: there is nothing to await
    wall = time.monotonic() - wall0
    woke = sum(v for v, _ in switch_delta(sw0, task_switches(pid)).values())
    return (sum(proc.cpu_times()[:2]) - cpu0) / wall * 100, woke / wall


class Client:
    """One request line out, one answer line back, over the bridge's pipes."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin, self.stdout = proc.stdin, proc.stdout
        self.next_id = 0

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.stdin.write(json.dumps(message).encode() + b"\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"the bridge exited instead of answering {method}")
        reply = json.loads(line)
        if reply.get("id") != self.next_id or "result" not in reply:
            raise RuntimeError(f"unexpected answer to {method}: {str(reply)[:300]}")
        return reply["result"]

    def timed(self, method: str, params: dict[str, Any] | None, count: int) -> list[float]:
        """Round-trip times in ms."""
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            self.call(method, params)
            out.append((time.perf_counter() - t0) * 1000)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1000, help="health requests per run")
    parser.add_argument("--uncached", type=int, default=10, help="health requests after the cache expired")
    parser.add_argument(
        "--idle-s", type=float, default=15.0, help="idle window (status.json is rewritten every 10 s)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        data = Path(tmp) / "data"
        store = SQLiteStore(data / "jobs.sqlite3")
        t0 = time.perf_counter()
        fill(store, args.jobs)
        print(f"filled {args.jobs} jobs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        with isolated_settings_env(data):  # no config file or AGENT_SUPERVISOR_* of the caller
            settings = load_settings(data_dir=data)
        uncached = [0.0] * 200
        for i in range(len(uncached)):
            t = time.perf_counter()
            check_health(store, settings, worker_id=None)
            uncached[i] = (time.perf_counter() - t) * 1000
        store.close()

        stderr = (Path(tmp) / "bridge.stderr").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "bridge"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(data),
            cwd=ROOT,
        )
        try:
            client = Client(proc)
            assert client.call("subscribe", {"events": ["bridge.mode"]})["mode"] == "run"
            client.timed("health", None, 200)  # warm-up: imports, caches, the first queries
            client.timed("list", {"limit": 100}, 20)
            runs: dict[str, list[list[float]]] = {
                "health": [],
                "list_100": [],
                "list_100_failed": [],
                "get": [],
                "health_cache_expired": [],
            }
            for _ in range(args.runs):
                runs["health"].append(client.timed("health", None, args.requests))
                runs["list_100"].append(client.timed("list", {"limit": 100}, 200))
                runs["list_100_failed"].append(client.timed("list", {"limit": 100, "status": "failed"}, 200))
                runs["get"].append(client.timed("get", {"id": args.jobs // 2}, 200))
                expired = []
                for _ in range(args.uncached):
                    time.sleep(CACHE_TTL_S + 0.1)
                    expired += client.timed("health", None, 1)
                runs["health_cache_expired"].append(expired)
            assert len(client.call("list", {"limit": 100})) == 100
            idle_cpu, idle_wakeups = idle_use(proc.pid, args.idle_s)
        except Exception:
            print((Path(tmp) / "bridge.stderr").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            stop_process(proc)
            stderr.close()
        # The same bridge without its supervisor loop: what the server itself costs at rest.
        quiet = subprocess.Popen(
            [sys.executable, "-m", "bridge", "bridge", "--no-run"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=child_env(data),
            cwd=ROOT,
        )
        try:
            Client(quiet).call("health")
            idle_cpu_no_run, idle_wakeups_no_run = idle_use(quiet.pid, args.idle_s)
        finally:
            stop_process(quiet)

    figures: dict[str, Any] = {}
    rows = []
    for name, per_run in runs.items():
        p50 = median([percentile(r, 50) for r in per_run])
        p90 = median([percentile(r, 90) for r in per_run])
        p99 = median([percentile(r, 99) for r in per_run])
        figures[name] = {"p50_ms": round(p50, 3), "p90_ms": round(p90, 3), "p99_ms": round(p99, 3)}
        target = TARGETS_MS.get(name)
        verdict = "" if target is None else ("ok" if p50 < target else "MISSED")
        rows.append([name, len(per_run[0]), p50, p90, p99, "" if target is None else f"< {target}", verdict])
    figures["check_health_uncached_ms"] = {"p50": round(percentile(uncached, 50), 3)}
    figures["idle_cpu_percent"] = round(idle_cpu, 2)
    figures["idle_cpu_percent_no_run"] = round(idle_cpu_no_run, 2)
    figures["idle_wakeups_per_s"] = round(idle_wakeups, 2)
    figures["idle_wakeups_per_s_no_run"] = round(idle_wakeups_no_run, 2)
    figures["idle_window_s"] = args.idle_s
    figures["jobs_in_history"] = args.jobs
    figures["runs"] = args.runs

    print(f"bridge round trips, {args.jobs:,} jobs in history, median of {args.runs} runs")
    print(machine_line())
    print(table(["request", "n/run", "p50 ms", "p90 ms", "p99 ms", "target p50", ""], rows))
    print(f"check_health without the bridge's cache: p50 {percentile(uncached, 50):.3f} ms (in-process)")
    print(
        f"idle over {args.idle_s:g} s: {idle_cpu:.2f} % of one core and {idle_wakeups:.2f} wake-ups/s "
        f"with its supervisor loop; {idle_cpu_no_run:.2f} % and {idle_wakeups_no_run:.2f} wake-ups/s "
        "with --no-run (the server alone)"
    )
    emit_json({"bench": "bridge", **figures})
    missed = [n for n, t in TARGETS_MS.items() if figures[n]["p50_ms"] >= t]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
