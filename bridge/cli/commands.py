"""The command line's verbs on the job store: each parses what argparse left, calls
``JobService``, renders (text, or with ``--json`` the stable shapes of bridge/views.py).

A handler is ``(args, service, out) -> exit code``; errors propagate to the one handler in
``bridge.cli.main``. ``run`` (talk.py), ``doctor``, ``service`` and ``completion`` live in
modules of their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, TextIO

from bridge.cli.render import count, health_text, job_table, show_text
from bridge.service import (
    CANCELLABLE,
    RETRYABLE,
    ChangeResult,
    JobService,
    LogChunk,
    LogNotFoundError,
    Stopped,
    UsageError,
)
from bridge.views import (
    change_json,
    detail_json,
    job_json,
    logs_json,
    purge_json,
    queued_json,
    reconcile_json,
)
from supervisor.errors import InvalidJobError
from supervisor.job import LIVE, TERMINAL, CancelMode, JobSpec, Status

__all__ = ["COMMANDS", "Handler"]

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
    "ref",
    "run_after",
)
_FOLLOW_LOCAL_S: Final = 0.25  # following a file: there is no event to wait on portably
_FOLLOW_SHARED_S: Final = 1.0  # each look asks a remote store for the job: less often


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
    if args.json:
        answers = [queued_json(q) for q in service.queued(ids)]
        _dump(answers if args.batch is not None else answers[0], out)
    else:
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
    jobs = service.list(
        {Status(s) for s in args.status} if args.status else None,
        kinds=args.kind,
        repo=args.repo,
        owner=args.owner,
        created_after=args.since,
        created_before=args.until,
        limit=args.limit,
    )
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
    """Print an attempt's log. With ``--follow``: wait for a job that has not started, print
    as the log grows, go on through every later attempt of a retried job (only the one given
    with ``--attempt``), and stop once the job has ended and everything is printed."""
    pause = threading.Event().wait  # an Event nobody sets: a sleep that names what it is
    interval = _FOLLOW_SHARED_S if service.store.shared else _FOLLOW_LOCAL_S
    pinned: int | None = args.attempt
    attempt, offset, shown = pinned, 0, 0  # shown: the attempt whose log we have read from
    while True:
        try:
            chunk = service.logs(args.id, attempt=attempt, offset=offset, whole_characters=False)
        except LogNotFoundError as exc:
            job, wanted = exc.job, exc.attempt
            if exc.path is None and job.status in TERMINAL:
                raise LogNotFoundError(
                    f"job {job.id} was {job.status.value} before it ran; no log",
                    job=job,
                    attempt=0,
                    path=None,
                ) from None
            if not args.follow:
                raise
            if exc.path is None:
                attempt = job.attempt + 1  # it never ran: follow its first attempt from the start
            elif wanted < job.attempt or (wanted == job.attempt and job.status not in LIVE):
                # that attempt is over and left no log (it failed to spawn): the next one, if any
                if pinned is not None or (job.status in TERMINAL and wanted >= job.attempt):
                    if shown:
                        return 0
                    raise
                attempt, offset = wanted + 1, 0
                continue
            elif job.status in TERMINAL:  # waiting for an attempt that will never come
                return 0
            pause(interval)
            continue
        if chunk.attempt != shown and shown and args.follow:
            print(f"agent-supervisor: job {args.id}: attempt {chunk.attempt}", file=sys.stderr)
        attempt, shown = chunk.attempt, chunk.attempt
        _write_chunk(chunk, out, as_json=args.json, always=not args.follow)
        offset = chunk.next_offset
        if not args.follow:
            return 0
        if chunk.data:
            continue  # more may be there already: read on before pausing
        job = chunk.job  # read before the file: not live then → nothing more in this file
        if job.status in LIVE and job.attempt == chunk.attempt:
            pause(interval)
        elif pinned is not None or (job.status in TERMINAL and job.attempt == chunk.attempt):
            return 0
        else:
            attempt, offset = chunk.attempt + 1, 0  # this attempt is over: on to the next one


def _write_chunk(chunk: LogChunk, out: TextIO, *, as_json: bool, always: bool) -> None:
    if as_json:
        if chunk.data or always:
            out.write(json.dumps(logs_json(chunk)) + "\n")
    elif hasattr(out, "buffer"):
        out.buffer.write(chunk.data)
    else:
        out.write(chunk.data.decode(errors="replace"))
    out.flush()


def _selected(args: argparse.Namespace, service: JobService, allowed: frozenset[Status]) -> list[int]:
    return service.select(
        args.ids,
        statuses={Status(s) for s in args.status} if args.status else None,
        kinds=args.kind,
        repo=args.repo,
        owner=args.owner,
        allowed=allowed,
    )


def _stop(args: argparse.Namespace, service: JobService, out: TextIO, mode: CancelMode) -> int:
    ids = _selected(args, service, CANCELLABLE)
    results = service.cancel(ids, mode)
    stopped = service.wait_stopped(results, timeout_s=args.wait_s) if args.wait else None
    if args.json:
        _dump(_changes_json(results, stopped), out)
    else:
        _changes_text(results, stopped, out, verb="cancelled" if mode is CancelMode.CANCEL else "killed")
    if stopped is not None:
        return 0 if all(s.stopped for s in stopped) else 1
    return 0 if all(r.error is None for r in results) else 1


def _retry(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    results = service.retry(_selected(args, service, RETRYABLE))
    if args.json:
        _dump(_changes_json(results, None), out)
    else:
        _changes_text(results, None, out, verb="queued again")
    return 0 if all(r.error is None for r in results) else 1


def _changes_json(results: list[ChangeResult], stopped: list[Stopped] | None) -> dict[str, Any]:
    jobs = [change_json(r, stopped[i] if stopped is not None else None) for i, r in enumerate(results)]
    return {
        "jobs": jobs,
        "changed": sum(1 for r in results if r.error is None),
        "refused": sum(1 for r in results if r.error is not None),
    }


def _changes_text(
    results: list[ChangeResult], stopped: list[Stopped] | None, out: TextIO, *, verb: str
) -> None:
    if not results:
        out.write("no job matched\n")
        return
    for i, r in enumerate(results):
        if stopped is not None:
            s = stopped[i]
            (out if s.stopped else sys.stderr).write(f"job {r.job_id}: {s.how}\n")
        elif r.error is not None:
            sys.stderr.write(f"agent-supervisor: job {r.job_id}: {r.error}\n")
        elif r.job is not None and r.job.status in LIVE:
            out.write(f"job {r.job_id}: {r.reason} (its supervisor stops it)\n")
        elif r.job is not None:
            out.write(f"job {r.job_id}: {r.job.status.value}\n")
    if len(results) > 1:
        done = sum(1 for r in results if r.error is None)
        refused = len(results) - done
        tail = f"; refused: {count(refused, 'job')}" if refused else ""
        out.write(f"{verb}: {count(done, 'job')}{tail}\n")


def _purge(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    result = service.purge(
        ids=args.ids or None,
        statuses={Status(s) for s in args.status} if args.status else None,
        older_than_s=args.older_than,
        wait=not args.no_wait,
    )
    if args.json:
        _dump(purge_json(result), out)
        return 0
    out.write(f"purged {count(len(result.deleted), 'job')}\n")
    if result.cancel_requested:
        ids = ", ".join(map(str, result.cancel_requested))
        out.write(f"still running, cancel requested (purge again once stopped): {ids}\n")
    return 0


def _health(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    from bridge.views import health_json

    if args.watch and args.json:
        raise UsageError("--watch shows a live view; it cannot be combined with --json")
    if args.json:
        _dump(health_json(service.health()), out)
        return 0
    if not args.watch:
        out.write(health_text(service.health()))
        return 0
    import time

    pause = threading.Event().wait
    while True:  # a live view, refreshed in place until Ctrl-C
        text = health_text(service.health())
        out.write("\x1b[H\x1b[2J" + time.strftime("agent-supervisor health  %H:%M:%S\n\n") + text)
        out.flush()
        pause(args.interval)


def _reconcile(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    result = service.reconcile(subreaper=True)  # this process is nothing but the command
    if args.json:
        _dump(reconcile_json(result), out)
        return 0
    for d in result.decisions:
        out.write(f"job {d.job_id} attempt {d.attempt}: {d.action.value} — {d.why}\n")
    out.write(f"reconciled; outbox depth {result.outbox_depth}\n")
    return 0


def _workspaces(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    from bridge.cli import workspaces  # git and the workspace engine: only for this command

    return workspaces.run(args, service, out)


def _dashboard(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    from bridge.cli import dashboard  # the web extra: only for this command

    return dashboard.dashboard(args, service, out)


def _metrics(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    from bridge.cli import dashboard  # prometheus-client: only for this command

    return dashboard.metrics(args, service, out)


def _dump(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


COMMANDS: Final[dict[str, Handler]] = {
    "submit": _submit,
    "list": _list,
    "show": _show,
    "logs": _logs,
    "cancel": lambda args, service, out: _stop(args, service, out, CancelMode.CANCEL),
    "kill": lambda args, service, out: _stop(args, service, out, CancelMode.KILL),
    "retry": _retry,
    "purge": _purge,
    "health": _health,
    "reconcile": _reconcile,
    "workspaces": lambda args, service, out: _workspaces(args, service, out),
    "dashboard": _dashboard,
    "metrics": _metrics,
}
"""The verbs that work on the job store through the service, by command name."""
