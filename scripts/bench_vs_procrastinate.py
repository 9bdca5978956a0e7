"""agent-supervisor's Postgres store against Procrastinate on the same PostgreSQL server
(issue 10, part D).

Procrastinate (the closest peer: a Postgres job queue) is installed from PyPI into a virtualenv
of its own under a temp dir, as this benchmark's own set-up; it is never a dependency of this
project. Both run on one throwaway PostgreSQL server (tests/pg.py), each in its own database,
in interleaved runs (the order alternates), and the script prints medians:

- throughput: ``--jobs`` jobs that each run ``/bin/true``, at ``--concurrency`` (agent-supervisor:
  ``python -m bridge run --until-idle``; Procrastinate: ``procrastinate worker --one-shot`` with
  a task that runs ``/bin/true`` in a subprocess); jobs/s from the first job's start to the
  last job's end (the server's own timestamps), and the ratio ours / Procrastinate's;
- server CPU per job: the CPU time of every PostgreSQL process over the run / jobs;
- idle: with the worker running and nothing to do, the server's transactions per second and
  the worker's CPU % over ``--idle-s``;
- submit → start: with an idle worker, ``--samples`` jobs submitted one at a time; the time
  from the submitting commit to the agent's (task's) start, by the server's clock; p50.

    python scripts/bench_vs_procrastinate.py [--jobs 1000] [--concurrency 2] [--runs 3]
                                             [--idle-s 20] [--samples 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common as bc  # puts the repo root on sys.path
import psutil
import psycopg

from bridge.sqlcli import apply_sql
from bridge.stores.postgres import PostgresStore
from supervisor.lifecycle import JobSpec
from tests import pg

TASKS = """
import os, subprocess
from procrastinate import App, PsycopgConnector
app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_DSN"]))

@app.task(name="true")
def true():
    subprocess.run(["/bin/true"], check=True)
"""
HELPER = """
import json, sys, time
import psycopg
from bench_tasks import app, true
cmd, dsn = sys.argv[1], sys.argv[2]
if cmd == "defer":
    with app.open():
        true.batch_defer(*[{}] * int(sys.argv[3]))
elif cmd == "latency":
    delays = []
    with app.open(), psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(int(sys.argv[3])):
            job_id = true.defer()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = conn.execute(
                    "select extract(epoch from s.at - d.at) from procrastinate_events d"
                    " join procrastinate_events s on s.job_id = d.job_id and s.type = 'started'"
                    " where d.job_id = %s and d.type = 'deferred'", (job_id,)).fetchone()
                if row:
                    delays.append(float(row[0]))
                    break
                time.sleep(0.002)
            while conn.execute("select status from procrastinate_jobs where id = %s",
                               (job_id,)).fetchone()[0] != "succeeded":
                time.sleep(0.002)
    print(json.dumps(delays))
"""


def server_cpu(server: pg.PgServer) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster, its live children, and the
    children that already exited (counted into the postmaster's children times)."""
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    master = psutil.Process(pid)
    times = master.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in master.children():
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def xacts(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


class Ours:
    name = "agent-supervisor"

    def __init__(self, server: pg.PgServer, tmp: Path, concurrency: int) -> None:
        self.server, self.tmp, self.concurrency = server, tmp, concurrency
        self.kinds = json.dumps({"true": {"argv": ["/bin/true"]}})

    def fresh(self, tag: str) -> str:
        name = f"ours_{tag}"
        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")
            conn.execute(f"create database {name} template template0")
        dsn = self.server.dsn(name)
        with psycopg.connect(dsn) as conn:
            apply_sql(conn)
        return dsn

    def submit(self, dsn: str, n: int) -> None:
        store = PostgresStore(dsn)
        try:
            for start in range(0, n, 500):
                store.enqueue([JobSpec(kind="true") for _ in range(min(500, n - start))])
        finally:
            store.close()

    def worker(self, dsn: str, tag: str, *, until_idle: bool) -> subprocess.Popen[bytes]:
        data = self.tmp / f"data-{tag}-{time.monotonic_ns()}"
        env = bc.child_env(data, AGENT_SUPERVISOR_KINDS=self.kinds)
        argv = [sys.executable, "-m", "bridge", "--store", dsn, "run", "--concurrency", str(self.concurrency)]
        return subprocess.Popen(
            [*argv, "--until-idle"] if until_idle else argv,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def span(self, dsn: str) -> tuple[int, float]:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "select count(*), extract(epoch from max(finished_at) - min(started_at)) from public.jobs"
                " where status = 'completed'"
            ).fetchone()
        assert row is not None
        return int(row[0]), float(row[1] or 0)

    def latency(self, dsn: str, samples: int) -> list[float]:
        store = PostgresStore(dsn)
        delays = []
        try:
            for _ in range(samples):
                [job_id] = store.enqueue([JobSpec(kind="true")])
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    job = store.get(job_id)
                    if job.finished_at is not None:
                        break
                    time.sleep(0.002)
                if job.started_at is not None:
                    delays.append(job.started_at - job.created_at)
        finally:
            store.close()
        return delays


class Theirs:
    name = "procrastinate"

    def __init__(self, server: pg.PgServer, tmp: Path, concurrency: int) -> None:
        self.server, self.tmp, self.concurrency = server, tmp, concurrency
        self.venv = tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        subprocess.run(
            [str(self.venv / "bin" / "pip"), "install", "-q", "procrastinate", "psycopg[binary]"], check=True
        )
        (tmp / "bench_tasks.py").write_text(TASKS)
        (tmp / "bench_helper.py").write_text(HELPER)
        self.version = subprocess.run(
            [
                str(self.venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('procrastinate'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def _env(self, dsn: str) -> dict[str, str]:
        return {**os.environ, "BENCH_DSN": dsn, "PYTHONPATH": str(self.tmp)}

    def fresh(self, tag: str) -> str:
        name = f"theirs_{tag}"
        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")
            conn.execute(f"create database {name} template template0")
        dsn = self.server.dsn(name)
        subprocess.run(
            [str(self.venv / "bin" / "procrastinate"), "--app=bench_tasks.app", "schema", "--apply"],
            env=self._env(dsn),
            check=True,
            capture_output=True,
        )
        return dsn

    def submit(self, dsn: str, n: int) -> None:
        subprocess.run(
            [str(self.venv / "bin" / "python"), str(self.tmp / "bench_helper.py"), "defer", dsn, str(n)],
            env=self._env(dsn),
            check=True,
        )

    def worker(self, dsn: str, tag: str, *, until_idle: bool) -> subprocess.Popen[bytes]:
        argv = [
            str(self.venv / "bin" / "procrastinate"),
            "--app=bench_tasks.app",
            "worker",
            f"--concurrency={self.concurrency}",
        ]
        if until_idle:
            argv.append("--one-shot")
        return subprocess.Popen(
            argv, env=self._env(dsn), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def span(self, dsn: str) -> tuple[int, float]:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "select (select count(*) from procrastinate_jobs where status = 'succeeded'),"
                " extract(epoch from max(at) filter (where type = 'succeeded')"
                " - min(at) filter (where type = 'started')) from procrastinate_events"
            ).fetchone()
        assert row is not None
        return int(row[0]), float(row[1] or 0)

    def latency(self, dsn: str, samples: int) -> list[float]:
        out = subprocess.run(
            [
                str(self.venv / "bin" / "python"),
                str(self.tmp / "bench_helper.py"),
                "latency",
                dsn,
                str(samples),
            ],
            env=self._env(dsn),
            check=True,
            capture_output=True,
            text=True,
        )
        return [float(x) for x in json.loads(out.stdout)]


def throughput(system: Any, server: pg.PgServer, jobs: int, tag: str) -> dict[str, float]:
    dsn = system.fresh(tag)
    system.submit(dsn, jobs)
    cpu0 = server_cpu(server)
    proc = system.worker(dsn, tag, until_idle=True)
    try:
        proc.wait(timeout=900)
    finally:
        bc.stop_process(proc)
    cpu = server_cpu(server) - cpu0
    done, seconds = system.span(dsn)
    if done != jobs:
        raise SystemExit(f"{system.name}: {done} of {jobs} jobs completed")
    return {"jobs_per_s": jobs / seconds, "server_cpu_ms_per_job": cpu * 1000 / jobs}


def idle_and_latency(
    system: Any, server: pg.PgServer, idle_s: float, samples: int, tag: str
) -> dict[str, float]:
    dsn = system.fresh(tag)
    proc = system.worker(dsn, tag, until_idle=False)
    try:
        time.sleep(3.0)  # start-up settles
        worker = psutil.Process(proc.pid)
        c0, x0, t0 = worker.cpu_times(), xacts(dsn), time.monotonic()
        time.sleep(idle_s)
        c1, x1, t1 = worker.cpu_times(), xacts(dsn), time.monotonic()
        delays = system.latency(dsn, samples)
    finally:
        bc.stop_process(proc)
    busy = (c1.user + c1.system) - (c0.user + c0.system)
    return {
        "idle_server_xact_per_s": (x1 - x0 - 1) / (t1 - t0),  # minus the measuring transaction
        "idle_worker_cpu_pct": 100 * busy / (t1 - t0),
        "submit_to_start_p50_ms": 1000 * statistics.median(delays) if delays else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    server = pg.server(lambda m: sys.exit(f"skip: {m}"), lambda m: sys.exit(m))
    results: dict[str, dict[str, list[float]]] = {"agent-supervisor": {}, "procrastinate": {}}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-vs-procrastinate-") as tmp,
            bc.isolated_settings_env(Path(tmp)),
        ):
            systems = [
                Ours(server, Path(tmp), args.concurrency),
                Theirs(server, Path(tmp), args.concurrency),
            ]
            version = systems[1].version
            for run in range(args.runs):
                for system in systems if run % 2 == 0 else systems[::-1]:
                    figures = {
                        **throughput(system, server, args.jobs, f"t{run}"),
                        **idle_and_latency(system, server, args.idle_s, args.samples, f"i{run}"),
                    }
                    for key, value in figures.items():
                        results[system.name].setdefault(key, []).append(value)
                    shown = {k: round(v, 2) for k, v in figures.items()}
                    print(f"run {run + 1}: {system.name} {json.dumps(shown)}", flush=True)
    finally:
        pg.stop_server()
    med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    ours, theirs = med["agent-supervisor"], med["procrastinate"]
    ratio = ours["jobs_per_s"] / theirs["jobs_per_s"]
    keys = [
        "jobs_per_s",
        "server_cpu_ms_per_job",
        "idle_server_xact_per_s",
        "idle_worker_cpu_pct",
        "submit_to_start_p50_ms",
    ]
    print(
        bc.table(
            ["median of runs", "agent-supervisor", f"procrastinate {version}"],
            [[k, bc.rnd(ours[k], 2), bc.rnd(theirs[k], 2)] for k in keys],
        )
    )
    print(
        f"throughput ratio (ours / procrastinate): {ratio:.2f}  ({args.jobs} x /bin/true, concurrency "
        f"{args.concurrency}, {args.runs} interleaved runs)"
    )
    print(bc.machine_line())
    bc.emit_json(
        {
            "median": med,
            "runs": results,
            "ratio": ratio,
            "procrastinate": version,
            "jobs": args.jobs,
            "concurrency": args.concurrency,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
