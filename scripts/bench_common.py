"""Shared helpers of the ``scripts/bench_*.py`` benchmarks: machine facts, statistics, tables,
an isolated environment for child supervisors, and process clean-up.

Every benchmark prints a short table for people and ends with ONE line of JSON (the figures,
the machine and how many runs were taken) for tools and for the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MISSING_CONFIG_NAME = "no-such-config.toml"


# ---------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def machine() -> dict[str, Any]:
    """The facts that make a figure comparable: CPUs, memory, Python, kernel, SQLite."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        usable = os.cpu_count() or 0
    mem = _mem_total_bytes()
    return {
        "nproc": usable,
        "cpu_model": _cpu_model(),
        "mem_total_gib": round(mem / 2**30, 1) if mem else None,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "kernel": f"{platform.system()} {platform.release()}",
        "sqlite": sqlite3.sqlite_version,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def machine_line(m: Mapping[str, Any] | None = None) -> str:
    m = m or machine()
    return (
        f"{m['nproc']} CPU {m['cpu_model']}, {m['mem_total_gib']} GiB, "
        f"Python {m['python']}, {m['kernel']}, SQLite {m['sqlite']} (load {m['loadavg_1m']})"
    )


# ---------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) — no interpolation, a value that was measured."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return float(ordered[int(rank) - 1])


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the engine/adapters had uncommitted changes."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "supervisor", "bridge").splitlines()]
    engine = sys.modules.get("supervisor")
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "uncommitted": dirty,
        # The engine measured in this process (an editable install elsewhere must not win).
        "engine": str(Path(engine.__file__).parent) if engine and engine.__file__ else None,
    }


def emit_json(figures: Mapping[str, Any]) -> None:
    """The final line: one JSON object (figures, machine, code version), nothing after it."""
    sys.stdout.flush()
    out = {**figures, "machine": machine(), "code": code_version()}
    print(json.dumps(out, sort_keys=False, separators=(",", ":")))


# ---------------------------------------------------------------- child supervisors


def child_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a child ``python -m bridge``: our settings only (a missing config file,
    a fresh data dir), no AGENT_SUPERVISOR_* leaking in from the caller, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    env["AGENT_SUPERVISOR_DATA_DIR"] = str(data_dir)
    env["AGENT_SUPERVISOR_CONFIG"] = str(data_dir.parent / MISSING_CONFIG_NAME)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


@contextlib.contextmanager
def isolated_settings_env(data_dir: Path) -> Iterator[None]:
    """Point this process's settings at ``data_dir`` and a missing config file (restored after)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AGENT_SUPERVISOR_")}
    for k in saved:
        del os.environ[k]
    os.environ["AGENT_SUPERVISOR_DATA_DIR"] = str(data_dir)
    os.environ["AGENT_SUPERVISOR_CONFIG"] = str(data_dir.parent / MISSING_CONFIG_NAME)
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("AGENT_SUPERVISOR_")]:
            del os.environ[k]
        os.environ.update(saved)


# ---------------------------------------------------------------- processes


def task_switches(pid: int) -> dict[int, tuple[int, int]]:
    """(voluntary, involuntary) context switches of every thread of ``pid``, by thread id.
    ``/proc/<pid>/status`` (what psutil reads) counts the main thread alone."""
    out: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        vol = invol = None
        try:
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol = int(line.split()[1])
        except (OSError, ValueError):
            continue
        if vol is not None and invol is not None:
            out[int(tid)] = (vol, invol)
    return out


def switch_delta(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> dict[int, tuple[int, int]]:
    """Per thread: switches in the window (a thread born meanwhile counts from zero)."""
    return {
        tid: (v - before.get(tid, (0, 0))[0], i - before.get(tid, (0, 0))[1]) for tid, (v, i) in after.items()
    }


def stop_process(proc: subprocess.Popen[Any], *, grace_s: float = 15.0) -> int | None:
    """Stop a child we started (by its pid only): SIGTERM (the supervisor drains), then SIGKILL."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return proc.wait(5)


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
