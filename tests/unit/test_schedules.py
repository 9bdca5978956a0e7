"""Recurring schedules: which slot is due, under each missed-slot policy, in every time zone."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from supervisor.errors import ConfigError
from supervisor.schedules import ON_TIME_S, ScheduleConfig, Schedules, Slot, slot_key
from supervisor.settings import KindConfig, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
BERLIN = ZoneInfo("Europe/Berlin")
LATE_ON_TIME = f"2026-12-03T03:00:{int(ON_TIME_S) - 1:02d}"


def at(text: str, zone: ZoneInfo | None = None) -> float:
    """An ISO time in ``zone`` (UTC by default) as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=zone or UTC).timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def schedules(cron: str = "0 3 * * *", *, missed: str = "once", timezone: str | None = "UTC") -> Schedules:
    config = ScheduleConfig(cron=cron, kind="echo", missed=missed, timezone=timezone)  # type: ignore[arg-type]
    return Schedules({"nightly": config}, zone=UTC)


@pytest.mark.parametrize(
    ("since", "now", "missed", "expected"),
    [
        # on time: the slot came in (since, now]
        ("2026-12-03T02:59:59", "2026-12-03T03:00:00", "once", ["2026-12-03T03:00:00Z"]),
        ("2026-12-03T02:59:59", "2026-12-03T03:00:00", "skip", ["2026-12-03T03:00:00Z"]),
        # nothing new: the slot was at or before since
        ("2026-12-03T03:00:00", "2026-12-03T03:00:30", "once", []),
        ("2026-12-03T03:00:01", "2026-12-04T02:59:59", "once", []),
        # a tick a little late still counts as on time for skip
        (
            "2026-12-03T02:59:00",
            f"2026-12-03T03:00:{int(ON_TIME_S) - 1:02d}",
            "skip",
            ["2026-12-03T03:00:00Z"],
        ),
        # three nights down: once runs the latest missed slot, once; skip runs none
        ("2026-12-01T12:00:00", "2026-12-04T09:00:00", "once", ["2026-12-04T03:00:00Z"]),
        ("2026-12-01T12:00:00", "2026-12-04T09:00:00", "skip", []),
        # a slot missed by more than ON_TIME_S is skipped
        ("2026-12-03T02:00:00", "2026-12-03T03:05:00", "skip", []),
        ("2026-12-03T02:00:00", "2026-12-03T03:05:00", "once", ["2026-12-03T03:00:00Z"]),
    ],
)
def test_due_slots_follow_the_missed_policy(since: str, now: str, missed: str, expected: list[str]) -> None:
    """Only the latest slot of (since, now] is due: always with once, only if on time with skip."""
    due = schedules(missed=missed).due_slots(at(since), at(now))
    assert [iso(s.at) for s in due] == expected


def test_a_slot_exactly_at_now_is_due_and_not_again() -> None:
    """A slot at exactly ``now`` is due; asking again from that ``now`` does not repeat it."""
    s = schedules("*/15 * * * *")
    now = at("2026-12-03T10:15:00")
    assert [iso(x.at) for x in s.due_slots(now - 1, now)] == ["2026-12-03T10:15:00Z"]
    assert s.due_slots(now, now + 60) == []


def test_next_at_is_the_following_slot() -> None:
    """next_at is the first slot strictly after the given time, across all schedules."""
    configs = {
        "a": ScheduleConfig(cron="0 3 * * *", kind="echo", timezone="UTC"),
        "b": ScheduleConfig(cron="@hourly", kind="echo", timezone="UTC"),
    }
    s = Schedules(configs, zone=UTC)
    assert iso(s.next_at(at("2026-12-03T02:10:00"))) == "2026-12-03T03:00:00Z"
    assert iso(s.next_at(at("2026-12-03T03:00:00"))) == "2026-12-03T04:00:00Z"
    assert Schedules({}, zone=UTC).next_at(0.0) == float("inf")


@pytest.mark.parametrize(
    ("now_local", "expected_utc"),
    [
        # winter: Berlin is UTC+1, so 03:00 local is 02:00 UTC
        ("2026-12-03T03:00:00", "2026-12-03T02:00:00Z"),
        # summer: UTC+2
        ("2026-07-03T03:00:00", "2026-07-03T01:00:00Z"),
    ],
)
def test_slots_are_in_the_schedules_time_zone(now_local: str, expected_utc: str) -> None:
    """The cron fields are read in the schedule's zone; the slot key is the same instant in UTC."""
    s = schedules(timezone="Europe/Berlin")
    now = at(now_local, BERLIN)
    [slot] = s.due_slots(now - 30, now)
    assert iso(slot.at) == expected_utc
    assert slot.key == f"schedule:nightly:{expected_utc}"


def test_the_default_zone_is_the_one_given() -> None:
    """A schedule without ``timezone`` uses the zone the loop passes (the machine's)."""
    config = ScheduleConfig(cron="0 3 * * *", kind="echo")
    s = Schedules({"n": config}, zone=BERLIN)
    now = at("2026-12-03T03:00:00", BERLIN)
    assert [iso(x.at) for x in s.due_slots(now - 1, now)] == ["2026-12-03T02:00:00Z"]


def test_a_slot_in_the_skipped_dst_hour_runs_at_the_end_of_the_gap() -> None:
    """02:30 does not exist in Berlin on 2026-03-29 (clocks jump 02:00 → 03:00): the slot is
    03:00 local, once, as Debian cron does."""
    s = schedules("30 2 * * *", timezone="Europe/Berlin")
    since, now = at("2026-03-29T01:00:00", BERLIN), at("2026-03-29T04:00:00", ZoneInfo("Europe/Berlin"))
    [slot] = s.due_slots(since, now)
    assert iso(slot.at) == "2026-03-29T01:00:00Z"  # 03:00 CEST


def test_a_slot_in_the_repeated_dst_hour_runs_once() -> None:
    """02:30 happens twice in Berlin on 2026-10-25: a daily 02:30 schedule has one slot that day."""
    s = schedules("30 2 * * *", timezone="Europe/Berlin")
    day_start, day_end = at("2026-10-25T00:00:00", BERLIN), at("2026-10-25T23:59:00", BERLIN)
    slots = []
    t = day_start
    while (t := s.next_at(t)) <= day_end:
        slots.append(iso(t))
    assert slots == ["2026-10-25T00:30:00Z"]  # 02:30 CEST, the first of the two


def test_slot_key_is_the_instant_in_utc() -> None:
    """The unique key names the schedule and the slot's UTC time, to the second."""
    assert slot_key("nightly", at("2026-12-03T02:00:00")) == "schedule:nightly:2026-12-03T02:00:00Z"
    assert Slot("x", at("2026-12-03T02:00:00")).key == "schedule:x:2026-12-03T02:00:00Z"


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('cron = "0 3 * *"\nkind = "echo"', "not five cron fields"),
        ('cron = "61 3 * * *"\nkind = "echo"', "not a valid cron expression"),
        ('cron = "0 3 * * *"\nkind = "ghost"', "kind 'ghost' is not registered"),
        ('cron = "0 3 * * *"\nkind = "echo"\ntimezone = "Mars/Olympus"', "unknown time zone"),
        ('cron = "0 3 * * *"\nkind = "echo"\nmissed = "twice"', "schedules.nightly.missed"),
        ('cron = "0 3 * * *"\nkind = "echo"\ncolour = "red"', "schedules.nightly.colour"),
    ],
)
def test_a_bad_schedule_is_one_config_error(tmp_path: Path, table: str, needle: str) -> None:
    """Every mistake in a [schedules.x] table is refused at load, in one line naming it."""
    config = tmp_path / "config.toml"
    config.write_text(f'[kinds.echo]\nargv = ["echo"]\n\n[schedules.nightly]\n{table}\n')
    with pytest.raises(ConfigError, match=needle) as info:
        load_settings(config, data_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_schedules_load_from_the_config_file(tmp_path: Path) -> None:
    """A [schedules.x] table with an @alias, payload and priority becomes a ScheduleConfig."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[kinds.echo]\nargv = ["echo"]\n\n[schedules.hourly-sync]\ncron = "@hourly"\nkind = "echo"\n'
        'payload = { folder = "inbox" }\npriority = 5\nmissed = "skip"\n'
    )
    settings = load_settings(config, data_dir=tmp_path)
    s = settings.schedules["hourly-sync"]
    assert (s.cron, s.kind, s.payload, s.priority, s.missed, s.timezone) == (
        "@hourly",
        "echo",
        {"folder": "inbox"},
        5,
        "skip",
        None,
    )


def test_schedule_names_fit_a_unique_key() -> None:
    """A schedule name with ':' or too long for a unique key is refused."""
    echo = {"echo": KindConfig(argv=["echo"])}
    for name in ("a:b", "x" * 151):
        with pytest.raises(ValueError, match="schedule name"):
            Settings(kinds=echo, schedules={name: ScheduleConfig(cron="@daily", kind="echo")})


def test_settings_without_schedules_never_import_the_cron_parser() -> None:
    """Loading settings without schedules (and the schedules module) does not load cronsim."""
    code = (
        "import sys; from supervisor.settings import Settings; import supervisor.schedules; "
        "Settings(); print('cronsim' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False"]


def test_due_gives_the_slots_jobs_with_their_unique_keys() -> None:
    """due() turns each due slot into a JobSpec of the schedule's kind, payload and priority,
    keyed by the slot, so a second enqueue of the same slot finds the first job."""
    config = ScheduleConfig(
        cron="0 3 * * *", kind="echo", payload={"folder": "inbox"}, priority=4, timezone="UTC"
    )
    s = Schedules({"nightly": config}, zone=UTC)
    [spec] = s.due(at("2026-12-03T02:59:00"), at("2026-12-03T03:00:05"))
    assert (spec.kind, spec.payload, spec.priority, spec.unique_key) == (
        "echo",
        {"folder": "inbox"},
        4,
        "schedule:nightly:2026-12-03T03:00:00Z",
    )


def test_two_supervisors_enqueue_a_slot_once() -> None:
    """Two Schedules asking about the same slot (two supervisors, skewed clocks) produce the
    same unique key; the store keeps one job for it."""
    from supervisor.testing import MemoryStore

    store = MemoryStore()
    a, b = schedules(), schedules()
    first = store.enqueue(a.due(at("2026-12-03T02:59:50"), at("2026-12-03T03:00:01")))
    second = store.enqueue(b.due(at("2026-12-03T02:59:58"), at("2026-12-03T03:00:09")))
    assert first == second and len(store.list()) == 1
