"""Start-up cost of the command line: ``python -c pass`` beside ``--version``, ``list``,
``submit`` and ``show`` (each ``python -m bridge …`` on a temporary SQLite data dir holding
100 jobs; bytecode and the settings cache warm, as for a user's second command), the
median of N runs each (runs interleaved, so a burst of machine load hits
every command alike), printed as a table, then one JSON line.

    python scripts/bench_cli_start.py [--runs 21]

Also: ``--importtime CMD`` prints the 15 slowest imports of one command
(``python -X importtime``), to find what to make lazy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_MS = 120.0


def _env(data: Path) -> dict[str, str]:
    """The commands' environment: a fresh data dir and settings cache, no config file, and
    bytecode cached as after ``pip install`` (which compiles it). PYTHONDONTWRITEBYTECODE, if
    the caller's shell sets it, would make every run compile our modules from source; the
    bytecode goes to a temporary PYTHONPYCACHEPREFIX so that the checkout stays clean."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENT_SUPERVISOR_") and k not in ("PYTHONDONTWRITEBYTECODE", "XDG_CACHE_HOME")
    }
    env.update(
        {
            "AGENT_SUPERVISOR_DATA_DIR": str(data),
            "AGENT_SUPERVISOR_CONFIG": str(data / "no-config.toml"),
            "PYTHONPATH": str(ROOT),
            "PYTHONPYCACHEPREFIX": str(data.parent / "pycache"),
            "XDG_CACHE_HOME": str(data.parent / "cache"),
        }
    )
    return env


def _time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="runs per command (>= 15)")
    parser.add_argument(
        "--importtime", metavar="CMD", help="the slowest imports of one command, e.g. --importtime=list"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        data = Path(tmp) / "d"
        env = _env(data)
        py = [sys.executable]
        batch = "".join(json.dumps({"command": ["true"], "payload": {"n": i}}) + "\n" for i in range(100))
        subprocess.run(
            [*py, "-m", "bridge", "submit", "--batch", "-"],
            input=batch,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        commands = {
            "python -c pass": [*py, "-c", "pass"],
            "--version": [*py, "-m", "bridge", "--version"],
            "list": [*py, "-m", "bridge", "list"],
            "submit": [*py, "-m", "bridge", "submit", "--", "true"],
            "show": [*py, "-m", "bridge", "show", "1"],
        }
        if args.importtime:
            argv = [*py, "-X", "importtime", "-m", "bridge", *args.importtime.split()]
            out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
            rows = [
                line
                for line in out.stderr.splitlines()
                if line.startswith("import time:") and line.split("|")[1].strip().isdigit()
            ]
            rows.sort(key=lambda line: int(line.split("|")[1]), reverse=True)
            print("\n".join(rows[:15]))
            return 0
        for argv in commands.values():  # warm the page cache and __pycache__
            _time(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(max(15, args.runs)):
            for name, argv in commands.items():
                samples[name].append(_time(argv, env))
    load = os.getloadavg()
    medians = {name: statistics.median(s) * 1000 for name, s in samples.items()}
    base = medians["python -c pass"]
    print(
        f"{platform.node()}  {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'command':<16} {'p50 ms':>8} {'p90 ms':>8} {'over pass':>10}  goal")
    for name, s in samples.items():
        p90 = statistics.quantiles(s, n=10)[-1] * 1000
        goal = "" if name == "python -c pass" else ("ok" if medians[name] <= GOAL_MS else f"> {GOAL_MS:.0f}")
        print(f"{name:<16} {medians[name]:>8.1f} {p90:>8.1f} {medians[name] - base:>+10.1f}  {goal}")
    print(
        json.dumps(
            {
                "bench": "cli_start",
                "runs": len(samples["list"]),
                "load1": load[0],
                "p50_ms": {k: round(v, 1) for k, v in medians.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
