"""The command line's words: plain-English counts, progress in a few words, health with the
agents' progress, show with the payload and each event's facts."""

from __future__ import annotations

import pytest

from bridge.cli.render import count, health_text, progress_text, show_text
from bridge.service import JobDetail
from supervisor.health import HealthReport
from supervisor.job import DecidedBy, Event, Job, Status


@pytest.mark.parametrize(
    ("n", "noun", "expected"),
    [
        (0, "job", "0 jobs"),
        (1, "job", "1 job"),
        (3, "job", "3 jobs"),
        (1, "process", "1 process"),
        (2, "process", "2 processes"),
    ],
)
def test_counts_are_plain_english(n: int, noun: str, expected: str) -> None:
    """A count agrees with its noun: 1 job, 3 jobs, 2 processes."""
    assert count(n, noun) == expected


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        ({"step": 3, "of": 5}, "3 of 5"),
        ({"done": 40, "total": 100, "message": "indexing"}, "40 of 100, indexing"),
        ({"percent": 12.5}, "12.5 %"),
        ({"phase": "warm-up"}, '{"phase": "warm-up"}'),
        ("halfway", '"halfway"'),
    ],
)
def test_progress_reads_in_a_few_words(progress: object, expected: str) -> None:
    """The common progress shapes read as words; anything else as its JSON."""
    assert progress_text(progress) == expected


def report(**over: object) -> HealthReport:
    fields: dict[str, object] = {
        "running": 1,
        "pending": 0,
        "waiting_retry": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "max_concurrent": 2,
        "running_here": 1,
        "utilization": 0.5,
        "oldest_running_age_s": 1.0,
        "oldest_pending_age_s": None,
        "stuck_after_s": 900.0,
        "worker_id": "w",
        "supervisor_running": True,
        "admission": {"state": "open"},
        "agents": [
            {
                "job_id": 7,
                "kind": "summarize",
                "rss_bytes": 3 << 20,
                "processes": 1,
                "progress": {"step": 2, "of": 5},
            }
        ],
    }
    fields.update(over)
    return HealthReport(**fields)  # type: ignore[arg-type]


def test_health_shows_each_agents_progress() -> None:
    """An agent row of health carries its progress in words, and '1 process'."""
    text = health_text(report())
    assert "job     7 summarize" in text and "1 process" in text and "progress: 2 of 5" in text


def test_health_without_progress_says_nothing_about_it() -> None:
    """An agent that reported no progress gets no progress field."""
    text = health_text(report(agents=[{"job_id": 7, "kind": None}]))
    assert "progress" not in text and "0 processes" in text


def test_show_has_payload_facts_and_final_progress() -> None:
    """show: the payload (indented JSON), each event's facts, progress marked as last reported."""
    job = Job(
        id=5,
        status=Status.COMPLETED,
        created_at=0.0,
        updated_at=1.0,
        command=("x",),
        payload={"note": "inbox.md", "tags": ["a", "b"]},
        progress={"step": 4, "of": 5},
    )
    events = [
        Event(5, 0.0, None, Status.PENDING, "submitted", DecidedBy.USER),
        Event(
            5,
            1.0,
            Status.RUNNING,
            Status.COMPLETED,
            "completed",
            DecidedBy.EXIT,
            "w1",
            1,
            {"exit_code": 0, "signal": None, "runtime_s": 0.8},
        ),
    ]
    text = show_text(JobDetail(job, events))
    assert 'payload:\n  {\n    "note": "inbox.md",' in text
    assert "worker=w1  exit_code=0  runtime_s=0.8" in text and "signal=" not in text
    assert "progress:         4 of 5  (last reported; the job has ended)" in text
    assert "events (2):" in text
