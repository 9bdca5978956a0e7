"""The ``agent-supervisor`` command line: parse, call the library, render.

Exit codes: 0 success, 1 an error (one line on stderr, with its cause), 2 bad usage,
130 interrupted. ``--json`` output is stable (see bridge/views.py and the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from bridge.views import event_json, health_json, health_report, iso, job_json, log_path
from supervisor.errors import InvalidJobError, SupervisorError
from supervisor.lifecycle import LIVE, TERMINAL, CancelMode, JobSpec, Status

__all__ = ["main"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Usage(Exception):
    """A usage mistake found after argparse (exit code 2)."""


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 30s, 15m, 2h, 7d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="agent-supervisor",
        description="Run AI agents as supervised processes: deadlines, heartbeats, no duplicates.",
    )
    p.add_argument("--data-dir", type=Path, help="state, logs and the default SQLite store")
    p.add_argument("--store", help="store URL, e.g. sqlite:///path/jobs.sqlite3")
    p.add_argument("--config", type=Path, help="TOML config file (default: the user config dir)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="supervise: claim jobs and run their agents")
    run.add_argument("--until-idle", action="store_true", help="exit when nothing is left to run")
    run.add_argument("--concurrency", type=_positive(int), help="agents at once (default 2)")

    s = sub.add_parser("submit", help="queue a job; prints its id")
    s.add_argument("--kind", help="a kind registered in the config file")
    s.add_argument("--payload", help="JSON given to the agent as a file")
    s.add_argument("--priority", type=int, help="higher runs first (default 0)")
    s.add_argument("--timeout", type=_positive(float), dest="timeout_s", help="seconds from start")
    s.add_argument(
        "--idle-timeout", type=_positive(float), dest="idle_timeout_s", help="seconds without output"
    )
    s.add_argument(
        "--stuck-after",
        type=_positive(float),
        dest="stuck_after_s",
        help="seconds after which health reports the job as stuck",
    )
    s.add_argument("--key", dest="concurrency_key", help="at most one running job per key")
    s.add_argument("--repo", help="a repository (URL or owner/repo): one running job per repository")
    s.add_argument("--owner", help="the repository owner, with a bare --repo name")
    s.add_argument(
        "--queue-timeout",
        type=_positive(float),
        dest="queue_timeout_s",
        help="fail the job if it waits longer than this to start",
    )
    s.add_argument("--dedup-key", help="while a job with this key waits, return its id instead")
    s.add_argument("--max-attempts", type=_positive(int), help="attempts before failing (default 3)")
    s.add_argument("--backoff", type=float, dest="backoff_s", help="retry backoff base seconds")
    s.add_argument("--batch", metavar="FILE", help="JSON lines of job specs ('-' for stdin)")

    lst = sub.add_parser("list", help="list jobs, newest first")
    lst.add_argument(
        "--status", action="append", choices=[s.value for s in Status], help="only this status (repeatable)"
    )
    lst.add_argument("--limit", type=_positive(int), default=100)
    lst.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="one job, with its event log")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")

    logs = sub.add_parser("logs", help="print a job's agent output")
    logs.add_argument("id", type=int)
    logs.add_argument("--attempt", type=_positive(int), help="default: the latest")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")

    for name, text in (
        ("cancel", "stop a job (running agents get SIGTERM, then SIGKILL)"),
        ("kill", "stop a job now (SIGKILL, no grace period)"),
        ("retry", "run a failed or cancelled job again"),
    ):
        sub.add_parser(name, help=text).add_argument("id", type=int)

    purge = sub.add_parser("purge", help="delete finished jobs and their events")
    purge.add_argument("ids", type=int, nargs="*")
    purge.add_argument("--status", action="append", choices=[s.value for s in Status])
    purge.add_argument("--older-than", type=duration, help="e.g. 7d")

    health = sub.add_parser("health", help="queue health and alerts")
    health.add_argument("--json", action="store_true")
    health.add_argument("--watch", action="store_true", help="a live view, refreshed in place")
    health.add_argument("--interval", type=_positive(float), default=1.0, help="seconds between refreshes")

    sub.add_parser("reconcile", help="settle agents left behind by a crashed supervisor")

    db = sub.add_parser("db", help="the SQL schema of the Postgres/Supabase stores")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_sub.add_parser("schema", help="print the SQL (schema, then functions)")
    apply = db_sub.add_parser("apply", help="apply the SQL to a Postgres database")
    apply.add_argument("--dsn", required=True, help="postgresql://user@host/db (password from PGPASSWORD)")

    rpc = sub.add_parser("bridge", help="stdio JSON-RPC 2.0 server for plugin hosts")
    rpc.add_argument("--no-run", action="store_true", help="answer requests; run no agents")
    rpc.add_argument("--schema", action="store_true", help="print the JSON Schema and exit")
    demo = sub.add_parser("demo", help="run sample agents on a fresh data dir (< 30 s)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data dir")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command_argv: list[str] | None = None
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, command_argv = args_list[:cut], args_list[cut + 1 :]
    parser = _parser()
    args = parser.parse_args(args_list)
    if command_argv is not None and args.command != "submit":
        parser.error("'-- ARGV' is only for submit")
    args.argv = command_argv
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.command != "run" else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args)
    except _Usage as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        print("agent-supervisor: interrupted", file=sys.stderr)
        return 130
    except (SupervisorError, OSError) as exc:
        print(f"agent-supervisor: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    parts = [" ".join(str(exc).split()) or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None and len(parts) < 4:
        text = " ".join(str(cause).split()) or type(cause).__name__
        if text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    return " (caused by: ".join(parts) + ")" * (len(parts) - 1)


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from supervisor.settings import load_settings

    if args.config is not None:
        os.environ["AGENT_SUPERVISOR_CONFIG"] = str(args.config)
    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("store", args.store)) if v is not None}
    return load_settings(**overrides, **{k: v for k, v in extra.items() if v is not None})


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from bridge.demo import run_demo

        return run_demo(keep=args.keep, data_dir=args.data_dir)
    if args.command == "db":
        from bridge.sqlcli import run_db

        return run_db(args, sys.stdout)
    if args.command == "bridge":
        from bridge.jsonrpc.stdio import run_bridge

        return run_bridge(args, lambda **extra: _settings(args, **extra))
    settings = _settings(args, concurrency=getattr(args, "concurrency", None))
    if args.command in ("run", "reconcile"):
        from bridge.compose import build_supervisor

        supervisor = build_supervisor(settings, subreaper=True)
        try:
            if args.command == "reconcile":
                for d in supervisor.reconcile():
                    print(f"job {d.job_id} attempt {d.attempt}: {d.action.value} — {d.why}")
                print(f"reconciled; outbox depth {supervisor.outbox_depth}")
            else:
                supervisor.run(until_idle=args.until_idle)
        finally:
            supervisor.store.close()
        return 0
    from bridge.compose import build_store

    store = build_store(settings)
    try:
        handler: Callable[..., int] = _COMMANDS[args.command]
        return handler(args, store, settings, sys.stdout)
    finally:
        store.close()


def _submit(args: argparse.Namespace, store: Any, settings: Any, out: TextIO) -> int:
    from supervisor.runner import resolve_spec

    if args.batch is not None:
        if args.argv is not None or args.kind is not None:
            raise _Usage("--batch takes its jobs from the file; give no --kind or -- ARGV")
        specs = _read_batch(args.batch)
    else:
        fields: dict[str, Any] = {
            k: getattr(args, k)
            for k in (
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
            if getattr(args, k) is not None
        }
        if args.argv is not None:
            fields["command"] = args.argv
        if args.payload is not None:
            try:
                fields["payload"] = json.loads(args.payload)
            except ValueError as exc:
                raise InvalidJobError(f"--payload is not valid JSON: {exc}") from None
        if "kind" not in fields and "command" not in fields:
            raise _Usage("submit needs --kind K, -- ARGV..., or --batch FILE")
        specs = [JobSpec.from_dict(fields)]
    ids = store.enqueue([resolve_spec(spec, settings) for spec in specs])
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


def _list(args: argparse.Namespace, store: Any, settings: Any, out: TextIO) -> int:
    statuses = {Status(s) for s in args.status} if args.status else None
    jobs = store.list(statuses=statuses, limit=args.limit)
    if args.json:
        json.dump([job_json(j) for j in jobs], out, indent=2)
        out.write("\n")
        return 0
    out.write(f"{'ID':>6}  {'STATUS':<13} {'ATTEMPT':>7}  {'PRI':>4}  {'KIND / COMMAND':<34} ERROR\n")
    for j in jobs:
        what = j.kind or " ".join(j.command or ())
        out.write(
            f"{j.id:>6}  {j.status.value:<13} {j.attempts_used:>3}/{j.max_attempts:<3}  "
            f"{j.priority:>4}  {what[:34]:<34} {(j.error or '')[:60]}\n"
        )
    return 0


def _show(args: argparse.Namespace, store: Any, settings: Any, out: TextIO) -> int:
    job = store.get(args.id)
    events = store.events(args.id)
    if args.json:
        data = job_json(job)
        data["events"] = [event_json(e) for e in events]
        json.dump(data, out, indent=2)
        out.write("\n")
        return 0
    data = job_json(job)
    for key in (
        "id",
        "status",
        "kind",
        "command",
        "attempt",
        "max_attempts",
        "priority",
        "concurrency_key",
        "timeout_s",
        "pid",
        "exit_code",
        "signal",
        "error_kind",
        "error",
        "result",
        "progress",
        "created_at",
        "started_at",
        "finished_at",
        "run_after",
    ):
        value = data[key]
        if value is not None:
            text = json.dumps(value) if isinstance(value, dict | list) else value
            out.write(f"{key + ':':<17} {text}\n")
    out.write("events:\n")
    for e in events:
        src = e.from_status.value if e.from_status else "-"
        out.write(f"  {iso(e.at)}  {src:>13} → {e.to_status.value:<13} {e.decided_by.value:<12} {e.reason}\n")
    if job.output_tail:
        out.write("output tail:\n")
        out.write("".join(f"  | {line}\n" for line in job.output_tail.splitlines()[-20:]))
    return 0


def _logs(args: argparse.Namespace, store: Any, settings: Any, out: TextIO) -> int:
    path = log_path(store, settings, args.id, args.attempt)
    offset = 0
    while True:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            if not args.follow:
                raise InvalidJobError(f"no log for job {args.id} at {path}") from None
            chunk = b""
        offset += len(chunk)
        out.buffer.write(chunk) if hasattr(out, "buffer") else out.write(chunk.decode(errors="replace"))
        out.flush()
        if not args.follow:
            return 0
        if store.get(args.id).status not in LIVE and not chunk:
            return 0
        time.sleep(0.25)  # following a file: there is no event to wait on portably


def _cancel(
    args: argparse.Namespace, store: Any, settings: Any, out: TextIO, *, mode: CancelMode = CancelMode.CANCEL
) -> int:
    job = store.request_cancel(args.id, mode)
    what = "cancelled" if job.status in TERMINAL else f"{mode.value} requested (its supervisor stops it)"
    out.write(f"job {job.id}: {what}\n")
    return 0


def _kill(args: argparse.Namespace, store: Any, settings: Any, out: TextIO) -> int:
    return _cancel(args, store, settings, out, mode=CancelMode.KILL)


def _retry(args: argparse.Namespace, store: Any, settings: Any, out: TextIO) -> int:
    job = store.retry(args.id)
    out.write(f"job {job.id}: {job.status.value}\n")
    return 0


def _purge(args: argparse.Namespace, store: Any, settings: Any, out: TextIO) -> int:
    if not args.ids and not args.status and args.older_than is None:
        raise _Usage("purge needs job ids, --status or --older-than")
    if args.ids and args.status:
        raise _Usage("give job ids or --status, not both")
    result = store.purge(
        ids=args.ids or None,
        statuses={Status(s) for s in args.status} if args.status else (None if args.ids else TERMINAL),
        older_than_s=args.older_than,
    )
    out.write(f"purged {len(result.deleted)} jobs\n")
    if result.cancel_requested:
        ids = ", ".join(map(str, result.cancel_requested))
        out.write(f"still running, cancel requested: {ids}\n")
    return 0


def _health(args: argparse.Namespace, store: Any, settings: Any, out: TextIO) -> int:
    if args.watch and args.json:
        raise _Usage("--watch shows a live view; it cannot be combined with --json")
    if args.json:
        json.dump(health_json(health_report(store, settings)), out, indent=2)
        out.write("\n")
        return 0
    if not args.watch:
        out.write(_health_text(health_report(store, settings)))
        return 0
    while True:  # a live view, refreshed in place until Ctrl-C
        text = _health_text(health_report(store, settings))
        out.write("\x1b[H\x1b[2J" + time.strftime("agent-supervisor health  %H:%M:%S\n\n") + text)
        out.flush()
        time.sleep(args.interval)


def _health_text(report: Any) -> str:
    mib = 1 << 20
    lines = [
        f"running {report.running} (here {report.running_here}/{report.max_concurrent}, "
        f"{report.utilization:.0%})  pending {report.pending}  waiting_retry {report.waiting_retry}  "
        f"failed {report.failed}  completed {report.completed}",
    ]
    if report.supervisor_running:
        adm = report.admission
        lines.append(f"admission {adm.get('state')}" + (f": {adm['reason']}" if adm.get("reason") else ""))
        mem = report.memory
        if mem.get("total_bytes"):
            lines.append(
                f"memory {mem['available_bytes'] // mib} MiB available of {mem['total_bytes'] // mib} MiB, "
                f"{mem['reserve_bytes'] // mib} MiB reserved; limits by {report.limits_enforcement}"
            )
        if report.recommended_concurrency:
            lines.append(f"recommended concurrency {report.recommended_concurrency}")
        for agent in report.agents:
            lines.append(
                f"  job {agent['job_id']:>5} {agent.get('kind') or 'command':<12} "
                f"rss {agent.get('rss_bytes', 0) // mib:>6} MiB  cpu {agent.get('cpu_percent', 0):>5.1f}%"
                f"  processes {agent.get('processes', 0)}"
            )
    else:
        lines.append("no supervisor is running on this data dir")
    if report.outbox_depth:
        lines.append(f"outbox: {report.outbox_depth} outcomes not yet in the store")
    lines += [f"ALERT {a.kind}: {a.message}" for a in report.alerts] or ["no alerts"]
    return "".join(line + "\n" for line in lines)


_COMMANDS: dict[str, Callable[..., int]] = {
    "submit": _submit,
    "list": _list,
    "show": _show,
    "logs": _logs,
    "cancel": _cancel,
    "kill": _kill,
    "retry": _retry,
    "purge": _purge,
    "health": _health,
}
