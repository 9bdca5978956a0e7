"""Health at any history size (issue 11, "Health in constant time"): ``health`` must not slow
down as finished jobs pile up. Goal: under 10 ms with 1,000,000 finished jobs on SQLite.

One SQLite store (``<data dir>/jobs.sqlite3``, made by ``SQLiteStore`` with its schema) grows
through the sizes asked (default 0, 100,000 and 1,000,000 finished jobs). The history is
written by bulk SQL, not through ``enqueue``: one ``INSERT ... SELECT`` over a recursive
counter per chunk of 100,000 rows, cloning the rows of three real jobs that a scratch store
took through the real verbs (enqueue → claim → finish: completed, failed; enqueue → cancel:
cancelled), 60/20/20 %, with fresh ids, payloads and times spread over the past 30 days. The
rows go in through SQL, so the schema's triggers keep ``job_counts`` right; after each step the
script checks it against a real ``count(*)``. ``--events-per-job`` adds event rows too (health
reads none; they only make the file bigger).

At each size, on a fresh store object (what a new ``health`` process has):

- ``store.counts()``, ``check_health`` (store + status.json + disk) and
  ``JobService.health()`` (what every front end calls) in-process: p50/p90 of ``--reps`` calls;
- ``python -m bridge health --json`` as a subprocess: median wall of ``--cli-runs``, split by a
  child that times its own imports and the ``main(["health", "--json"])`` call, so that
  Python's start and imports (the same at any size) stand apart from the command's own work;
- the stdio bridge's ``health`` with its cache expired (``--bridge-samples`` requests, each
  after a pause longer than the bridge's 0.5 s cache), on ``bridge --no-run``.

No supervisor runs: status.json is absent, as for a ``health`` between runs. At the largest
size, "where the time goes": each SQL statement ``health`` runs, timed, with its query plan,
and a cProfile of ``JobService.health()``.

    python scripts/bench_health.py [--sizes 0,100000,1000000] [--reps 200] [--cli-runs 7]
                                   [--bridge-samples 5] [--events-per-job 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import bench_common as bc  # puts the repo root on sys.path

from bridge.service import JobService
from bridge.stores.sqlite import SQLiteStore
from supervisor.health import check_health, read_status
from supervisor.lifecycle import LIVE, ErrorKind, JobSpec, Outcome, Status
from supervisor.settings import Settings, load_settings

GOAL_MS: Final = 10.0
CHUNK: Final = 100_000
SPAN_S: Final = 30 * 86400.0
BRIDGE_TTL_S: Final = 0.5  # bridge/jsonrpc/backend.py _HEALTH_TTL_S; we wait a little longer
MIX: Final = ((Status.COMPLETED, 6), (Status.FAILED, 2), (Status.CANCELLED, 2))
"""Finished jobs by status, in tenths of the history."""


# ---------------------------------------------------------------- building the history


def template_rows(tmp: Path) -> tuple[list[str], dict[Status, dict[str, Any]]]:
    """One real row per finished status, made by the store's own verbs on a scratch file."""
    path = tmp / "template.sqlite3"
    store = SQLiteStore(path)
    try:
        spec = JobSpec(command=("/bin/true",), payload={"n": 0}, max_attempts=1)
        done, _failed, cancelled = store.enqueue([spec, spec, spec])
        store.request_cancel(cancelled)
        for job in store.claim("bench-health", 2, lease_s=60):
            store.mark_running(job.id, "bench-health", job.attempt, 1, {})
            outcome = (
                Outcome(exit_code=0)
                if job.id == done
                else Outcome(error_kind=ErrorKind.EXIT_CODE, exit_code=1, error="exit code 1")
            )
            store.finish(job.id, "bench-health", job.attempt, outcome)
    finally:
        store.close()
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        rows = {Status(r["status"]): dict(r) for r in db.execute("select * from jobs")}
        columns = [r[1] for r in db.execute("pragma table_info(jobs)")]
    finally:
        db.close()
    if set(rows) != {s for s, _ in MIX}:
        raise SystemExit(f"template jobs ended as {sorted(rows)}, not {[str(s) for s, _ in MIX]}")
    return columns, rows


def _insert_sql(columns: list[str], rows: dict[Status, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """``INSERT ... SELECT`` of rows i in [:start, :end]: column by column, the template of the
    row's status (i % 10 picks it, MIX says how), times and payload made from i."""
    params: dict[str, Any] = {}
    bounds, low = [], 0
    for status, tenths in MIX:
        bounds.append((low + tenths, status))
        low += tenths

    def pick(column: str) -> str:
        arms = []
        for n, (upper, status) in enumerate(bounds):
            name = f"{column}_{n}"
            params[name] = rows[status][column]
            arms.append(f"when i % 10 < {upper} then :{name}")
        return "case " + " ".join(arms) + " end"

    time_of = {
        "created_at": ":t0 + i * :step",
        "updated_at": ":t0 + i * :step + 2.0",
        "finished_at": ":t0 + i * :step + 2.0",
        "run_after": ":t0 + i * :step",
    }
    exprs, names = [], []
    for column in columns:
        if column == "id":
            continue  # AUTOINCREMENT hands them out, and keeps sqlite_sequence right
        names.append(column)
        if column in time_of:
            exprs.append(time_of[column])
        elif column == "started_at":
            template = pick("started_at")
            exprs.append(f"case when ({template}) is null then null else :t0 + i * :step + 1.0 end")
        elif column == "payload":
            exprs.append("json_object('n', i)")
        else:
            exprs.append(pick(column))
    # Column names come from pragma table_info, values are bound parameters.
    sql = (
        "with recursive c(i) as (select :start union all select i + 1 from c where i < :end) "
        f"insert into jobs ({', '.join(names)}) select {', '.join(exprs)} from c"
    )
    return sql, params


_EVENTS_SQL: Final = """
insert into job_events (job_id, at, from_status, to_status, reason, decided_by, worker, attempt, facts)
select j.id, j.created_at + k.n * 0.5, null, j.status, 'bench history', 'retry_policy', 'bench-health',
       j.attempt, '{}'
from jobs j, (with recursive e(n) as (select 1 union all select n + 1 from e where n < :k) select n from e) k
where j.id > :after
"""


def grow(db_path: Path, columns: list[str], rows: dict[Status, dict[str, Any]], have: int, want: int,
         events_per_job: int) -> float:  # fmt: skip
    """Add finished jobs from ``have`` to ``want`` by bulk SQL; seconds taken."""
    sql, params = _insert_sql(columns, rows)
    total = max(want, 1)
    params.update(t0=time.time() - SPAN_S, step=SPAN_S / total)
    db = sqlite3.connect(db_path, isolation_level=None)
    t0 = time.perf_counter()
    try:
        db.execute("pragma foreign_keys = on")
        for start in range(have, want, CHUNK):
            end = min(want, start + CHUNK) - 1
            before = db.execute("select coalesce(max(id), 0) from jobs").fetchone()[0]
            db.execute("begin immediate")
            db.execute(sql, {**params, "start": start, "end": end})
            if events_per_job:
                db.execute(_EVENTS_SQL, {"k": events_per_job, "after": before})
            db.execute("commit")
            print(f"  history: {end + 1:,} finished jobs ({time.perf_counter() - t0:.1f} s)", flush=True)
    finally:
        db.close()
    return time.perf_counter() - t0


def check_counts(db_path: Path) -> dict[str, int]:
    """``job_counts`` (kept by the triggers) must equal a real count: the bulk insert kept it."""
    db = sqlite3.connect(db_path)
    try:
        kept = {s: n for s, n in db.execute("select status, n from job_counts") if n}
        real = dict(db.execute("select status, count(*) from jobs group by status").fetchall())
    finally:
        db.close()
    if kept != real:
        raise SystemExit(f"job_counts {kept} disagrees with count(*) {real}: the triggers missed rows")
    return real


# ---------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any], reps: int) -> list[float]:
    """ms of each of ``reps`` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def in_process(settings: Settings, reps: int) -> dict[str, list[float]]:
    store = SQLiteStore(Path(settings.data_dir) / "jobs.sqlite3", create=False)
    try:
        first = time.perf_counter()
        store.counts()
        first_ms = 1e3 * (time.perf_counter() - first)
        service = JobService(settings, store)
        status = read_status(Path(settings.data_dir))
        return {
            "first counts() of a new store object": [first_ms],
            "store.counts()": timed(store.counts, reps),
            "store.list(statuses=LIVE)": timed(lambda: store.list(statuses=LIVE), reps),
            "check_health": timed(lambda: check_health(store, settings, worker_id=None, status=status), reps),
            "JobService.health()": timed(service.health, reps),
        }
    finally:
        store.close()


_CHILD: Final = r"""
import io, json, sys, time, contextlib
t0 = time.perf_counter()
import bridge.cli
t1 = time.perf_counter()
import bridge.cli.commands, bridge.compose, bridge.service, supervisor.settings
parts = {}
def timed(owner, attr, label):
    inner = getattr(owner, attr)
    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            parts[label] = parts.get(label, 0.0) + 1e3 * (time.perf_counter() - s)
    setattr(owner, attr, wrapper)
timed(bridge.cli, "build_parser", "parser")
timed(supervisor.settings, "load_settings", "settings")
timed(bridge.compose, "build_store", "store")
timed(bridge.service.JobService, "health", "service")
timed(bridge.cli.commands, "_dump", "render")
runs = []
for _ in range(2):
    parts.clear()
    out = io.StringIO()
    s = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = bridge.cli.main(["health", "--json"])
    runs.append({"main": 1e3 * (time.perf_counter() - s), **parts})
    json.loads(out.getvalue())
    assert rc == 0, rc
print(json.dumps({"import_ms": 1e3 * (t1 - t0), "first": runs[0], "again": runs[1]}))
"""


def cli(data: Path, runs: int) -> dict[str, float]:
    """Median wall of ``python -m bridge health --json`` and of ``python -c pass``
    (interleaved), and the child's own split: imports, first and second ``main()``."""
    env = bc.child_env(data)
    walls, passes, splits = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "bridge", "health", "--json"],
            cwd=bc.ROOT, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        walls.append(1e3 * (time.perf_counter() - t0))
        if out.returncode != 0:
            raise SystemExit(f"health --json exited {out.returncode}: {out.stderr.strip()}")
        json.loads(out.stdout)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], cwd=bc.ROOT, env=env, check=True)
        passes.append(1e3 * (time.perf_counter() - t0))
        split = subprocess.run(
            [sys.executable, "-c", _CHILD], cwd=bc.ROOT, env=env, capture_output=True, text=True, check=True
        )
        splits.append(json.loads(split.stdout.strip().splitlines()[-1]))
    split: dict[str, float] = {
        "wall_ms": bc.median(walls),
        "python_pass_ms": bc.median(passes),
        "import_ms": bc.median([s["import_ms"] for s in splits]),
    }
    for run in ("first", "again"):
        for part in CLI_PARTS:
            split[f"{run}_{part}_ms"] = bc.median([s[run].get(part, 0.0) for s in splits])
    return split


CLI_PARTS: Final = ("main", "parser", "settings", "store", "service", "render")
"""The child's split of one ``main(["health", "--json"])``: the whole call, building the argparse
parser, load_settings, build_store (opening the SQLite file), JobService.health, JSON output."""


def bridge_uncached(data: Path, samples: int) -> list[float]:
    """ms of ``health`` round trips over the stdio bridge (``--no-run``), each after the
    bridge's health cache has expired."""
    if samples <= 0:
        return []
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "bridge", "--no-run"],
        cwd=bc.ROOT, env=bc.child_env(data), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    out = []
    try:
        for n in range(samples + 1):
            time.sleep(BRIDGE_TTL_S + 0.1)
            t0 = time.perf_counter()
            proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": n, "method": "health"}).encode() + b"\n")
            proc.stdin.flush()
            reply = json.loads(proc.stdout.readline() or b"{}")
            ms = 1e3 * (time.perf_counter() - t0)
            if "result" not in reply:
                raise SystemExit(f"bridge health: {str(reply)[:300]}")
            if n:  # the first one imports the health code: a warm-up
                out.append(ms)
    finally:
        bc.stop_process(proc)
    return out


# ---------------------------------------------------------------- where the time goes


def statements(db_path: Path, reps: int) -> list[tuple[str, float, str]]:
    """Each statement health runs: p50 ms and SQLite's query plan."""
    from bridge.stores.sqlite_db import sql

    live = json.dumps([str(s) for s in LIVE])
    queries = [
        ("counts", sql("counts"), ()),
        ("oldest_running", sql("oldest_running"), ()),
        ("oldest_pending", sql("oldest_pending"), ()),
        (
            "list(statuses=LIVE)",
            "select * from jobs where status in (select value from json_each(?)) "
            "order by id desc limit ? offset ?",
            (live, -1, 0),
        ),
    ]
    db = sqlite3.connect(db_path)
    rows = []
    try:
        for name, statement, params in queries:
            plan = "; ".join(r[3] for r in db.execute("explain query plan " + statement, params))
            ms = bc.percentile(timed(lambda s=statement, p=params: db.execute(s, p).fetchall(), reps), 50)
            rows.append((name, ms, plan))
    finally:
        db.close()
    return rows


def profile(settings: Settings, calls: int, top: int) -> str:
    store = SQLiteStore(Path(settings.data_dir) / "jobs.sqlite3", create=False)
    try:
        service = JobService(settings, store)
        service.health()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            service.health()
        prof.disable()
    finally:
        store.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue().strip()


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,100000,1000000", help="finished jobs, comma-separated, ascending")
    ap.add_argument("--reps", type=int, default=200, help="in-process calls per figure")
    ap.add_argument("--cli-runs", type=int, default=7)
    ap.add_argument("--bridge-samples", type=int, default=5, help="uncached bridge health requests (0: skip)")
    ap.add_argument("--events-per-job", type=int, default=0)
    ap.add_argument("--profile-calls", type=int, default=100)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--keep", type=Path, default=None, help="build in DIR and keep it (else a temp dir)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        raise SystemExit("--sizes must be ascending: the history only grows")

    root = args.keep or Path(tempfile.mkdtemp(prefix="as-bench-health-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    results: list[dict[str, Any]] = []
    plan: list[tuple[str, float, str]] = []
    prof_text = ""
    try:
        columns, templates = template_rows(root)
        with bc.isolated_settings_env(data):
            settings = load_settings(data_dir=data)
        SQLiteStore(data / "jobs.sqlite3").close()  # the schema, as a first run makes it
        db_path = data / "jobs.sqlite3"
        have = 0
        for size in sizes:
            build_s = grow(db_path, columns, templates, have, size, args.events_per_job)
            have = size
            real = check_counts(db_path)
            print(f"{size:,} finished jobs ({real}); measuring ...", flush=True)
            ops = in_process(settings, args.reps)
            c = cli(data, args.cli_runs)
            b = bridge_uncached(data, args.bridge_samples)
            results.append(
                {
                    "size": size,
                    "build_s": build_s,
                    "db_mb": sum(p.stat().st_size for p in data.glob("jobs.sqlite3*")) / 1e6,
                    "ops": {k: (bc.percentile(v, 50), bc.percentile(v, 90)) for k, v in ops.items()},
                    "cli": c,
                    "bridge": (bc.percentile(b, 50), max(b)) if b else None,
                }
            )
        plan = statements(db_path, min(args.reps, 50))
        prof_text = profile(settings, args.profile_calls, args.top)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"machine: {bc.machine_line()}")
    print(
        f"health on SQLite by finished history; in-process p50 (p90) of {args.reps} calls on a fresh store "
        f"object, CLI median of {args.cli_runs}; no supervisor running"
    )
    names = list(results[0]["ops"])
    header = ["ms", *[f"{r['size']:,} jobs" for r in results]]
    rows: list[list[Any]] = []
    for name in names:
        rows.append([name, *[_pp(r["ops"][name]) for r in results]])
    rows.append(["health --json: CLI wall", *[round(r["cli"]["wall_ms"], 1) for r in results]])
    rows.append(
        ["  python -c pass (interpreter start)", *[round(r["cli"]["python_pass_ms"], 1) for r in results]]
    )
    rows.append(["  import bridge.cli", *[round(r["cli"]["import_ms"], 1) for r in results]])
    labels = {
        "main": "main(['health', '--json'])",
        "parser": "  build the argparse parser",
        "settings": "  load_settings",
        "store": "  build_store (open the file)",
        "service": "  JobService.health()",
        "render": "  JSON output",
    }
    for run, what in (("first", "  first call (lazy imports)"), ("again", "  again, same process")):
        rows.append([what, *["" for _ in results]])
        for part in CLI_PARTS:
            rows.append(["  " + labels[part], *[round(r["cli"][f"{run}_{part}_ms"], 2) for r in results]])
    if all(r["bridge"] for r in results):
        rows.append(["bridge health, cache expired (p50)", *[round(r["bridge"][0], 2) for r in results]])
    rows.append(["(database MB)", *[round(r["db_mb"], 1) for r in results]])
    rows.append(["(history build s)", *[round(r["build_s"], 1) for r in results]])
    print(bc.table(header, rows))

    biggest, empty = results[-1], results[0]
    service_ms = biggest["ops"]["JobService.health()"][0]
    bridge_ms = biggest["bridge"][0] if biggest["bridge"] else None
    met = service_ms < GOAL_MS and (bridge_ms is None or bridge_ms < GOAL_MS)
    grown = {
        "JobService.health()": service_ms - empty["ops"]["JobService.health()"][0],
        "CLI main() after imports": biggest["cli"]["first_main_ms"] - empty["cli"]["first_main_ms"],
        "CLI wall": biggest["cli"]["wall_ms"] - empty["cli"]["wall_ms"],
    }
    print()
    bridge_text = f", the bridge's uncached health {bridge_ms:.2f} ms" if bridge_ms is not None else ""
    print(
        f"goal: health < {GOAL_MS:g} ms at {biggest['size']:,} finished jobs: JobService.health() "
        f"{service_ms:.2f} ms{bridge_text} -> {'MET' if met else 'MISSED'}"
    )
    print(
        f"the CLI: {biggest['cli']['wall_ms']:.0f} ms wall, of which the health command after its imports "
        f"{biggest['cli']['first_main_ms']:.1f} ms; the history's share (vs {empty['size']:,} jobs): "
        + ", ".join(f"{k} {v:+.2f} ms" for k, v in grown.items())
    )
    print(
        "  (Python's start, the imports, the parser, the settings and opening the file do not depend on "
        "the history; the CLI's wall moves with the machine's load)"
    )
    print()
    print(f"where the time goes at {biggest['size']:,} jobs — each statement health runs (p50, plan):")
    print(bc.table(["statement", "ms", "plan"], plan))
    print()
    print(
        f"cProfile of {args.profile_calls} JobService.health() calls at {biggest['size']:,} jobs, "
        "by own time:"
    )
    print(prof_text)
    print()
    bc.emit_json(
        {
            "benchmark": "health",
            "store": "sqlite",
            "reps": args.reps,
            "cli_runs": args.cli_runs,
            "events_per_job": args.events_per_job,
            "statistic": "p50 in-process, median CLI",
            "by_size": [
                {
                    "finished_jobs": r["size"],
                    "db_mb": round(r["db_mb"], 1),
                    **{_key(k): round(v[0], 3) for k, v in r["ops"].items()},
                    "cli_wall_ms": round(r["cli"]["wall_ms"], 1),
                    "cli_python_start_ms": round(r["cli"]["python_pass_ms"], 1),
                    "cli_import_ms": round(r["cli"]["import_ms"], 1),
                    **{
                        f"cli_{run}_{part}_ms": round(r["cli"][f"{run}_{part}_ms"], 2)
                        for run in ("first", "again")
                        for part in CLI_PARTS
                    },
                    "bridge_uncached_ms": round(r["bridge"][0], 2) if r["bridge"] else None,
                }
                for r in results
            ],
            "statements_at_largest_ms": {name: round(ms, 3) for name, ms, _ in plan},
            "goal_ms": GOAL_MS,
            "goal_met": met,
            "growth_vs_smallest_ms": {k: round(v, 2) for k, v in grown.items()},
        }
    )
    return 0


def _pp(p: tuple[float, float]) -> str:
    return f"{p[0]:.3f} ({p[1]:.3f})"


def _key(label: str) -> str:
    keys = {
        "first counts() of a new store object": "first_counts_ms",
        "store.counts()": "counts_ms",
        "store.list(statuses=LIVE)": "list_live_ms",
        "check_health": "check_health_ms",
        "JobService.health()": "service_health_ms",
    }
    return keys[label]


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
