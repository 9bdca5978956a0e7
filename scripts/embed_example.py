"""Embedding agent-supervisor in a host (a plugin, a desktop app): the README's example, runnable.

    python scripts/embed_example.py

Starts a supervisor in a background thread on a temporary data dir, submits a job, follows
its state changes, then stops the way a reloading plugin would (agents left for adoption).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.compose import build_supervisor
from supervisor import JobSpec, Settings


def main() -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="agent-supervisor-embed-"))
    supervisor = build_supervisor(Settings(data_dir=data_dir, concurrency=2), install_signal_handlers=False)
    changes = supervisor.subscribe()
    supervisor.start()
    job_id = supervisor.submit(JobSpec(command=(sys.executable, "-c", "print('hi from an agent')")))
    final = None
    for change in changes:
        print(change.job_id, change.from_status, "→", change.to_status, change.reason)
        if change.job_id == job_id and change.to_status.value in ("completed", "failed"):
            final = change.to_status.value
            break
    supervisor.stop(leave_agents=True)
    supervisor.store.close()
    print(f"job {job_id}: {final}; data dir {data_dir}")
    return 0 if final == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
