"""Benchmark the dashboard's jobs API on a SQLite store holding 1M finished jobs.

The history is written straight into the SQLite file in one transaction (executemany), not
through the API, in seconds: 1,000,000 finished jobs over 30 days (90 % completed, 7 %
failed, 3 % cancelled; 8 kinds; 200 repositories; the last hour holds ~3,000 finishes), plus
a few pending ones. Then a real ``python -m bridge dashboard`` (no supervisor: it follows the
store) answers over loopback HTTP, with the Bearer token, one request at a time:

- ``first page``: ``/api/jobs?limit=50``, the page as it opens;
- ``status page``: ``/api/jobs?status=failed&limit=50``;
- ``kind page`` / ``repo page`` / ``last 24 h``: the store protocol v2 filters (reported as
  unavailable while the store has only the status filter);
- ``deep page``: offset 100,000, what an offset costs;
- ``job``: one job with its events.

p50/p90 of ``--requests`` requests after 3 warm-up ones each. In-process (no HTTP, no cache):
``health`` (the counts by status: a GROUP BY over the history until v2's counters), and the
chart's read (``queries.throughput``: the last hour's finishes).

    python scripts/bench_dashboard.py [--jobs 1000000] [--requests 30] [--keep]
"""

from __future__ import annotations

import argparse
import json
import random
import select
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from bench_common import ROOT, child_env, emit_json, machine_line, percentile, stop_process, table

from bridge.dashboard.queries import JobQuery, page_jobs, throughput
from bridge.service import JobService
from bridge.stores.sqlite import SQLiteStore
from supervisor.settings import Settings

KINDS = ["summarize", "translate", "index", "review", "triage", "embed", "digest", "tag"]
DAY = 86_400.0


def rows(jobs: int, now: float, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """``jobs`` finished jobs, oldest first (ids grow with time, as in a real store)."""
    rng = random.Random(seed)
    recent = min(3_000, jobs // 10)  # finished within the last hour: what the chart reads
    for n in range(jobs):
        if n < jobs - recent:
            finished = now - 30 * DAY + (30 * DAY - 3600) * n / max(1, jobs - recent)
        else:
            finished = now - 3600 + 3600 * (n - (jobs - recent)) / recent
        took = rng.uniform(1, 600)
        started = finished - took
        created = started - rng.uniform(0, 30)
        roll = rng.random()
        status, error_kind, error, exit_code = (
            ("completed", None, None, 0)
            if roll < 0.90
            else ("failed", "exit_code", "exit code 1", 1)
            if roll < 0.97
            else ("cancelled", "cancelled", "cancelled while running", None)
        )
        kind = KINDS[n % len(KINDS)]
        repo = f"github.com/octo/repo-{n % 200}"
        yield (
            status, created, finished, kind, json.dumps({"note": f"inbox/{n}.md"}), rng.randint(0, 3),
            repo, 1, 3, 10.0, 3600.0, created, "bench-worker", exit_code, error_kind, error,
            f"processed note {n}: ok\n", started, finished, "bench-worker",
        )  # fmt: skip


INSERT = """
insert into jobs (status, created_at, updated_at, kind, payload, priority, concurrency_key,
                  attempt, max_attempts, backoff_s, timeout_s, run_after, lease_owner, exit_code,
                  error_kind, error, output_tail, started_at, finished_at, finished_by)
values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, null, ?, ?, ?, ?, ?, ?, ?)
"""


def build(db: Path, jobs: int, now: float) -> float:
    """The store's schema (through the store), then the history in one transaction."""
    SQLiteStore(db).close()
    started = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("pragma synchronous = off")
        conn.execute("begin")
        conn.executemany(INSERT, (row[:12] + row[13:] for row in rows(jobs, now)))
        conn.executemany(
            "insert into jobs (status, created_at, updated_at, kind, payload, max_attempts, backoff_s) "
            "values ('pending', ?, ?, 'summarize', '{}', 3, 10.0)",
            [(now, now)] * 5,
        )
        conn.execute("commit")  # no ANALYZE: the store never runs it, and its plans differ with stats
    finally:
        conn.close()
    return time.perf_counter() - started


def timed(call: Callable[[], Any], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1000)
    return out


def serve(data: Path) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "dashboard"],
        env=child_env(data),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("dashboard: "):
        stop_process(proc)
        raise SystemExit(f"the dashboard did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    url = line.removeprefix("dashboard: ").strip()
    base, _, token = url.partition("/?token=")
    return proc, base, token


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the data dir (its path is printed)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    data = tmp / "data"
    data.mkdir(mode=0o700)
    db = data / "jobs.sqlite3"
    now = time.time()
    try:
        build_s = build(db, args.jobs, now)
        size_mib = db.stat().st_size / 2**20
        print(
            f"{args.jobs:,} finished jobs written in {build_s:.1f} s ({size_mib:,.0f} MiB); {machine_line()}"
        )

        results: list[tuple[str, str, list[float] | str]] = []
        proc, base, token = serve(data)
        try:
            with httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as http:
                cases = [
                    ("first page", "/api/jobs?limit=50"),
                    ("status page", "/api/jobs?status=failed&limit=50"),
                    ("kind page", "/api/jobs?kind=review&limit=50"),
                    ("repo page", "/api/jobs?repo=octo/repo-7&limit=50"),
                    ("last 24 h", f"/api/jobs?created_after={now - DAY:.0f}&limit=50"),
                    ("deep page", "/api/jobs?limit=50&offset=100000"),
                    ("job", f"/api/jobs/{args.jobs // 2}"),
                ]
                for name, path in cases:
                    probe = http.get(path)
                    if probe.status_code != 200:
                        results.append((name, path, probe.json().get("error", str(probe.status_code))))
                        continue
                    # A slow case (a deep offset before store protocol v2) gets fewer requests.
                    slow = probe.elapsed.total_seconds() > 0.5
                    n, warmup = (max(3, args.requests // 6), 1) if slow else (args.requests, 3)
                    results.append(
                        (name, path, timed(lambda p=path: http.get(p).raise_for_status(), n, warmup))
                    )
        finally:
            stop_process(proc)

        store = SQLiteStore(db)
        try:
            service = JobService(Settings(data_dir=data), store)
            results.append(("health (in-process)", "service.health()", timed(service.health, 10, warmup=1)))
            results.append(
                (
                    "chart read (in-process)",
                    "queries.throughput",
                    timed(lambda: throughput(service, now), 10, 1),
                )
            )
            results.append(
                ("first page (in-process)", "page_jobs", timed(lambda: page_jobs(service, JobQuery()), 30))
            )
        finally:
            store.close()

        figures: dict[str, Any] = {"jobs": args.jobs, "build_s": round(build_s, 1), "requests": args.requests}
        table_rows = []
        for name, what, values in results:
            if isinstance(values, str):
                table_rows.append([name, what, "n/a", "n/a"])
                figures[name] = {"unavailable": values}
            else:
                p50, p90 = percentile(values, 50), percentile(values, 90)
                table_rows.append([name, what, p50, p90])
                figures[name] = {"p50_ms": round(p50, 2), "p90_ms": round(p90, 2)}
        print(table(["case", "request", "p50 ms", "p90 ms"], table_rows))
        for name, _, values in results:
            if isinstance(values, str):
                print(f"  {name}: {values}")
        emit_json(figures)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
