"""The command line's grammar: argparse, and the argument types it needs (durations, moments).

Imported by every command, so it imports only the standard library and the job model's
statuses: what a command needs beyond that, its handler imports.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

from supervisor.job import Status

__all__ = ["build_parser", "duration", "moment_ago", "moment_ahead"]

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STATUSES: Final = [s.value for s in Status]
_MOMENT_HELP: Final = (
    "a duration (30s, 15m, 2h, 7d) or an ISO time (2026-12-03T09:00, local unless it has an offset)"
)

N = TypeVar("N", int, float)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("agent-supervisor")
        except PackageNotFoundError:  # run from a source tree that was never installed
            text = "unknown (not installed)"
        sys.stdout.write(f"agent-supervisor {text}\n")  # stdout, as --help: it is the answer
        parser.exit(0)


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 30s, 15m, 2h, 7d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _moment(text: str, sign: int) -> float:
    """A duration from now (``sign`` -1: ago, +1: ahead) or an ISO 8601 time → epoch seconds."""
    if _DURATION.match(text):
        return time.time() + sign * duration(text)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: give {_MOMENT_HELP}") from None
    return when.timestamp()  # a naive time is the machine's local time, as a person means it


def moment_ago(text: str) -> float:
    """``--since 2h`` (two hours ago) or ``--since 2026-12-01T09:00`` → epoch seconds."""
    return _moment(text, -1)


def moment_ahead(text: str) -> float:
    """``--run-after 10m`` (ten minutes from now) or an ISO time → epoch seconds."""
    return _moment(text, +1)


def _positive(kind: Callable[[str], N]) -> Callable[[str], N]:
    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _selection(p: argparse.ArgumentParser, statuses: str) -> None:
    """The bulk selection of cancel, kill and retry: ids, plus every job matching filters."""
    p.add_argument("ids", type=int, nargs="*", metavar="ID", help="job ids")
    p.add_argument("--status", action="append", choices=_STATUSES, help=f"and every job in it ({statuses})")
    p.add_argument("--kind", action="append", help="and every job of this kind (with the other filters)")
    p.add_argument("--repo", help="and every job of this repository (URL or owner/repo)")
    p.add_argument("--owner", help="the repository owner, with a bare --repo name")
    p.add_argument("--json", action="store_true", help="print the outcome per job as JSON")


def build_parser() -> argparse.ArgumentParser:
    """The ``agent-supervisor`` parser: global options and one subcommand per verb."""
    p = _Parser(
        prog="agent-supervisor",
        description="Run AI agents as supervised processes: deadlines, heartbeats, no duplicates.",
    )
    p.add_argument("--version", action=_Version, help="print the version and exit")
    p.add_argument("--data-dir", type=Path, help="state, logs and the default SQLite store")
    p.add_argument("--store", help="store URL, e.g. sqlite:///path/jobs.sqlite3")
    p.add_argument("--config", type=Path, help="TOML config file (default: the user config dir)")
    p.add_argument(
        "--new-store",
        action="store_true",
        help="accept a store other than the one this data dir last worked with (start fresh)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    p.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="stderr as text or JSON lines"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="supervise: claim jobs and run their agents")
    run.add_argument("--until-idle", action="store_true", help="exit when nothing is left to run")
    run.add_argument("--concurrency", type=_positive(int), help="agents at once (default 2)")
    # also after `run` (`run -q`), where people put them; SUPPRESS keeps the global value otherwise
    run.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no transition lines"
    )
    run.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=argparse.SUPPRESS,
        help="stderr as text or JSON lines",
    )

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
        "--ref", help="the branch, tag or commit of --repo to check out (default: its default branch)"
    )
    s.add_argument(
        "--queue-timeout",
        type=_positive(float),
        dest="queue_timeout_s",
        help="fail the job if it waits longer than this to start",
    )
    s.add_argument("--dedup-key", help="while a job with this key waits, return its id instead")
    s.add_argument("--max-attempts", type=_positive(int), help="attempts before failing (default 3)")
    s.add_argument("--backoff", type=float, dest="backoff_s", help="retry backoff base seconds")
    s.add_argument("--run-after", type=moment_ahead, help=f"not before then: {_MOMENT_HELP}")
    s.add_argument("--batch", metavar="FILE", help="JSON lines of job specs ('-' for stdin)")
    s.add_argument("--json", action="store_true", help="print id, status and queue position as JSON")

    lst = sub.add_parser("list", help="list jobs, newest first")
    lst.add_argument("--status", action="append", choices=_STATUSES, help="only this status (repeatable)")
    lst.add_argument("--kind", action="append", help="only this kind (repeatable)")
    lst.add_argument("--repo", help="only jobs of this repository (URL or owner/repo)")
    lst.add_argument("--owner", help="the repository owner, with a bare --repo name")
    lst.add_argument("--since", type=moment_ago, help=f"created after: {_MOMENT_HELP}")
    lst.add_argument("--until", type=moment_ago, help=f"created before: {_MOMENT_HELP}")
    lst.add_argument("--limit", type=_positive(int), default=100)
    lst.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="one job: fields, payload, events with their facts")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")

    logs = sub.add_parser("logs", help="print a job's agent output")
    logs.add_argument("id", type=int)
    logs.add_argument("--attempt", type=_positive(int), help="default: the latest")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="wait for the job to start, print until it ends"
    )
    logs.add_argument("--json", action="store_true", help="chunks as JSON lines (data, offsets, attempt)")

    for name, text in (
        ("cancel", "stop jobs (running agents get SIGTERM, then SIGKILL after the grace period)"),
        ("kill", "stop jobs now (SIGKILL, no grace period)"),
    ):
        stop = sub.add_parser(name, help=text)
        _selection(stop, "pending, waiting_retry, preparing, running")
        stop.add_argument("--wait", action="store_true", help="return once each agent is gone; say how")
        stop.add_argument("--timeout", type=_positive(float), dest="wait_s", help="give up waiting after S")
    retry = sub.add_parser("retry", help="run failed or cancelled jobs again")
    _selection(retry, "failed, cancelled")

    purge = sub.add_parser("purge", help="delete finished jobs and their events (stops running ones)")
    purge.add_argument("ids", type=int, nargs="*", metavar="ID")
    purge.add_argument("--status", action="append", choices=_STATUSES)
    purge.add_argument("--older-than", type=duration, help="e.g. 7d")
    purge.add_argument(
        "--no-wait", action="store_true", help="do not wait for running jobs to stop; purge them later"
    )
    purge.add_argument("--json", action="store_true")

    health = sub.add_parser("health", help="queue health, agents and their progress, alerts")
    health.add_argument("--json", action="store_true")
    health.add_argument("--watch", action="store_true", help="a live view, refreshed in place")
    health.add_argument("--interval", type=_positive(float), default=1.0, help="seconds between refreshes")

    rec = sub.add_parser("reconcile", help="settle agents left behind by a crashed supervisor")
    rec.add_argument("--json", action="store_true")

    doctor = sub.add_parser("doctor", help="check config, data dir, store, cgroups, git, node, clock")
    doctor.add_argument("--json", action="store_true")

    svc = sub.add_parser("service", help="run the supervisor at login (systemd user unit / launchd)")
    svc.add_argument("--platform", choices=["linux", "darwin"], help=argparse.SUPPRESS)  # tests: the other OS
    svc_sub = svc.add_subparsers(dest="service_command", required=True, metavar="SERVICE_COMMAND")
    install = svc_sub.add_parser("install", help="write the unit (or plist) and enable it")
    install.add_argument("--dry-run", action="store_true", help="print what would be written; change nothing")
    install.add_argument("--no-enable", action="store_true", help="write the file; do not enable or start it")
    svc_sub.add_parser("uninstall", help="stop, disable and remove it")
    svc_status = svc_sub.add_parser("status", help="installed? enabled? running?")
    svc_status.add_argument("--json", action="store_true")

    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument("shell", choices=["bash", "zsh", "fish"])

    db = sub.add_parser("db", help="the SQL schema of the Postgres/Supabase stores")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_sub.add_parser("schema", help="print the SQL (schema, then functions)")
    apply = db_sub.add_parser("apply", help="apply the SQL to a Postgres database")
    apply.add_argument("--dsn", required=True, help="postgresql://user@host/db (password from PGPASSWORD)")
    migration = db_sub.add_parser("migration", help="write the SQL as a Supabase migration file")
    migration.add_argument("dir", type=Path, help="the Supabase project dir (gets supabase/migrations/)")
    for cmd in (db_sub.choices["schema"], apply, migration):
        cmd.add_argument("--per-user", action="store_true", help="add per_user.sql (bridge/sql/README.md)")

    rpc = sub.add_parser("bridge", help="stdio JSON-RPC 2.0 server for plugin hosts")
    rpc.add_argument("--no-run", action="store_true", help="answer requests; run no agents")
    rpc.add_argument("--schema", action="store_true", help="print the JSON Schema and exit")
    demo = sub.add_parser("demo", help="run sample agents on a fresh data dir (< 30 s)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data dir")
    from bridge.cli.dashboard import add_parsers as add_dashboard_parsers  # here: see the docstring
    from bridge.cli.workspaces import add_parser as add_workspaces_parser  # here: see the docstring

    add_dashboard_parsers(sub)
    add_workspaces_parser(sub)
    return p
