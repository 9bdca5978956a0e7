"""Requests a supervisor makes to a remote store, idle and busy (issue 10, "Request budget").

On a throwaway PostgreSQL server (tests/pg.py), for the Supabase store (the production client
over a loopback socket to the Supabase stand-in, with Realtime: tests/standin/) and for the
Postgres store, a supervisor runs in this process:

- idle: on an empty store, for ``--idle-s`` seconds after a warm-up: requests per minute by
  function (the budget: no claims while the push channel is live, at most one per ``poll_s``
  otherwise; reaping every ``reap_s``), plus the server's transactions per second;
- busy: ``--jobs`` jobs of ``/bin/true`` at ``--concurrency``: requests per job by function
  and per minute (the budget: claim + mark_running + finish per job, one heartbeat per
  interval for all running jobs).

    python scripts/bench_remote_requests.py [--jobs 1000] [--concurrency 4] [--idle-s 20]

Requests are counted at the store's transport (every call it sends, retries included).
Prints a table per store and one line of JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common as bc  # puts the repo root on sys.path
import psycopg
from pydantic import SecretStr

from bridge.stores.postgres import PostgresStore
from bridge.stores.supabase import SupabaseStore
from supervisor.lifecycle import JobSpec, Status
from supervisor.runner import Supervisor
from supervisor.settings import load_settings
from tests import pg
from tests.standin.counting import counting
from tests.standin.postgrest import PostgrestStandin


def xacts(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def supervisor(store: Any, data_dir: Path, concurrency: int) -> Supervisor:
    settings = load_settings(
        data_dir=data_dir,
        kinds={"true": {"argv": ["/bin/true"]}},
        concurrency=concurrency,
        heartbeat_s=5,
        lease_s=60,
        poll_s=5,
    )
    return Supervisor(settings, store, install_signal_handlers=False)


def measure(name: str, store: Any, dsn: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sup = supervisor(store, tmp / f"{name}-idle", args.concurrency)
    thread = sup.start()
    try:
        time.sleep(args.warmup_s)  # start-up calls (identity, reconcile, first claim) settle
        before, tx0, t0 = store.snapshot(), xacts(dsn), time.monotonic()
        time.sleep(args.idle_s)
        after, tx1, t1 = store.snapshot(), xacts(dsn), time.monotonic()
    finally:
        sup.stop(drain=False, timeout=10)
        thread.join(timeout=10)
    minutes = (t1 - t0) / 60
    idle = {fn: round(n / minutes, 1) for fn, n in sorted((after - before).items())}
    idle_tx = (tx1 - tx0) / (t1 - t0)

    ids = store.enqueue([JobSpec(kind="true") for _ in range(args.jobs)])
    sup = supervisor(store, tmp / f"{name}-busy", args.concurrency)
    before, started = store.snapshot(), time.monotonic()
    thread = sup.start(until_idle=True)
    thread.join(timeout=1800)
    elapsed = time.monotonic() - started
    sup.stop(drain=False, timeout=10)
    busy = store.snapshot() - before
    done = store.counts().by_status[Status.COMPLETED]
    return {
        "idle_requests_per_min": idle,
        "idle_total_per_min": round(sum(idle.values()), 1),
        "idle_server_xact_per_s": round(idle_tx, 2),
        "busy_jobs": len(ids),
        "busy_completed": done,
        "busy_s": round(elapsed, 1),
        "busy_requests_per_job": {fn: round(n / len(ids), 3) for fn, n in sorted(busy.items())},
        "busy_requests_per_min": round(sum(busy.values()) / (elapsed / 60), 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    args = parser.parse_args()
    server = pg.server(lambda m: sys.exit(f"skip: {m}"), lambda m: sys.exit(m))
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
            for name in ("supabase", "postgres"):
                db = server.create_database()
                dsn = server.dsn(db)
                standin = PostgrestStandin(dsn, realtime=True) if name == "supabase" else None
                if standin is not None:
                    store = counting(SupabaseStore)(standin.url, SecretStr(standin.service_key))
                else:
                    store = counting(PostgresStore)(dsn)
                try:
                    results[name] = measure(name, store, dsn, args, Path(tmp))
                finally:
                    store.close()
                    if standin is not None:
                        standin.close()
                    server.drop_database(db)
    finally:
        pg.stop_server()
    rows = []
    for name, r in results.items():
        rows.append([name, "idle /min", r["idle_total_per_min"], r["idle_requests_per_min"]])
        rows.append([name, "idle server xact/s", r["idle_server_xact_per_s"], ""])
        rows.append(
            [
                name,
                f"busy /job ({r['busy_completed']} jobs, {r['busy_s']} s)",
                round(sum(r["busy_requests_per_job"].values()), 2),
                r["busy_requests_per_job"],
            ]
        )
        rows.append([name, "busy /min", r["busy_requests_per_min"], ""])
    print(bc.table(["store", "what", "requests", "by function"], rows))
    print(bc.machine_line())
    bc.emit_json(
        {"results": results, "jobs": args.jobs, "concurrency": args.concurrency, "idle_s": args.idle_s}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
