"""The durable outbox: ordered, crash-tolerant, private."""

from __future__ import annotations

from pathlib import Path

from supervisor.lifecycle import DecidedBy, ErrorKind, Outcome
from supervisor.outbox import Outbox, OutboxEntry, outbox_depth


def entry(job_id: int) -> OutboxEntry:
    outcome = Outcome(
        error_kind=ErrorKind.EXIT_CODE,
        error="exit code 3",
        exit_code=3,
        result={"r": [1]},
        decided_by=DecidedBy.EXIT,
        facts={"pid": 7, "signals": []},
        forgive=True,
    )
    return OutboxEntry(job_id, "w", 2, outcome)


def test_entries_survive_a_restart_in_order(tmp_path: Path) -> None:
    """Appended entries are read back, in order and intact, by a new Outbox on the same file."""
    path = tmp_path / "outbox.jsonl"
    box = Outbox(path)
    for job_id in (3, 1, 2):
        box.append(entry(job_id))
    again = Outbox(path)
    assert [e.job_id for e in again.entries] == [3, 1, 2]
    assert again.entries[0] == entry(3)
    assert path.stat().st_mode & 0o077 == 0
    assert outbox_depth(path) == 3


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A line torn by a crash mid-append (bad CRC) is skipped; the rest still loads."""
    path = tmp_path / "outbox.jsonl"
    box = Outbox(path)
    box.append(entry(1))
    box.append(entry(2))
    data = path.read_bytes()
    path.write_bytes(data[:-15])
    assert [e.job_id for e in Outbox(path).entries] == [1]


def test_drop_first_rewrites_atomically(tmp_path: Path) -> None:
    """Dropping replayed entries keeps the rest, and an empty outbox removes its file."""
    path = tmp_path / "outbox.jsonl"
    box = Outbox(path)
    for job_id in (1, 2, 3):
        box.append(entry(job_id))
    box.drop_first(2)
    assert [e.job_id for e in Outbox(path).entries] == [3]
    box.drop_first(1)
    assert not path.exists()
    assert len(box) == 0
