"""``agent-supervisor demo``: five sample agents on a fresh data dir, shown live, in < 30 s.

One succeeds with a result, one reports progress, one ignores SIGTERM past its timeout (and is
killed after the grace period), one crashes and is retried, one is cancelled while running by
a second connection to the store, the way ``agent-supervisor cancel`` in another terminal would.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bridge.compose import build_store, build_supervisor
from supervisor.lifecycle import JobSpec, Status
from supervisor.runner import JobChange
from supervisor.settings import Settings

__all__ = ["run_demo"]

_AGENTS: dict[str, tuple[str, dict[str, object]]] = {
    "hello": (
        "import json, os\n"
        "print('thinking about the answer...')\n"
        "with open(os.environ['AGENT_SUPERVISOR_RESULT_FILE'], 'w') as f:\n"
        "    json.dump({'answer': 42}, f)\n",
        {},
    ),
    "progress": (
        "import json, os, time\n"
        "for step in range(1, 6):\n"
        "    print(f'step {step}/5', flush=True)\n"
        "    with open(os.environ['AGENT_SUPERVISOR_PROGRESS_FILE'], 'w') as f:\n"
        "        json.dump({'step': step, 'of': 5}, f)\n"
        "    time.sleep(0.4)\n",
        {},
    ),
    "stubborn": (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('SIGTERM? no.', flush=True))\n"
        "print('I will not stop', flush=True)\n"
        "while True: time.sleep(1)\n",
        {"timeout_s": 2.0, "max_attempts": 1},
    ),
    "flaky": (
        "import os, sys\n"
        "attempt = int(os.environ['AGENT_SUPERVISOR_ATTEMPT'])\n"
        "print(f'attempt {attempt}', flush=True)\n"
        "sys.exit(3 if attempt == 1 else 0)\n",
        {"backoff_s": 0.5, "max_attempts": 3},
    ),
    "long": (
        "import time\nprint('working for a long time...', flush=True)\ntime.sleep(60)\n",
        {},
    ),
}


def run_demo(*, keep: bool = False, data_dir: Path | None = None) -> int:
    """Run the demo; returns 0 when every sample ended the way it should."""
    root = data_dir or Path(tempfile.mkdtemp(prefix="agent-supervisor-demo-"))
    settings = Settings(
        data_dir=root, concurrency=5, stop_grace_s=1.0, heartbeat_s=1.0, lease_s=5.0, drain_timeout_s=2.0
    )
    t0 = time.monotonic()
    names: dict[int, str] = {}

    def show(change: JobChange) -> None:
        src = change.from_status.value if change.from_status else "-"
        progress = f"  progress {change.progress}" if change.progress else ""
        print(
            f"[{time.monotonic() - t0:5.1f}s] job {change.job_id} {names.get(change.job_id, ''):<9} "
            f"{src:>13} → {change.to_status.value:<13} {change.reason}{progress}",
            flush=True,
        )

    print(f"agent-supervisor demo — data dir {root}\n")
    supervisor = build_supervisor(settings, on_change=show)
    for name, (code, extra) in _AGENTS.items():
        spec = JobSpec(command=(sys.executable, "-c", code), **extra)  # type: ignore[arg-type]
        names[supervisor.submit(spec)] = name
    long_id = next(i for i, n in names.items() if n == "long")
    canceller = threading.Thread(target=_cancel_when_running, args=(settings, long_id), daemon=True)
    canceller.start()
    try:
        supervisor.run(until_idle=True)
    finally:
        canceller.join(5)
        store = supervisor.store
        jobs = [store.get(i) for i in sorted(names)]
        store.close()
    print(f"\nsummary after {time.monotonic() - t0:.1f} s:")
    print(f"  {'job':>3}  {'agent':<9} {'status':<10} {'attempts':<8} {'error_kind':<12} result")
    for job in jobs:
        print(
            f"  {job.id:>3}  {names[job.id]:<9} {job.status.value:<10} {job.attempts_used}/"
            f"{job.max_attempts:<6} {job.error_kind or '-':<12} {'' if job.result is None else job.result}"
        )
    expected = {
        "hello": Status.COMPLETED,
        "progress": Status.COMPLETED,
        "stubborn": Status.FAILED,
        "flaky": Status.COMPLETED,
        "long": Status.CANCELLED,
    }
    ok = all(job.status is expected[names[job.id]] for job in jobs)
    print(f"\nlogs: {root / 'logs'}   (agent-supervisor --data-dir {root} show ID)")
    if not keep and data_dir is None:
        shutil.rmtree(root, ignore_errors=True)
        print("(demo data dir removed; run with --keep to look around)")
    return 0 if ok else 1


def _cancel_when_running(settings: Settings, job_id: int) -> None:
    """Cancel the long job through a second store connection once it has run for a second."""
    store = build_store(settings)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job = store.get(job_id)
            if job.status is Status.RUNNING and job.started_at and store.now() - job.started_at > 1.0:
                store.request_cancel(job_id)
                return
            time.sleep(0.1)  # polling another process's view of the store, as a user would
    finally:
        store.close()
