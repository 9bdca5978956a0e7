"""What ``JobService`` answers, and its own errors: plain data a front end renders
(bridge/views.py holds their JSON shapes), and two pure helpers the front ends share
(``how_ended``: a stop in words; ``utf8_bounds``: a log chunk cut on whole characters).

Errors, both subclasses of the project's ``SupervisorError``::

    SupervisorError
     ├── UsageError (also a ValueError)       arguments the rule forbids together or apart
     └── LogNotFoundError (also a LookupError) the attempt never ran, or its log file is gone
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from supervisor.errors import SupervisorError
from supervisor.lifecycle import LIVE, TERMINAL, Event, Job, Status

if TYPE_CHECKING:
    from supervisor.reconcile import Decision

__all__ = [
    "ChangeResult",
    "JobDetail",
    "LogChunk",
    "LogNotFoundError",
    "Queued",
    "Reconciliation",
    "RunningSupervisor",
    "Stopped",
    "UsageError",
    "how_ended",
    "utf8_bounds",
]


class UsageError(SupervisorError, ValueError):
    """A combination of arguments that a rule forbids (the CLI's exit 2, JSON-RPC's -32602).

    ``template`` and ``reason`` name the parameters involved as ``{ids}``, ``{statuses}`` and
    ``{older_than_s}``; ``param`` is the one to point at (None: no single one). ``str()`` uses
    those names as they are; a front end calls ``render`` with its own spelling of each.
    """

    def __init__(self, template: str, *, param: str | None = None, reason: str | None = None) -> None:
        self.template = template
        self.param = param
        self.reason = reason if reason is not None else template
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | None = None, *, reason: bool = False) -> str:
        """The message (or with ``reason``, the reason) with each ``{param}`` spelled as
        ``names`` says; a parameter ``names`` leaves out keeps the service's name."""
        return (self.reason if reason else self.template).format_map(_Names(names or {}))


class _Names(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return key


class LogNotFoundError(SupervisorError, LookupError):
    """No log to read: the job never ran (``attempt`` 0, ``path`` None), or the attempt's log
    file does not exist (yet)."""

    def __init__(self, message: str, *, job: Job, attempt: int, path: Path | None) -> None:
        super().__init__(message)
        self.job = job
        self.attempt = attempt
        self.path = path


class RunningSupervisor(Protocol):
    """What the service needs of a supervisor running in its process (``runner.Supervisor``)."""

    def wake(self) -> None:
        """Look at the store now instead of at the next poll."""
        ...


@dataclass(frozen=True, slots=True)
class JobDetail:
    """One job and its event log, oldest event first (``show``, JSON-RPC ``get``)."""

    job: Job
    events: builtins.list[Event]


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """What one id of a cancel or retry came to: the job after the change and its status
    before, or the error that refused it (the other ids of the call went on)."""

    job_id: int
    reason: str
    """Why the job changed, for notifications: ``cancel requested``, ``retry requested``."""
    job: Job | None = None
    before: Status | None = None
    error: SupervisorError | None = None

    def unwrap(self) -> Job:
        """The changed job, or raise the error that refused the change."""
        if self.error is not None:
            raise self.error
        assert self.job is not None
        return self.job


@dataclass(frozen=True, slots=True)
class LogChunk:
    """Bytes of one attempt's log: ``data`` starts at ``offset`` in a file of ``size`` bytes."""

    job: Job
    """The job as it was just before the file was read: not live → nothing more will come."""
    attempt: int
    path: Path
    data: bytes
    offset: int
    size: int

    @property
    def next_offset(self) -> int:
        """Where to read on."""
        return self.offset + len(self.data)

    @property
    def eof(self) -> bool:
        """Nothing more to read now (a live job may write more)."""
        return self.next_offset >= self.size


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The outcome of ``reconcile``: whether it ran, what it decided, the outbox left."""

    ran: bool
    decisions: builtins.list[Decision]
    outbox_depth: int


@dataclass(frozen=True, slots=True)
class Queued:
    """A submitted job as it stands just after ``submit``: its status and place in the queue."""

    job_id: int
    status: Status
    queue_position: int | None
    """1-based place among pending jobs in claim order; None when it is not pending (a
    dedup or unique key returned an older job that already runs or ended)."""
    run_after: float | None
    """When a delayed job becomes claimable (store clock); None for one that is claimable now."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """How waiting for one job's agent to be gone ended (``cancel --wait``, ``kill --wait``)."""

    job_id: int
    stopped: bool
    """The job holds no agent any more (False: the wait timed out while it still ran)."""
    how: str
    """In words: ``stopped by SIGTERM``, ``killed by SIGKILL``, ``already finished
    (completed)``, ``cancelled before it ran``, ``still running after 17 s``…"""
    job: Job | None = None
    """The job as last read; None when it no longer exists (purged meanwhile)."""


def how_ended(before: Status | None, job: Job, events: Sequence[Event]) -> str:
    """How a job that was asked to stop ended, in words, from its status before the request,
    its status now and the facts of the event that settled it (``exit_code``, ``signal``: the
    signal that ended the agent, ``signals``: the ones the supervisor sent)."""
    import signal

    if before is not None and before not in LIVE:
        if before in TERMINAL:
            return f"already finished ({before.value})"
        return "cancelled before it ran"
    settle = next((e for e in reversed(events) if e.from_status in LIVE and e.to_status not in LIVE), None)
    facts = settle.facts if settle is not None else {}
    number = facts.get("signal")
    sent = [s.get("signal") for s in facts.get("signals") or () if isinstance(s, dict)]
    if isinstance(number, int):
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if name == "SIGKILL":
            return "killed by SIGKILL"
        return f"stopped by {name}" if name in sent or name == "SIGTERM" else f"killed by {name}"
    code = facts.get("exit_code")
    if isinstance(code, int):
        if sent:
            return f"exited with code {code} after {sent[-1]}"
        return f"finished on its own before the request reached it ({job.status.value}, exit code {code})"
    if settle is not None:
        return f"{job.status.value}: {settle.reason}"
    return job.status.value


def utf8_bounds(data: bytes, *, skip_head: bool, hold_tail: bool) -> tuple[int, int]:
    """(begin, end) of ``data`` without a partial character at the start (when ``skip_head``)
    and at the end (when ``hold_tail``); at most 3 bytes are cut on either side."""
    begin = 0
    if skip_head:
        while begin < min(3, len(data)) and data[begin] & 0xC0 == 0x80:
            begin += 1
    end = len(data)
    if hold_tail:
        for back in range(1, min(4, end - begin) + 1):
            byte = data[end - back]
            if byte & 0xC0 != 0x80:  # the last lead (or ASCII) byte
                need = (
                    2
                    if byte & 0xE0 == 0xC0
                    else 3
                    if byte & 0xF0 == 0xE0
                    else 4
                    if byte & 0xF8 == 0xF0
                    else 1
                )
                if back < need:
                    end -= back
                break
    return begin, end
