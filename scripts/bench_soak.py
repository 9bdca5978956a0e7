"""Soak (issue 11, "What it must show"): a real supervisor runs >= 100,000 tiny jobs with retention
on, and nothing it holds or writes grows with the number of jobs done.

A real ``python -m bridge run`` (the ``agent-supervisor run`` command) runs on a fresh data dir
with retention shortened (``--retention-s``, a ``--files-max-mb`` cap, a sweep every
``--retention-every-s``); a feeder — another process, this script with ``--feeder`` — keeps
the queue topped up in batches through its own ``SQLiteStore`` on the same file (each batch
reaches the idle supervisor as a FIFO change hint). The agents are ``/bin/true`` (or
``--agent echo``: ``sh -c 'echo x'``, one line of log each); ``--rate`` caps the feed (jobs/s),
so that the retention window holds a steady number of jobs' files. Job rows are kept (row retention is
off by default), so the history grows to ``--jobs`` while health must stay flat.

Every ``--sample-s`` (default 30 s) this process samples:

- the supervisor process: RSS, USS, open fds, threads, CPU % and wake-ups (voluntary context
  switches of all threads) since the last sample;
- ``runs/`` + ``logs/``: bytes (apparent, ``st_size``, what ``files_max_bytes`` counts, and
  allocated, ``st_blocks``, what the disk gives up) and inodes (files and dirs); the SQLite file
  with its WAL;
- ``python -m bridge health --json`` (a subprocess: wall ms, median of ``--health-runs``) and
  ``check_health`` / ``JobService.health()`` in-process on a store object of this process
  (median of 5 calls each);
- jobs done and pending, and the rate since the last sample.

Then a table of the samples, a verdict and the JSON line. The verdict leaves out a warm-up
(the first 10 % of the jobs) and compares the median of the last third of the remaining
samples with the median of the first third ("growth"), and also fits a least-squares slope:

- RSS and USS flat after the retention horizon (before it, the window of kept files is still
  filling up): growth <= max(2 MB, 5 %); fds and threads flat: growth <= 1;
- disk bounded: time-based retention keeps the files of the jobs that finished in the last
  ``max(retention_s, 120 s) + retention_every_s`` (retention never deletes files younger than
  120 s, ``supervisor.retention._MIN_AGE_S``), so the bytes and inodes on disk move with the
  rate. Once the horizon is past (that period plus a sweep), the files kept *per job finished in
  that period* must not grow (<= 15 %): files never deleted would make it climb. "not shown"
  when fewer than 4 samples fall after the horizon. Also printed: how RSS follows the files
  kept (correlation, MB per 10,000 inodes);
- health flat: growth <= max(1 ms, 25 %) in-process, <= max(50 ms, 25 %) for the CLI (its wall is
  mostly Python's start and imports and moves with the machine's load, so each third counts by
  its fastest run).

    python scripts/bench_soak.py [--jobs 100000] [--sample-s 30] [--concurrency 2]
        [--retention-s 180] [--files-max-mb 16] [--retention-every-s 15] [--batch 500]
        [--low-water 1000] [--agent true|echo] [--rate JOBS_PER_S] [--health-runs 1]
        [--max-minutes M] [--keep DIR]

A quick check that it works: ``--jobs 5000 --sample-s 5`` (the disk verdict then says "not
shown": the run is shorter than the retention horizon). Ctrl-C (or SIGTERM) stops the feeder
and the supervisor, prints what was sampled so far, and removes the temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import bench_common as bc  # puts the repo root on sys.path
import psutil

MB: Final = 1e6
MIN_AGE_S: Final = 120.0  # supervisor/retention.py _MIN_AGE_S: younger files are never deleted
AGENTS: Final = {"true": ["/bin/true"], "echo": ["/bin/sh", "-c", "echo x"]}
FINISHED: Final = ("completed", "failed", "cancelled")


# ---------------------------------------------------------------- the feeder (another process)


def feeder(data: Path, jobs: int, batch: int, low_water: int, argv: list[str], rate: float | None) -> int:
    """Keep at least ``low_water`` jobs pending, ``batch`` at a time, until ``jobs`` were fed;
    with ``rate``, never more than ``rate`` jobs per second since the start."""
    from bridge.compose import build_store
    from supervisor.lifecycle import JobSpec, Status
    from supervisor.runner import resolve_spec
    from supervisor.settings import load_settings

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = load_settings(data_dir=data)
    store = build_store(settings)
    try:
        spec = resolve_spec(JobSpec(command=tuple(argv)), settings)
        fed, t0 = 0, time.monotonic()
        while fed < jobs:
            allowed = jobs if rate is None else int(rate * (time.monotonic() - t0))
            n = min(batch, jobs - fed, allowed - fed)
            if n > 0 and store.counts().by_status.get(Status.PENDING, 0) < low_water:
                store.enqueue([spec] * n)
                fed += n
            else:
                time.sleep(0.1)  # the feeder may poll: it stands for users, not for the supervisor
        print(f"fed {fed} jobs", flush=True)
    finally:
        store.close()
    return 0


# ---------------------------------------------------------------- sampling


def tree_use(*tops: Path) -> dict[str, int]:
    """Apparent bytes, allocated bytes and inodes (files + dirs) under ``tops``, not following links."""
    apparent = allocated = inodes = 0
    stack = [str(t) for t in tops if t.exists()]
    while stack:
        path = stack.pop()
        with contextlib.suppress(OSError), os.scandir(path) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    inodes += 1
                    allocated += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        apparent += st.st_size
    return {"apparent": apparent, "allocated": allocated, "inodes": inodes}


class Sampler:
    """One sample of the supervisor, the data dir and health; keeps the previous one for rates."""

    def __init__(self, proc: psutil.Process, data: Path, health_runs: int) -> None:
        from bridge.service import JobService
        from bridge.stores.sqlite import SQLiteStore
        from supervisor.settings import load_settings

        self.proc = proc
        self.data = data
        self.health_runs = health_runs
        with bc.isolated_settings_env(data):
            self.settings = load_settings(data_dir=data)
        self.store = SQLiteStore(data / "jobs.sqlite3", create=False)
        self.service = JobService(self.settings, self.store)
        self.env = bc.child_env(data)
        self.t0 = time.monotonic()
        self._prev: tuple[float, int, float, int] | None = None  # t, done, cpu s, switches

    def close(self) -> None:
        self.store.close()

    def _health_cli(self) -> tuple[float, dict[str, Any]]:
        walls, report = [], {}
        for _ in range(self.health_runs):
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "bridge", "health", "--json"],
                cwd=bc.ROOT, env=self.env, capture_output=True, text=True, check=False, timeout=120,
            )  # fmt: skip
            walls.append(1e3 * (time.perf_counter() - t0))
            if out.returncode == 0:
                report = json.loads(out.stdout)
        return bc.median(walls), report

    def _in_process(self) -> tuple[float, float]:
        from supervisor.health import check_health, read_status
        from supervisor.runner import read_worker_id

        worker = read_worker_id(self.settings)
        status = read_status(self.data)
        checks, services = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            check_health(self.store, self.settings, worker_id=worker, status=status)
            t1 = time.perf_counter()
            self.service.health()
            t2 = time.perf_counter()
            checks.append(1e3 * (t1 - t0))
            services.append(1e3 * (t2 - t1))
        return bc.median(checks), bc.median(services)

    def sample(self) -> dict[str, Any]:
        now = time.monotonic() - self.t0
        counts = {str(k): v for k, v in self.store.counts().by_status.items()}
        done = sum(counts.get(s, 0) for s in FINISHED)
        cpu = sum(self.proc.cpu_times()[:2])
        switches = sum(v for v, _ in bc.task_switches(self.proc.pid).values())
        mem = self.proc.memory_full_info()
        files = tree_use(self.data / "runs", self.data / "logs")
        db = sum(p.stat().st_size for p in self.data.glob("jobs.sqlite3*") if p.is_file())
        cli_ms, report = self._health_cli()
        check_ms, service_ms = self._in_process()
        if self._prev is None:
            rate = cpu_pct = wakeups = None
        else:
            t, d, c, w = self._prev
            rate = (done - d) / (now - t)
            cpu_pct = 100 * (cpu - c) / (now - t)
            wakeups = (switches - w) / (now - t)
        self._prev = (now, done, cpu, switches)
        disk = report.get("disk") or {}
        return {
            "t_s": round(now, 1),
            "done": done,
            "pending": counts.get("pending", 0),
            "failed": counts.get("failed", 0),
            "jobs_per_s": _r(rate, 1),
            "rss_mb": round(mem.rss / MB, 2),
            "uss_mb": round(mem.uss / MB, 2),
            "fds": self.proc.num_fds(),
            "threads": self.proc.num_threads(),
            "cpu_pct": _r(cpu_pct, 1),
            "wakeups_per_s": _r(wakeups, 1),
            "files_apparent_mb": round(files["apparent"] / MB, 3),
            "files_allocated_mb": round(files["allocated"] / MB, 2),
            "inodes": files["inodes"],
            "db_mb": round(db / MB, 1),
            "health_cli_ms": round(cli_ms, 1),
            "check_health_ms": round(check_ms, 3),
            "service_health_ms": round(service_ms, 3),
            "status_files_bytes": disk.get("files_bytes"),
            "alerts": sorted({a.get("kind") for a in report.get("alerts") or []}),
        }


# ---------------------------------------------------------------- verdict


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than 3 points)."""
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return None if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def growth(values: list[float], stat: Callable[[list[float]], float] = bc.median) -> float | None:
    """``stat`` (median) of the last third minus that of the first third (None with fewer than 3)."""
    if len(values) < 3:
        return None
    k = max(1, len(values) // 3)
    return stat(values[-k:]) - stat(values[:k])


def judge(
    name: str,
    samples: list[dict[str, Any]],
    key: str,
    abs_tol: float,
    rel_tol: float,
    stat: Callable[[list[float]], float] = bc.median,
) -> dict[str, Any]:
    values = [float(s[key]) for s in samples]
    g = growth(values, stat)
    per_100k = slope([s["done"] for s in samples], values)
    if g is None:
        return {"what": name, "verdict": "not shown (fewer than 3 samples)", "growth": None}
    tol = max(abs_tol, rel_tol * abs(bc.median(values)))
    return {
        "what": name,
        "first": values[0],
        "last": values[-1],
        "median": bc.median(values),
        "growth": g,
        "tolerance": tol,
        "slope_per_100k_jobs": None if per_100k is None else per_100k * 1e5,
        "verdict": "flat" if abs(g) <= tol else ("GROWS" if g > 0 else "shrinks"),
    }


def verdicts(
    samples: list[dict[str, Any]], jobs: int, horizon_s: float, retention_every_s: float
) -> list[dict[str, Any]]:
    warm = [s for s in samples if s["done"] >= 0.1 * jobs]
    # Memory: also after the retention horizon, while the window of kept files still fills up
    # the retention sweep's listing of them grows with it (RSS follows the files kept).
    settled = [s for s in warm if s["t_s"] >= horizon_s]
    out = [
        judge("supervisor RSS (MB), after the horizon", settled, "rss_mb", 2.0, 0.05),
        judge("supervisor USS (MB), after the horizon", settled, "uss_mb", 2.0, 0.05),
        judge("supervisor open fds", warm, "fds", 1.0, 0.0),
        judge("supervisor threads", warm, "threads", 1.0, 0.0),
        judge("check_health in-process (ms)", warm, "check_health_ms", 1.0, 0.25),
        judge("JobService.health() in-process (ms)", warm, "service_health_ms", 1.0, 0.25),
        # The CLI's wall is mostly Python's start and imports; other load only slows it down,
        # so its thirds are compared by their fastest run.
        judge("health --json CLI wall (ms), fastest of each third", warm, "health_cli_ms", 50.0, 0.25, min),
    ]
    # Time-based retention keeps the files of the jobs of the last `keep_s` (their age at the
    # sweep that deletes them): the bound moves with the rate. Per job finished in that window,
    # the files kept must stay flat; files that are never deleted would make it climb.
    keep_s = horizon_s - retention_every_s
    steady = [dict(s) for s in samples if s["t_s"] >= horizon_s]
    for s in steady:
        window = s["done"] - _done_at(samples, s["t_s"] - keep_s)
        s["inodes_per_window_job"] = s["inodes"] / window if window > 0 else None
        s["kb_per_window_job"] = 1e3 * s["files_allocated_mb"] / window if window > 0 else None
    steady = [s for s in steady if s["inodes_per_window_job"] is not None]
    for name, key in (
        ("files kept per job of the last retention period (kB)", "kb_per_window_job"),
        ("inodes kept per job of the last retention period", "inodes_per_window_job"),
    ):
        if len(steady) < 4:
            out.append(
                {
                    "what": name,
                    "verdict": f"not shown: {len(steady)} samples after the horizon ({horizon_s:.0f} s)",
                    "growth": None,
                }
            )
            continue
        result = judge(name, steady, key, 0.0, 0.15)
        result["verdict"] = "bounded" if result["verdict"] in ("flat", "shrinks") else "GROWS"
        out.append(result)
    return out


def _done_at(samples: list[dict[str, Any]], t: float) -> float:
    """Jobs done at time ``t``, interpolated between samples."""
    prev = samples[0]
    for s in samples:
        if s["t_s"] >= t:
            if s["t_s"] == prev["t_s"]:
                return float(s["done"])
            share = (t - prev["t_s"]) / (s["t_s"] - prev["t_s"])
            return prev["done"] + share * (s["done"] - prev["done"])
        prev = s
    return float(prev["done"])


def correlation(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sx = sum((x - mx) ** 2 for x in xs) ** 0.5
    sy = sum((y - my) ** 2 for y in ys) ** 0.5
    return (
        None
        if sx == 0 or sy == 0
        else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (sx * sy)
    )


# ---------------------------------------------------------------- main


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen[Any] | None) -> int | None:
    return None if proc is None else bc.stop_process(proc, grace_s=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--retention-s", type=float, default=180.0)
    ap.add_argument(
        "--files-max-mb", type=float, default=16.0, help="files_max_bytes, in MB (apparent bytes)"
    )
    ap.add_argument("--retention-every-s", type=float, default=15.0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--low-water", type=int, default=1000, help="the feeder tops up below this many pending")
    ap.add_argument("--agent", choices=sorted(AGENTS), default="true")
    ap.add_argument(
        "--rate",
        type=float,
        default=None,
        help="feed at most this many jobs/s (a steady rate keeps the retention window's files steady)",
    )
    ap.add_argument("--health-runs", type=int, default=1, help="health --json subprocesses per sample")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop sampling after this long")
    ap.add_argument("--keep", type=Path, default=None, help="run in DIR and keep it (else a temp dir)")
    ap.add_argument("--feeder", type=Path, default=None, help=argparse.SUPPRESS)  # the child's mode
    args = ap.parse_args()
    if args.feeder is not None:
        return feeder(args.feeder, args.jobs, args.batch, args.low_water, AGENTS[args.agent], args.rate)

    # SIGTERM ends a soak like Ctrl-C: the finally blocks below stop the children, remove the dir.
    signal.signal(signal.SIGTERM, _interrupt)
    root = args.keep or Path(tempfile.mkdtemp(prefix="as-bench-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    settings_env = {
        "AGENT_SUPERVISOR_CONCURRENCY": str(args.concurrency),
        "AGENT_SUPERVISOR_RETENTION_S": str(args.retention_s),
        "AGENT_SUPERVISOR_FILES_MAX_BYTES": str(int(args.files_max_mb * MB)),
        "AGENT_SUPERVISOR_RETENTION_EVERY_S": str(args.retention_every_s),
    }
    horizon_s = max(args.retention_s, MIN_AGE_S) + 2 * args.retention_every_s
    samples: list[dict[str, Any]] = []
    sup = feed = None
    sampler: Sampler | None = None
    interrupted = False
    stderr_path = root / "run.stderr"
    sup_rc = None
    started = time.monotonic()
    try:
        with stderr_path.open("wb") as err:
            sup = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run"],
                cwd=bc.ROOT, env=bc.child_env(data, **settings_env), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        if not bc.wait_for(lambda: (data / "status.json").exists() or sup.poll() is not None, 60, 0.05):
            raise SystemExit("the supervisor did not start within 60 s")
        if sup.poll() is not None:
            raise SystemExit(f"`bridge run` exited with {sup.returncode}: {stderr_path.read_text()[-2000:]}")
        sampler = Sampler(psutil.Process(sup.pid), data, args.health_runs)
        feed_out = (root / "feeder.out").open("wb")
        feed = subprocess.Popen(
            [sys.executable, __file__, "--feeder", str(data), "--jobs", str(args.jobs), "--batch",
             str(args.batch), "--low-water", str(args.low_water), "--agent", args.agent,
             *(["--rate", str(args.rate)] if args.rate else [])],
            cwd=bc.ROOT, env=bc.child_env(data), stdin=subprocess.DEVNULL, stdout=feed_out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        feed_out.close()
        print(
            f"soak: {args.jobs:,} jobs of {' '.join(AGENTS[args.agent])}, concurrency {args.concurrency}, "
            f"retention {args.retention_s:g} s / {args.files_max_mb:g} MB / sweep every "
            f"{args.retention_every_s:g} s; a sample every {args.sample_s:g} s",
            flush=True,
        )
        print(_header(), flush=True)
        next_at = time.monotonic()
        while True:
            sample = sampler.sample()
            samples.append(sample)
            print(_line(sample), flush=True)
            if sample["done"] >= args.jobs:
                break
            if sup.poll() is not None:
                raise SystemExit(
                    f"the supervisor exited ({sup.returncode}): {stderr_path.read_text()[-2000:]}"
                )
            if feed.poll() not in (None, 0):
                raise SystemExit(
                    f"the feeder failed ({feed.returncode}): {(root / 'feeder.out').read_text()[-2000:]}"
                )
            if args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes:
                print(f"stopping after {args.max_minutes:g} minutes", flush=True)
                break
            next_at += args.sample_s
            while time.monotonic() < next_at:  # finish early once every job is done
                time.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
                by = sampler.store.counts().by_status
                if sum(by.get(status, 0) for status in FINISHED) >= args.jobs:
                    break
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the feeder and the supervisor", flush=True)
    finally:
        _stop(feed)
        sup_rc = _stop(sup)
        if sampler is not None:
            sampler.close()
        stderr_tail = stderr_path.read_text(errors="replace")[-1500:] if stderr_path.exists() else ""
        stderr_bytes = stderr_path.stat().st_size if stderr_path.exists() else 0
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    if not samples:
        return 130 if interrupted else 1
    elapsed = samples[-1]["t_s"]
    results = verdicts(samples, args.jobs, horizon_s, args.retention_every_s)
    last = samples[-1]
    print()
    print(f"machine: {bc.machine_line()}")
    print(
        f"{last['done']:,} of {args.jobs:,} jobs done in {elapsed:.0f} s "
        f"({last['done'] / max(elapsed, 1):.1f} jobs/s), "
        f"{last['failed']} failed; {len(samples)} samples; supervisor exit code {sup_rc}; its stderr "
        f"{stderr_bytes} bytes"
    )
    per_attempt = [s["files_allocated_mb"] * MB / max(1, s["done"]) for s in samples[:2] if s["done"]]
    if per_attempt:
        print(
            f"without retention the files would take ~{per_attempt[0] * last['done'] / MB:,.0f} MB "
            f"(first sample: {per_attempt[0] / 1e3:.1f} kB allocated per attempt)"
        )
    print(
        f"verdict (after the first 10 % of the jobs; disk after the retention horizon {horizon_s:.0f} s; "
        "growth = median of the last third - median of the first third):"
    )
    print(
        bc.table(
            ["figure", "first", "last", "growth", "tolerance", "slope per 100k jobs", "verdict"],
            [
                (
                    r["what"],
                    _fmt(r.get("first")),
                    _fmt(r.get("last")),
                    _fmt(r.get("growth")),
                    _fmt(r.get("tolerance")),
                    _fmt(r.get("slope_per_100k_jobs")),
                    r["verdict"],
                )
                for r in results
            ],
        )
    )
    warm = [s for s in samples if s["done"] >= 0.1 * args.jobs]
    rss_files_r = correlation([s["inodes"] for s in warm], [s["rss_mb"] for s in warm])
    rss_per_10k = slope([s["inodes"] for s in warm], [s["rss_mb"] for s in warm])
    rss_per_job = slope([s["done"] for s in warm], [s["rss_mb"] for s in warm])
    if rss_files_r is not None and rss_per_10k is not None and rss_per_job is not None:
        print(
            f"RSS against the files kept (after the warm-up): correlation {rss_files_r:.2f}, "
            f"{1e4 * rss_per_10k:.1f} MB per 10,000 inodes kept; against jobs done: "
            f"{1e5 * rss_per_job:.1f} MB per 100,000 jobs done"
        )
    if stderr_tail.strip() and sup_rc not in (0, None):
        print("supervisor stderr (tail):\n" + stderr_tail)
    print()
    bc.emit_json(
        {
            "benchmark": "soak",
            "jobs": args.jobs,
            "done": last["done"],
            "failed": last["failed"],
            "interrupted": interrupted,
            "elapsed_s": elapsed,
            "agent": AGENTS[args.agent],
            "concurrency": args.concurrency,
            "feed_rate_per_s": args.rate,
            "retention_s": args.retention_s,
            "files_max_bytes": int(args.files_max_mb * MB),
            "retention_every_s": args.retention_every_s,
            "retention_horizon_s": horizon_s,
            "sample_s": args.sample_s,
            "supervisor_exit_code": sup_rc,
            "rss_vs_inodes_correlation": _r(rss_files_r, 3),
            "rss_mb_per_10k_inodes": None if rss_per_10k is None else round(1e4 * rss_per_10k, 2),
            "verdicts": [
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results
            ],
            "samples": samples,
        }
    )
    ok = all(
        r["verdict"] in ("flat", "bounded", "shrinks") or r["verdict"].startswith("not shown")
        for r in results
    )
    return 130 if interrupted else (0 if ok and last["done"] >= args.jobs else 1)


_COLUMNS: Final = (
    ("t_s", "t s", 7),
    ("done", "done", 8),
    ("jobs_per_s", "jobs/s", 7),
    ("rss_mb", "RSS MB", 7),
    ("fds", "fds", 4),
    ("threads", "thr", 4),
    ("cpu_pct", "CPU %", 6),
    ("wakeups_per_s", "wake/s", 7),
    ("files_allocated_mb", "files MB", 9),
    ("files_apparent_mb", "st_size MB", 10),
    ("inodes", "inodes", 7),
    ("db_mb", "db MB", 6),
    ("health_cli_ms", "CLI ms", 7),
    ("check_health_ms", "check ms", 9),
    ("service_health_ms", "svc ms", 7),
)


def _header() -> str:
    return " ".join(title.rjust(width) for _, title, width in _COLUMNS) + "  alerts"


def _line(sample: dict[str, Any]) -> str:
    cells = []
    for key, _, width in _COLUMNS:
        value = sample[key]
        text = "-" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:,.3g}")
        if isinstance(value, float) and abs(value) >= 1000:
            text = f"{value:,.0f}"
        cells.append(text.rjust(width))
    return " ".join(cells) + "  " + (",".join(sample["alerts"]) or "-")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
