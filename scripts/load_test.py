"""Load test: N jobs of mixed priority through a supervisor with K slots.

    python scripts/load_test.py [--jobs 100] [--slots 2] [--seed 1]

All jobs are queued first (``sh -c`` agents that sleep 10 ms), then ``Supervisor.run(until_idle=
True)`` drains them. Each agent appends "start|end <job> <priority> <time>" to a ledger; the
script then checks, from the agents' own records, that never more than K ran at once, that
every job completed exactly once, and that the queue drained in priority order (a job never
started while a higher-priority job that was already waiting had not). Prints the figures, a
table and the JSON line; exit 1 on a breach.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import bench_common as bc  # puts the repo root on sys.path

from bridge.stores.sqlite import SQLiteStore
from supervisor.lifecycle import JobSpec, Status
from supervisor.runner import Supervisor
from supervisor.settings import load_settings

AGENT = 'echo "start $1 $2 $(date +%s.%N)" >> "$0"; sleep 0.01; echo "end $1 $2 $(date +%s.%N)" >> "$0"'


def run(jobs: int, slots: int, root: Path, seed: int = 1) -> dict[str, float]:
    """Run the load and return its figures; raises AssertionError on any breach."""
    ledger = root / "ledger"
    store = SQLiteStore(root / "jobs.sqlite3")
    rng = random.Random(seed)
    priorities = [rng.randint(0, 9) for _ in range(jobs)]
    ids = store.enqueue(
        [
            JobSpec(command=("sh", "-c", AGENT, str(ledger), str(i), str(p)), priority=p)
            for i, p in enumerate(priorities)
        ]
    )
    with bc.isolated_settings_env(root / "data"):  # no config file or AGENT_SUPERVISOR_* of the caller
        settings = load_settings(
            data_dir=root / "data",
            concurrency=slots,
            memory_reserve_bytes=0,  # admission never holds a start back: the slots are the limit
            memory_estimate_bytes=1,
        )
    started = time.perf_counter()
    Supervisor(settings, store, install_signal_handlers=False).run(until_idle=True)
    elapsed = time.perf_counter() - started
    try:
        assert store.counts().by_status[Status.COMPLETED] == jobs, "not every job completed"
    finally:
        store.close()
    rows = [line.split() for line in ledger.read_text().splitlines()]
    events = sorted((float(t), 1 if kind == "start" else -1, int(i)) for kind, i, _, t in rows)
    running = peak = 0
    for _, delta, _ in events:
        running += delta
        peak = max(peak, running)
    assert peak <= slots, f"{peak} agents ran at once with {slots} slots"
    starts = [(float(t), int(p), int(i)) for kind, i, p, t in rows if kind == "start"]
    assert sorted(i for _, _, i in starts) == list(range(jobs)), "a job ran twice or never"
    order = [p for _, p, _ in sorted(starts)]
    # All jobs were queued before the run: starts must be in non-increasing priority order,
    # except that `slots` jobs start together and may land in either order within a batch.
    inversions = sum(1 for a, b in zip(order, order[slots:], strict=False) if b > a)
    assert inversions == 0, f"{inversions} priority inversions: {order}"
    return {
        "jobs": jobs,
        "slots": slots,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(jobs / elapsed, 1),
        "peak_concurrency": peak,
        "ids": len(ids),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="as-load-test-") as tmp:
        try:
            figures = run(args.jobs, args.slots, Path(tmp), args.seed)
        except AssertionError as exc:
            print(f"BREACH: {exc}")
            bc.emit_json({"benchmark": "load_test", "jobs": args.jobs, "slots": args.slots, "ok": False,
                          "breach": str(exc)})  # fmt: skip
            return 1
    print(
        f"{figures['jobs']} jobs, {figures['slots']} slots: {figures['seconds']} s "
        f"({figures['jobs_per_s']} jobs/s), peak concurrency {figures['peak_concurrency']}, "
        "all completed once, drained by priority"
    )
    print(f"machine: {bc.machine_line()}")
    print(
        bc.table(
            ["figure", "measured", "goal"],
            [
                ("jobs", figures["jobs"], ""),
                ("peak concurrency (agents' ledger)", figures["peak_concurrency"], f"<= {args.slots}"),
                ("completed exactly once", "yes", "yes"),
                ("priority inversions", 0, "0"),
                ("jobs/s (sh agents sleeping 10 ms)", figures["jobs_per_s"], ""),
            ],
        )
    )
    bc.emit_json({"benchmark": "load_test", **figures, "ok": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
