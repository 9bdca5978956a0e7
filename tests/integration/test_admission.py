"""Admission control with real agents: slots, priority, and the memory gate."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import psutil
import pytest

from bridge.stores.sqlite import SQLiteStore
from supervisor.lifecycle import JobSpec, Status
from supervisor.runner import Supervisor
from supervisor.settings import Settings
from tests.support import ROOT, kill_tagged


def load_test_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "scripts" / "load_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hundred_jobs_two_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 jobs on 2 slots: never more than 2 running, all complete once, drained by priority
    (the same check as scripts/load_test.py, which raises on any breach)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # as when it runs: bench_common beside it
    figures = load_test_module().run(100, 2, tmp_path)
    assert figures["peak_concurrency"] == 2


def test_memory_gate_lets_only_one_agent_fit(tmp_path: Path) -> None:
    """With the reserve set so that only one agent's estimate fits, a second agent never
    starts before the first has ended (from the agents' own start/end timestamps)."""
    ledger = tmp_path / "ledger"
    estimate = 1 << 30
    available = psutil.virtual_memory().available
    settings = Settings(
        data_dir=tmp_path / "data",
        concurrency=3,
        wake_poll_s=0.01,
        poll_s=0.05,
        memory_estimate_bytes=estimate,
        memory_reserve_bytes=max(0, available - estimate - estimate // 2),
    )
    code = (
        "import sys, time\n"
        f"f = open({str(ledger)!r}, 'a')\n"
        "f.write(f'{time.time()} 1\\n'); f.flush(); time.sleep(0.3); f.write(f'{time.time()} -1\\n')\n"
    )
    store = SQLiteStore(tmp_path / "jobs.sqlite3")
    try:
        store.enqueue([JobSpec(command=(sys.executable, "-c", code)) for _ in range(3)])
        sup = Supervisor(settings, store, install_signal_handlers=False)
        sup.run(until_idle=True)
        assert store.counts().by_status[Status.COMPLETED] == 3
    finally:
        store.close()
        kill_tagged(tmp_path)
    running = peak = 0
    for _, delta in sorted(tuple(map(float, line.split())) for line in ledger.read_text().splitlines()):
        running += int(delta)
        peak = max(peak, running)
    assert peak == 1, "a second agent started while the first held the memory"
    assert sup.gate.state.value in ("open", "blocked")
