"""What ``run`` says (bridge/cli/talk.py): words per transition, JSON lines, the summary line,
and one line per store outage — against a real Supervisor on fake processes and a store that
goes down and comes back on simulated time."""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.cli.talk import OutageFilter, Talker, talk_logging
from supervisor.errors import StoreUnavailableError
from supervisor.events import JobChange
from supervisor.job import JobSpec, Status
from supervisor.runner import Supervisor
from supervisor.settings import Settings
from supervisor.testing import Behaviour, FakeProcesses, ManualClock, MemoryStore
from tests.support import wait_until

T0 = 1_700_000_000.0


def change(job_id: int, src: Status | None, to: Status, reason: str, attempt: int = 1) -> JobChange:
    return JobChange(job_id, src, to, reason, attempt)


class Steps:
    """A clock for the talker that moves only when the test says."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ([change(1, Status.PENDING, Status.PREPARING, "claimed", 2)], "job 1: claimed (attempt 2)"),
        ([change(1, Status.PREPARING, Status.RUNNING, "agent started (pid 42)")], "job 1: started (pid 42)"),
        (
            [
                change(1, Status.PREPARING, Status.RUNNING, "agent started (pid 42)"),
                change(1, Status.RUNNING, Status.COMPLETED, "completed"),
            ],
            "job 1: completed in 3.2 s",
        ),
        (
            [
                change(
                    1,
                    Status.RUNNING,
                    Status.WAITING_RETRY,
                    "exit code 1; retry in 8.0 s (1 of 3 attempts used)",
                )
            ],
            "job 1: failed: exit code 1 — retry in 8.0 s (1 of 3 attempts used)",
        ),
        (
            [change(1, Status.RUNNING, Status.FAILED, "timed out after 2 s; killed by SIGKILL")],
            "job 1: timed out after 2 s (killed by SIGKILL)",
        ),
        ([change(1, Status.RUNNING, Status.FAILED, "exit code 3")], "job 1: failed: exit code 3"),
        (
            [change(1, Status.RUNNING, Status.CANCELLED, "cancelled while running; killed by SIGTERM")],
            "job 1: cancelled (killed by SIGTERM)",
        ),
    ],
)
def test_each_transition_is_one_human_line(changes: list[JobChange], expected: str) -> None:
    """Every transition becomes one line in words; the last one here reads as expected."""
    out, steps = io.StringIO(), Steps()
    talker = Talker(out, wall=lambda: 0.0, clock=steps)
    for c in changes:
        talker.change(c)
        steps.t += 3.2
    lines = out.getvalue().splitlines()
    assert len(lines) == len(changes)
    assert lines[-1].split(" ", 1)[1] == expected


def test_progress_is_not_a_transition_line() -> None:
    """A progress report says nothing in text (it shows in health/show), but is a JSON line."""
    text, js = io.StringIO(), io.StringIO()
    progress = JobChange(1, Status.RUNNING, Status.RUNNING, "progress", 1, {"step": 1})
    Talker(text).change(progress)
    Talker(js, fmt="json").change(progress)
    assert text.getvalue() == ""
    assert json.loads(js.getvalue())["progress"] == {"step": 1}


def test_quiet_says_no_transition_but_still_the_outage() -> None:
    """-q: transitions are silent; a store outage still gets its line."""
    out = io.StringIO()
    talker = Talker(out, quiet=True)
    talker.change(change(1, Status.PENDING, Status.PREPARING, "claimed"))
    talker.store_down("connection refused")
    assert out.getvalue().count("\n") == 1 and "store unreachable (connection refused)" in out.getvalue()


def test_json_lines_carry_the_transition_and_its_words() -> None:
    """--log-format json: one object per line with type, ids, statuses and the human message."""
    out, steps = io.StringIO(), Steps()
    talker = Talker(out, fmt="json", clock=steps)
    talker.change(change(7, Status.PREPARING, Status.RUNNING, "agent started (pid 9)"))
    steps.t += 1.5
    talker.change(change(7, Status.RUNNING, Status.COMPLETED, "completed"))
    talker.store_down("boom")
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["type"], first["job_id"], first["from"], first["to"]) == ("job", 7, "preparing", "running")
    assert (second["duration_s"], second["message"]) == (1.5, "job 7: completed in 1.5 s")
    assert (third["type"], third["state"]) == ("store", "down")


def test_the_summary_line_is_redrawn_in_place_under_the_lines() -> None:
    """On a terminal each line clears the summary, prints, and redraws it with fresh counts."""
    out = io.StringIO()
    store = MemoryStore()
    store.enqueue([JobSpec(command=("x",)), JobSpec(command=("y",))])
    talker = Talker(out, summary=True, store=store)
    talker.tick()
    talker.change(change(1, Status.PENDING, Status.PREPARING, "claimed"))
    talker.change(change(1, Status.RUNNING, Status.COMPLETED, "completed"))
    text = out.getvalue()
    assert text.endswith("\r\x1b[Krunning 0 · pending 2 · done 1 · failed 0")
    assert "\r\x1b[Krunning 1 · pending 2 · done 0 · failed 0\r\x1b[K" in text


def test_the_outage_filter_folds_engine_records_into_one_line() -> None:
    """Many failed calls while down: one 'unreachable' line, and the retries say nothing."""
    out = io.StringIO()
    talker = Talker(out)
    filt = OutageFilter(talker, verbose=False)

    def record(name: str, msg: str, *args: Any) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)

    passed = [
        filt.filter(
            record("agent_supervisor.store", "%s: %s failed (%s); retry %d in %.2f s", "s", "f", "e", 1, 0.5)
        ),
        filt.filter(
            record(
                "agent_supervisor",
                "store unreachable; running agents carry on, nothing new starts: %s",
                "refused",
            )
        ),
        filt.filter(record("agent_supervisor", "heartbeat failed: %s", "refused")),
        filt.filter(record("agent_supervisor", "outbox: %d outcomes wait for the store (%s)", 2, "refused")),
        filt.filter(record("agent_supervisor", "something else: %s", "x")),
    ]
    assert passed == [False, False, False, False, True]
    assert out.getvalue().count("store unreachable") == 1
    filt.filter(record("agent_supervisor", "store reachable again after %.0f s", 3.0))
    assert out.getvalue().count("store reachable again") == 1


# -- a real supervisor, a store that goes down and comes back ---------------------------------
class FlakyStore(MemoryStore):
    """A MemoryStore that does not answer between ``down_at`` and ``up_at`` (clock time)."""

    def __init__(self, clock: ManualClock, down_at: float, up_at: float) -> None:
        super().__init__(clock=clock, seed=1)
        self._clock_ = clock
        self.down_at, self.up_at = down_at, up_at
        self.refused = 0

    def _check(self) -> None:
        if self.down_at <= self._clock_() < self.up_at:
            self.refused += 1
            raise StoreUnavailableError("connection refused")

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in {"claim", "heartbeat", "finish", "reap_stale", "now", "counts", "mark_running", "list"}:
            check = super().__getattribute__("_check")

            def guarded(*args: Any, **kw: Any) -> Any:
                check()
                return attr(*args, **kw)

            return guarded
        return attr


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_store_outage_is_one_line_down_and_one_line_up(tmp_path: Path, root_logging: None) -> None:
    """The store stops answering while a job runs and comes back 40 s later: run says so in
    exactly two lines, though the loop's calls failed many times in between."""
    clock = ManualClock(T0)
    store = FlakyStore(clock, down_at=T0 + 5, up_at=T0 + 45)
    store.enqueue([JobSpec(command=("agent",))])
    fake = FakeProcesses(clock, default=Behaviour(runtime_s=20.0))
    out = io.StringIO()
    talker = Talker(out, wall=clock, clock=clock)
    args = argparse.Namespace(log_format="text", verbose=0, quiet=False)
    handler = talk_logging(args, talker)
    try:
        settings = Settings(data_dir=tmp_path / "d", heartbeat_s=2.0, lease_s=10.0, poll_s=1.0)
        sup = Supervisor(
            settings,
            store,
            clock=clock,
            processes=fake,
            on_change=talker.change,
            install_signal_handlers=False,
        )
        sup.run(until_idle=True)
    finally:
        logging.getLogger().removeHandler(handler)
    text = out.getvalue()
    assert store.refused > 3  # the loop really kept failing
    assert text.count("store unreachable") == 1, text
    assert text.count("store reachable again") == 1, text
    assert text.index("store unreachable") < text.index("store reachable again") < text.index("completed")
    assert "store unreachable (connection refused); no new work" in text
    assert "job 1: completed (synced from the outbox)" in text
    assert "retry" not in text.split("store unreachable")[1].split("store reachable again")[0]


def test_without_a_terminal_the_thread_sleeps_until_the_store_goes_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``run`` with stderr in a file: no summary to draw, so the talk thread does not wake at
    all while the store answers (an idle ``run`` costs no wake-up of its own); once the store
    goes down it ticks to probe it, and ``close`` ends it either way."""
    import bridge.cli.talk as talk

    monkeypatch.setattr(talk, "_SUMMARY_S", 0.01)
    ticks: list[float] = []

    class Counting(Talker):
        def tick(self) -> None:
            ticks.append(0.0)

    talker = Counting(io.StringIO(), store=MemoryStore())
    talker.start()
    try:
        quiet_until = time.monotonic() + 0.3  # 30 summary periods: a ticking thread shows
        wait_until(lambda: time.monotonic() >= quiet_until, 1)
        assert ticks == []
        talker.store_down("connection refused")
        wait_until(lambda: len(ticks) >= 2, 5, message="the thread probing the down store")
    finally:
        talker.close()
    assert talker._thread is not None and not talker._thread.is_alive()
