"""Submit-to-spawn latency of an idle supervisor (issue 2, "Speed": p50 < 100 ms).

An idle ``python -m bridge run`` runs on a fresh data dir. This process submits one job
(``/bin/true``) at a time from its own connection — ``bridge.compose.build_store`` on the same
SQLite file, with the spec filled in by ``resolve_spec`` exactly as ``agent-supervisor submit``
does — waits for it to finish, pauses a random 100-300 ms (so that the supervisor is idle again
and each submission lands at a random point of its poll cycle), and repeats. The latency is
``started_at - created_at`` as the store recorded them: ``created_at`` by the submitting
transaction, ``started_at`` by ``mark_running`` right after the spawn (both are the store's
clock; for the SQLite store that is the machine's ``time.time()``). It splits into
created → claimed (the ``preparing`` event: noticing the job and claiming it) and claimed →
started (preparing the run dir, spawning the agent, saving the state file, mark_running).

Then the same through the command line: ``python -m bridge submit -- /bin/true`` for 10 jobs,
reporting the CLI process's own wall and CPU time separately from the supervisor's part.

    python scripts/bench_latency.py [--jobs 50] [--cli-jobs 10]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common as bc  # puts the repo root on sys.path

from bridge.compose import build_store
from supervisor.lifecycle import JobSpec, Status
from supervisor.runner import resolve_spec  # what `agent-supervisor submit` calls
from supervisor.settings import Settings, load_settings

TRUE = "/bin/true"
TERMINAL = {Status.COMPLETED, Status.FAILED, Status.CANCELLED}


def _wait_done(store: Any, job_id: int, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.status in TERMINAL:
            return job
        time.sleep(0.005)
    raise SystemExit(
        f"job {job_id} did not finish within {timeout_s:g} s (status {store.get(job_id).status})"
    )


def _claimed_at(store: Any, job_id: int) -> float | None:
    for event in store.events(job_id):
        if event.to_status is Status.PREPARING:
            return float(event.at)
    return None


def _sample(store: Any, job: Any) -> dict[str, float]:
    if job.status is not Status.COMPLETED or job.started_at is None:
        raise SystemExit(f"job {job.id} ended {job.status}: {job.error}")
    claimed = _claimed_at(store, job.id)
    return {
        "latency": job.started_at - job.created_at,
        "to_claim": (claimed - job.created_at) if claimed is not None else float("nan"),
        "claim_to_start": (job.started_at - claimed) if claimed is not None else float("nan"),
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": 1e3 * bc.percentile(values, 50),
        "p90_ms": 1e3 * bc.percentile(values, 90),
        "max_ms": 1e3 * max(values),
        "min_ms": 1e3 * min(values),
    }


def direct(store: Any, settings: Settings, n: int, rng: random.Random) -> list[dict[str, float]]:
    spec = resolve_spec(JobSpec(command=(TRUE,)), settings)
    samples = []
    for _ in range(n):
        time.sleep(rng.uniform(0.1, 0.3))
        [job_id] = store.enqueue([spec])
        samples.append(_sample(store, _wait_done(store, job_id)))
    return samples


def via_cli(store: Any, data: Path, n: int, rng: random.Random) -> list[dict[str, float]]:
    env = bc.child_env(data)
    samples = []
    for _ in range(n):
        time.sleep(rng.uniform(0.1, 0.3))
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0_wall, t0 = time.time(), time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "bridge", "submit", "--", TRUE],
            cwd=bc.ROOT, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        cli_wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        job = _wait_done(store, int(out.stdout.strip()))
        sample = _sample(store, job)
        sample.update(
            cli_wall=cli_wall,
            cli_cpu=(r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            invoke_to_insert=job.created_at - t0_wall,
            invoke_to_start=job.started_at - t0_wall,
        )
        samples.append(sample)
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--cli-jobs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--wake-poll-s",
        type=float,
        default=None,
        help="the user setting wake_poll_s (AGENT_SUPERVISOR_WAKE_POLL_S); default: its default",
    )
    args = ap.parse_args()
    extra_env = {} if args.wake_poll_s is None else {"AGENT_SUPERVISOR_WAKE_POLL_S": str(args.wake_poll_s)}
    rng = random.Random(args.seed)

    root = Path(tempfile.mkdtemp(prefix="as-bench-lat-"))
    data = root / "data"
    err = (root / "run.stderr").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run"],
        cwd=bc.ROOT, env=bc.child_env(data, **extra_env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=err,
    )  # fmt: skip
    store = None
    try:
        # The store file appears once the supervisor (or we) open it; build ours as the CLI does.
        with bc.isolated_settings_env(data):
            settings = load_settings()
        if not bc.wait_for(lambda: (data / "running-agents.json").exists() or proc.poll() is not None, 20):
            raise SystemExit("the supervisor did not start within 20 s")
        if proc.poll() is not None:
            raise SystemExit(
                f"`bridge run` exited with {proc.returncode}: {(root / 'run.stderr').read_text()}"
            )
        store = build_store(settings)
        direct(store, settings, 3, rng)  # warm-up: caches, first spawn, first claim (not counted)
        print(f"submitting {args.jobs} jobs one at a time to an idle `python -m bridge run` ...", flush=True)
        samples = direct(store, settings, args.jobs, rng)
        print(f"submitting {args.cli_jobs} jobs with `python -m bridge submit -- {TRUE}` ...", flush=True)
        cli = via_cli(store, data, args.cli_jobs, rng)
        if proc.poll() is not None:
            raise SystemExit(f"`bridge run` died meanwhile ({proc.returncode})")
    finally:
        if store is not None:
            store.close()
        bc.stop_process(proc)
        err.close()
        shutil.rmtree(root, ignore_errors=True)

    lat = _stats([s["latency"] for s in samples])
    claim = _stats([s["to_claim"] for s in samples])
    start = _stats([s["claim_to_start"] for s in samples])
    cli_lat = _stats([s["latency"] for s in cli])
    cli_wall = _stats([s["cli_wall"] for s in cli])
    cli_cpu = _stats([s["cli_cpu"] for s in cli])
    cli_ins = _stats([s["invoke_to_insert"] for s in cli])
    cli_e2e = _stats([s["invoke_to_start"] for s in cli])

    def row(name: str, st: dict[str, float], goal: str = "") -> tuple[Any, ...]:
        return (name, round(st["p50_ms"], 1), round(st["p90_ms"], 1), round(st["max_ms"], 1), goal)

    print()
    print(f"machine: {bc.machine_line()}")
    poll = "default" if args.wake_poll_s is None else f"{args.wake_poll_s:g} s"
    print(f"submit → spawn, idle `python -m bridge run` (wake_poll_s {poll}), SQLite store; "
          f"{args.jobs} jobs via the store API:")  # fmt: skip
    print(
        bc.table(
            ["ms", "p50", "p90", "max", "goal"],
            [
                row("started_at - created_at", lat, "p50 < 100"),
                row("  created → claimed", claim),
                row("  claimed → started", start),
            ],
        )
    )
    print()
    print(f"{args.cli_jobs} jobs via `python -m bridge submit -- {TRUE}`:")
    print(
        bc.table(
            ["ms", "p50", "p90", "max", "goal"],
            [
                row("started_at - created_at", cli_lat, "p50 < 100"),
                row("CLI process wall time", cli_wall),
                row("CLI process CPU time", cli_cpu),
                row("invocation → row inserted", cli_ins),
                row("invocation → agent started", cli_e2e),
            ],
        )
    )
    print()

    def r(st: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 2) for k, v in st.items()}

    bc.emit_json(
        {
            "benchmark": "latency",
            "jobs": args.jobs,
            "cli_jobs": args.cli_jobs,
            "pause_between_jobs_s": [0.1, 0.3],
            "wake_poll_s": args.wake_poll_s if args.wake_poll_s is not None else "default",
            "latency_ms": r(lat),
            "created_to_claimed_ms": r(claim),
            "claimed_to_started_ms": r(start),
            "goal_p50_ms": 100,
            "goal_met": lat["p50_ms"] < 100,
            "cli_latency_ms": r(cli_lat),
            "cli_process_wall_ms": r(cli_wall),
            "cli_process_cpu_ms": r(cli_cpu),
            "cli_invoke_to_insert_ms": r(cli_ins),
            "cli_invoke_to_start_ms": r(cli_e2e),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
