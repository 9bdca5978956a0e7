"""Recurring jobs: ``[schedules.<name>]`` tables in the config, and which slots are due.

A schedule is a cron expression in a time zone, and the job to enqueue at each of its slots::

    [schedules.nightly]
    cron = "0 3 * * *"            # five fields, or @hourly @daily @weekly @monthly @yearly
    kind = "summarize"            # a registered kind
    payload = { folder = "inbox" }
    timezone = "Europe/Berlin"    # IANA name; default: this machine's zone
    missed = "once"               # or "skip"

Pure: no clock, no I/O, no store. The supervisor loop asks ``Schedules.due(since, now)`` for
the jobs of the slots that came in (since, now] and ``next_at(now)`` for when to ask again;
it enqueues what it gets. Each job carries ``unique_key = "schedule:<name>:<slot>"`` (the slot
in UTC, ``2026-12-03T02:00:00Z``), and the store keeps at most one job per unique key, so
several supervisors on one store — or one that asks twice — enqueue each slot once.

**Missed slots** (the supervisor was down, the machine asleep): of the slots in (since, now]
only the latest counts.

- ``once`` (default): it is enqueued however late: after a night switched off, a nightly job
  runs once in the morning, not once per missed night.
- ``skip``: it is enqueued only if it is at most ``ON_TIME_S`` late; a slot missed by more is
  dropped, and the schedule waits for its next one.

``since`` is the caller's: when it last asked (or, after a restart, when the previous run was
last alive). Time zones follow Debian cron (cronsim): a slot in the hour skipped by a
daylight-saving change runs at the end of the gap; one in the repeated hour runs once.

The cron parser (cronsim) and zoneinfo are imported only when a schedule is configured: the
engine runs inside other people's apps, and most never schedule anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from supervisor.job import JobSpec, check_payload

__all__ = [
    "ALIASES",
    "ON_TIME_S",
    "ScheduleConfig",
    "ScheduleFeed",
    "Schedules",
    "Slot",
    "local_zone",
    "slot_key",
]

ON_TIME_S: Final = 60.0
"""How late a slot may be and still count as on time for ``missed = "skip"`` (a busy tick,
a wake-up from sleep seconds after the slot)."""
MAX_NAME_CHARS: Final = 150
"""``schedule:`` + name + ``:`` + a 20-character time must fit a 200-character unique key."""
ALIASES: Final = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def _expression(cron: str) -> str:
    return ALIASES.get(cron.strip().lower(), cron.strip())


class ScheduleConfig(BaseModel):
    """One ``[schedules.<name>]`` table: when (cron, timezone), what (kind, payload,
    priority), and what to do about slots missed while nothing ran (``missed``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    cron: str
    """Five cron fields (minute hour day-of-month month day-of-week) or an @alias."""
    kind: str
    """The registered kind to run at each slot."""
    payload: Any = Field(default_factory=dict)
    """The job's payload (any JSON)."""
    priority: int = 0
    """The job's priority."""
    timezone: str | None = None
    """IANA time zone of the cron fields (``Europe/Berlin``, ``UTC``); default: the machine's.
    Give it when several machines share a store, so that they agree on the slots."""
    missed: Literal["once", "skip"] = "once"
    """After downtime: run the latest missed slot once, or skip missed slots."""

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, cron: str) -> str:
        from cronsim import CronSim, CronSimError

        expression = _expression(cron)
        if len(expression.split()) != 5:
            raise ValueError(f"{cron!r} is not five cron fields (minute hour day month weekday) or an @alias")
        try:
            CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ValueError(f"{cron!r} is not a valid cron expression: {exc}") from None
        return cron

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, name: str | None) -> str | None:
        if name is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r} (an IANA name such as Europe/Berlin or UTC)"
            ) from None
        return name

    @field_validator("payload")
    @classmethod
    def _check_payload(cls, payload: Any) -> Any:
        check_payload(payload)  # the same rule as a submitted job's: plain JSON, 1 MiB
        return payload


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot of one schedule: its name and its time (epoch seconds)."""

    name: str
    at: float

    @property
    def key(self) -> str:
        """The job's ``unique_key``: ``schedule:<name>:<slot in UTC>``."""
        return slot_key(self.name, self.at)


def slot_key(name: str, at: float) -> str:
    """``schedule:nightly:2026-12-03T02:00:00Z``: the same text on every machine for a slot."""
    return f"schedule:{name}:{datetime.fromtimestamp(at, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def local_zone() -> tzinfo:
    """This machine's time zone, with its daylight-saving rules: ``$TZ`` if it names a zone,
    else the zone ``/etc/localtime`` links to, else UTC's fixed offset from the C library.

    The fixed offset (``datetime.astimezone()``) would be wrong after the next DST change, so
    it is the last resort."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.readlink("/etc/localtime")
        parts = Path(target).parts
        if "zoneinfo" in parts:
            candidates.append("/".join(parts[parts.index("zoneinfo") + 1 :]))
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return datetime.now().astimezone().tzinfo or UTC


class Schedules:
    """The configured schedules, ready to answer which slots are due.

    ``schedules`` is ``Settings.schedules``; ``zone`` is the default time zone of those that
    name none (``local_zone()``, injected by tests). Build it only when ``schedules`` is not
    empty: building it imports the cron parser.
    """

    def __init__(self, schedules: Mapping[str, ScheduleConfig], *, zone: tzinfo | None = None) -> None:
        from zoneinfo import ZoneInfo

        default = zone if zone is not None else (local_zone() if schedules else UTC)
        self._configs = dict(schedules)
        self._zones: dict[str, tzinfo] = {
            name: ZoneInfo(c.timezone) if c.timezone else default for name, c in schedules.items()
        }

    def __bool__(self) -> bool:
        return bool(self._configs)

    def due_slots(self, since: float, now: float) -> list[Slot]:
        """Per schedule, the slot to enqueue for (since, now] under its ``missed`` policy: the
        latest slot in it (``once``), or that slot only if at most ``ON_TIME_S`` late (``skip``)."""
        due = []
        for name, config in self._configs.items():
            at = self._latest(name, now)
            if at is None or at <= since:
                continue
            if config.missed == "skip" and now - at > ON_TIME_S:
                continue
            due.append(Slot(name, at))
        return due

    def due(self, since: float, now: float) -> list[JobSpec]:
        """The jobs to enqueue for the slots of (since, now] (``due_slots``), each with the
        slot's ``unique_key``."""
        return [self.spec(slot) for slot in self.due_slots(since, now)]

    def spec(self, slot: Slot) -> JobSpec:
        """The job of one slot."""
        config = self._configs[slot.name]
        return JobSpec(
            kind=config.kind, payload=config.payload, priority=config.priority, unique_key=slot.key
        )

    def next_at(self, after: float) -> float:
        """The time of the next slot of any schedule after ``after`` (``inf`` without any)."""
        from cronsim import CronSim

        soonest = math.inf
        for name, config in self._configs.items():
            start = datetime.fromtimestamp(after, self._zones[name])
            soonest = min(soonest, next(CronSim(_expression(config.cron), start)).timestamp())
        return soonest

    def _latest(self, name: str, now: float) -> float | None:
        """The latest slot at or before ``now``; cronsim's reverse step is "strictly before"
        its start, and slots fall on whole seconds, so start one second past ``now`` (counted
        in UTC: wall-clock arithmetic would go wrong in the hour a DST change repeats)."""
        from cronsim import CronSim

        start = datetime.fromtimestamp(math.floor(now) + 1, UTC).astimezone(self._zones[name])
        try:
            return next(CronSim(_expression(self._configs[name].cron), start, reverse=True)).timestamp()
        except StopIteration:  # pragma: no cover - cronsim iterates without end
            return None


class ScheduleFeed:
    """The schedules of one supervisor run and where it stands in them: ``since`` (wall
    clock; slots after it are still to enqueue) and ``at`` (the next slot, ``inf`` without
    schedules). ``due(wall)`` gives the jobs to enqueue; ``done(wall)`` once they are in the
    store (each with its slot's unique key, so another supervisor enqueuing the same slot
    changes nothing)."""

    def __init__(self, since: float) -> None:
        self.since = since
        self.at = math.inf
        self._schedules: Schedules | None = None

    def load(self, configs: Mapping[str, ScheduleConfig]) -> None:
        """Take the settings' schedules (anew on reload); the cron parser loads only for some."""
        self._schedules = Schedules(configs) if configs else None
        self.at = self._schedules.next_at(self.since) if self._schedules else math.inf

    def due(self, wall: float) -> list[JobSpec]:
        return self._schedules.due(self.since, wall) if self._schedules else []

    def done(self, wall: float) -> None:
        self.since = wall
        self.at = self._schedules.next_at(wall) if self._schedules else math.inf
