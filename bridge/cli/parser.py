"""The command line's grammar: argparse, and the argument types it needs (durations)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn, TypeVar

from bridge.cli.workspaces import add_parser as add_workspaces_parser
from supervisor.lifecycle import Status

__all__ = ["build_parser", "duration"]

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STATUSES: Final = [s.value for s in Status]

N = TypeVar("N", int, float)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 30s, 15m, 2h, 7d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


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


def build_parser() -> argparse.ArgumentParser:
    """The ``agent-supervisor`` parser: global options and one subcommand per verb."""
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
    lst.add_argument("--status", action="append", choices=_STATUSES, help="only this status (repeatable)")
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
    purge.add_argument("--status", action="append", choices=_STATUSES)
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
    add_workspaces_parser(sub)
    return p
