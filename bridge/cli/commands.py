"""The command line's verbs: each parses what argparse left, calls ``JobService``, renders.

A handler is ``(args, service, out) -> exit code``; errors propagate to the one handler in
``bridge.cli.main``. ``run`` is the exception: it is the supervisor loop itself, not a call
into the service.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

from bridge.cli import workspaces
from bridge.cli.render import health_text, job_table, show_text
from bridge.service import JobService, LogNotFoundError, UsageError
from bridge.views import detail_json, health_json, job_json
from supervisor.errors import InvalidJobError
from supervisor.lifecycle import LIVE, TERMINAL, CancelMode, JobSpec, Status
from supervisor.settings import Settings

__all__ = ["COMMANDS", "Handler", "run"]

Handler = Callable[[argparse.Namespace, JobService, TextIO], int]

_SPEC_OPTIONS: Final = (
    "kind",
    "priority",
    "timeout_s",
    "idle_timeout_s",
    "stuck_after_s",
    "concurrency_key",
    "dedup_key",
    "max_attempts",
    "backoff_s",
    "queue_timeout_s",
    "repo",
    "owner",
)
_FOLLOW_S: Final = 0.25  # following a file: there is no event to wait on portably


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``run``: supervise in this process until stopped (or idle with ``--until-idle``)."""
    from bridge.compose import build_supervisor

    supervisor = build_supervisor(settings, subreaper=True)
    try:
        supervisor.run(until_idle=args.until_idle)
    finally:
        supervisor.store.close()
    return 0


def _submit(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    if args.batch is not None:
        if args.argv is not None or args.kind is not None:
            raise UsageError("--batch takes its jobs from the file; give no --kind or -- ARGV")
        specs = _read_batch(args.batch)
    else:
        fields: dict[str, Any] = {k: getattr(args, k) for k in _SPEC_OPTIONS if getattr(args, k) is not None}
        if args.argv is not None:
            fields["command"] = args.argv
        if args.payload is not None:
            try:
                fields["payload"] = json.loads(args.payload)
            except ValueError as exc:
                raise InvalidJobError(f"--payload is not valid JSON: {exc}") from None
        if "kind" not in fields and "command" not in fields:
            raise UsageError("submit needs --kind K, -- ARGV..., or --batch FILE")
        specs = [JobSpec.from_dict(fields)]
    ids = service.submit(specs)
    out.write("".join(f"{i}\n" for i in ids))
    return 0


def _read_batch(source: str) -> list[JobSpec]:
    stream = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115 - closed below
    specs = []
    try:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                specs.append(JobSpec.from_dict(json.loads(line)))
            except ValueError as exc:  # JSON errors and InvalidJobError alike
                raise InvalidJobError(f"batch line {number}: {exc}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()
    if not specs:
        raise InvalidJobError("the batch holds no jobs")
    return specs


def _list(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    jobs = service.list({Status(s) for s in args.status} if args.status else None, limit=args.limit)
    if args.json:
        _dump([job_json(j) for j in jobs], out)
    else:
        out.write(job_table(jobs))
    return 0


def _show(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    detail = service.get(args.id)
    if args.json:
        _dump(detail_json(detail), out)
    else:
        out.write(show_text(detail))
    return 0


def _logs(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    attempt: int | None = args.attempt
    offset = 0
    while True:
        try:
            chunk = service.logs(args.id, attempt=attempt, offset=offset, whole_characters=False)
        except LogNotFoundError as exc:
            if not args.follow or exc.path is None:
                raise
            attempt, data, job = exc.attempt, b"", exc.job  # not written yet: wait for it
        else:
            attempt, data, job = chunk.attempt, chunk.data, chunk.job  # keep following this attempt
        offset += len(data)
        out.buffer.write(data) if hasattr(out, "buffer") else out.write(data.decode(errors="replace"))
        out.flush()
        if not args.follow or (job.status not in LIVE and not data):
            return 0
        time.sleep(_FOLLOW_S)


def _cancel(args: argparse.Namespace, service: JobService, out: TextIO, mode: CancelMode) -> int:
    [result] = service.cancel([args.id], mode)
    job = result.unwrap()
    what = "cancelled" if job.status in TERMINAL else f"{mode.value} requested (its supervisor stops it)"
    out.write(f"job {job.id}: {what}\n")
    return 0


def _retry(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    [result] = service.retry([args.id])
    job = result.unwrap()
    out.write(f"job {job.id}: {job.status.value}\n")
    return 0


def _purge(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    result = service.purge(
        ids=args.ids or None,
        statuses={Status(s) for s in args.status} if args.status else None,
        older_than_s=args.older_than,
    )
    out.write(f"purged {len(result.deleted)} jobs\n")
    if result.cancel_requested:
        ids = ", ".join(map(str, result.cancel_requested))
        out.write(f"still running, cancel requested: {ids}\n")
    return 0


def _health(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    if args.watch and args.json:
        raise UsageError("--watch shows a live view; it cannot be combined with --json")
    if args.json:
        _dump(health_json(service.health()), out)
        return 0
    if not args.watch:
        out.write(health_text(service.health()))
        return 0
    while True:  # a live view, refreshed in place until Ctrl-C
        text = health_text(service.health())
        out.write("\x1b[H\x1b[2J" + time.strftime("agent-supervisor health  %H:%M:%S\n\n") + text)
        out.flush()
        time.sleep(args.interval)


def _reconcile(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    result = service.reconcile(subreaper=True)  # this process is nothing but the command
    for d in result.decisions:
        out.write(f"job {d.job_id} attempt {d.attempt}: {d.action.value} — {d.why}\n")
    out.write(f"reconciled; outbox depth {result.outbox_depth}\n")
    return 0


def _dump(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


COMMANDS: Final[dict[str, Handler]] = {
    "submit": _submit,
    "list": _list,
    "show": _show,
    "logs": _logs,
    "cancel": lambda args, service, out: _cancel(args, service, out, CancelMode.CANCEL),
    "kill": lambda args, service, out: _cancel(args, service, out, CancelMode.KILL),
    "retry": _retry,
    "purge": _purge,
    "health": _health,
    "reconcile": _reconcile,
    "workspaces": workspaces.run,
}
"""The verbs that work on the job store through the service, by command name."""
