"""Health on the Postgres store by finished history (issue 11: "under 10 ms with 1M finished
jobs on SQLite, and on Postgres").

A throwaway PostgreSQL server (tests/pg.py) gets the store's SQL, then finished jobs are
bulk-loaded with plain SQL (triggers off for the load, then ``job_counts`` filled from the rows
as its triggers would have; ``analyze`` as autovacuum would), a few live and pending ones on
top. At each history size the script times, in this process, on a fresh ``PostgresStore``:
``store.counts()``, ``store.list(statuses=LIVE)`` (what health reads) and
``JobService.health()`` (uncached: what the CLI and the bridge's expired snapshot pay), and
prints p50 (p90) of ``--reps`` calls, the machine, and a JSON line.

    python scripts/bench_health_postgres.py [--sizes 0,100000,1000000] [--reps 200]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common as bc  # puts the repo root on sys.path
import psycopg

from bridge.service import JobService
from bridge.sqlcli import apply_sql
from bridge.stores.postgres import PostgresStore
from supervisor.job import LIVE, JobSpec, Status
from supervisor.settings import load_settings
from tests import pg

LOAD = """
insert into public.jobs (status, created_at, updated_at, kind, payload, priority, attempt,
                         run_after, started_at, finished_at, finished_by, exit_code, version)
select (array['completed', 'completed', 'completed', 'failed', 'cancelled'])[1 + g %% 5],
       now() - make_interval(secs => %(n)s - g), now() - make_interval(secs => %(n)s - g),
       'kind-' || (g %% 8), '{}'::jsonb, 0, 1,
       now() - make_interval(secs => %(n)s - g), now() - make_interval(secs => %(n)s - g),
       now() - make_interval(secs => %(n)s - g) + interval '1 second', 'bench', 0, 3
from generate_series(%(start)s, %(stop)s) g
"""
RECOUNT = """
delete from public.job_counts;
insert into public.job_counts (owner_key, status, slot, n)
select coalesce(owner_id::text, ''), status, id % 16, count(*)
from public.jobs where status in ('completed', 'failed', 'cancelled')
group by 1, 2, 3;
"""


def timed(call: Callable[[], Any], reps: int) -> tuple[float, float]:
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9)]


def fill(dsn: str, have: int, want: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set session_replication_role = replica")  # the load without row triggers
        for start in range(have + 1, want + 1, 100_000):
            conn.execute(LOAD, {"n": want, "start": start, "stop": min(start + 99_999, want)})
        conn.execute("set session_replication_role = origin")
        conn.execute(RECOUNT)
        conn.execute("analyze public.jobs")
        conn.execute("analyze public.job_counts")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,100000,1000000", help="finished jobs, comma-separated, ascending")
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    server = pg.server(lambda why: sys.exit(why), lambda why: sys.exit(why))
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("drop database if exists bench_health with (force)")
        conn.execute("create database bench_health template template0")
    dsn = server.dsn("bench_health")
    with psycopg.connect(dsn) as conn:
        apply_sql(conn)
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    have = 0
    with (
        tempfile.TemporaryDirectory(prefix="as-bench-health-pg-") as tmp,
        bc.isolated_settings_env(Path(tmp) / "data"),
    ):
        settings = load_settings()
        seeded = False
        for size in sizes:
            started = time.monotonic()
            fill(dsn, have, size)
            have = size
            store = PostgresStore(dsn)
            try:
                if not seeded:  # a queue that is not empty: pending and live jobs on top
                    store.enqueue([JobSpec(kind="work") for _ in range(20)])
                    store.claim("bench", 4, lease_s=600)
                    seeded = True
                print(f"{size:,} finished jobs loaded in {time.monotonic() - started:.1f} s; measuring ...")
                by = store.counts().by_status
                finished = sum(by[s] for s in (Status.COMPLETED, Status.FAILED, Status.CANCELLED))
                if finished != size:  # the counters the triggers keep must match the rows
                    sys.exit(f"counts() says {finished:,} finished jobs; the table holds {size:,}")
                service = JobService(settings, store)
                for name, call in (
                    ("store.counts()", store.counts),
                    ("store.list(statuses=LIVE)", functools.partial(store.list, statuses=LIVE)),
                    ("JobService.health()", service.health),
                ):
                    call()  # the first call prepares the statement
                    rows.setdefault(name, {})[size] = timed(call, args.reps)
            finally:
                store.close()
    print(f"\n{bc.machine_line()}")
    print("health on Postgres by finished history, in-process p50 (p90) ms, over a local socket")
    print(f"{'ms':<28}" + "".join(f"{f'{s:,} jobs':>18}" for s in sizes))
    for name, by_size in rows.items():
        print(f"{name:<28}" + "".join(f"{f'{p50:.3f} ({p90:.3f})':>18}" for p50, p90 in by_size.values()))
    worst = max(p50 for p50, _ in rows["JobService.health()"].values())
    print(f"goal: JobService.health() p50 < 10 ms at every size: {'met' if worst < 10 else 'NOT met'}")
    bc.emit_json(
        {
            "benchmark": "health_postgres",
            "sizes": sizes,
            "p50_ms": {name: {str(s): round(v[0], 3) for s, v in by.items()} for name, by in rows.items()},
            "goal_met": worst < 10,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
