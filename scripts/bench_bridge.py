"""Benchmark the stdio bridge the way a plugin host uses it: round trips over its pipes.

A real ``python -m bridge bridge`` (running its supervisor) on a SQLite store holding 10,000
finished jobs; a Python client writes one request line and reads one answer line, one at a
time. Per run: ``health`` x 1,000 after 200 warm-up requests, ``list`` of 100 jobs (all, and
filtered by status) and ``get`` x 200; the figures are the median over 5 runs of each run's
p50/p90. Also: ``check_health`` computed in-process without the bridge's cache (why there is
one), and the bridge's CPU use while idle (a host polling nothing).

Targets (issue 6): health round trip p50 < 2 ms; list of 100 out of 10,000 < 20 ms.

    python scripts/bench_bridge.py [--runs 5] [--jobs 10000]
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
from bench_common import ROOT, child_env, emit_json, machine_line, median, percentile, stop_process, table

from bridge.stores.sqlite import SQLiteStore
from supervisor.health import check_health
from supervisor.lifecycle import ErrorKind, JobSpec, Outcome
from supervisor.settings import Settings

TARGETS_MS = {"health": 2.0, "list_100": 20.0}


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


def idle_cpu_percent(pid: int, seconds: float = 5.0) -> float:
    """CPU time a process used while nobody talked to it, in % of one core."""
    proc = psutil.Process(pid)
    cpu0, wall0 = sum(proc.cpu_times()[:2]), time.monotonic()
    time.sleep(seconds)  # measuring idleness: there is nothing to await
    return (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0) * 100


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        data = Path(tmp) / "data"
        store = SQLiteStore(data / "jobs.sqlite3")
        t0 = time.perf_counter()
        fill(store, args.jobs)
        print(f"filled {args.jobs} jobs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        settings = Settings(data_dir=data)
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
            }
            for _ in range(args.runs):
                runs["health"].append(client.timed("health", None, args.requests))
                runs["list_100"].append(client.timed("list", {"limit": 100}, 200))
                runs["list_100_failed"].append(client.timed("list", {"limit": 100, "status": "failed"}, 200))
                runs["get"].append(client.timed("get", {"id": args.jobs // 2}, 200))
            assert len(client.call("list", {"limit": 100})) == 100
            idle_cpu = idle_cpu_percent(proc.pid)
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
            idle_cpu_no_run = idle_cpu_percent(quiet.pid)
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
    figures["jobs_in_history"] = args.jobs
    figures["runs"] = args.runs

    print(f"bridge round trips, {args.jobs:,} jobs in history, median of {args.runs} runs")
    print(machine_line())
    print(table(["request", "n/run", "p50 ms", "p90 ms", "p99 ms", "target p50", ""], rows))
    print(f"check_health without the bridge's cache: p50 {percentile(uncached, 50):.3f} ms (in-process)")
    print(
        f"idle CPU over 5 s: {idle_cpu:.2f} % of one core with its supervisor loop, "
        f"{idle_cpu_no_run:.2f} % with --no-run (the server alone)"
    )
    emit_json({"bench": "bridge", **figures})
    missed = [n for n, t in TARGETS_MS.items() if figures[n]["p50_ms"] >= t]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
