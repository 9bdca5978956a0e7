"""Embedding agent-supervisor in a host (a plugin, a desktop app): the README's example, runnable.

    python scripts/embed_example.py [--keep]

Starts a supervisor in a background thread on a temporary data dir, submits a job, follows
its state changes, then stops the way a reloading plugin would (agents left for adoption).
The temporary data dir is removed at the end unless ``--keep`` (to look at its files).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.compose import build_supervisor
from supervisor import JobSpec, Settings


def main() -> int:
    keep = "--keep" in sys.argv[1:]
    data_dir = Path(tempfile.mkdtemp(prefix="agent-supervisor-embed-"))
    try:
        supervisor = build_supervisor(
            Settings(data_dir=data_dir, concurrency=2), install_signal_handlers=False
        )
        changes = supervisor.subscribe()
        supervisor.start()
        try:
            job_id = supervisor.submit(JobSpec(command=(sys.executable, "-c", "print('hi from an agent')")))
            final = None
            for change in changes:
                print(change.job_id, change.from_status, "→", change.to_status, change.reason)
                if change.job_id == job_id and change.to_status.value in ("completed", "failed"):
                    final = change.to_status.value
                    break
        finally:
            supervisor.stop(leave_agents=True)
            supervisor.store.close()
        print(f"job {job_id}: {final}; data dir {data_dir}{'' if keep else ' (removed)'}")
        return 0 if final == "completed" else 1
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
