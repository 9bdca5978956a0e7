"""The ``agent-supervisor`` command line: parse, call the service, render.

Exit codes: 0 success, 1 an error (one line on stderr, with its cause), 2 bad usage,
130 interrupted. ``--json`` output is stable (see bridge/views.py and the README).

The package: ``parser`` (the grammar), ``commands`` (one handler per verb, on
``bridge.service.JobService``), ``render`` (text output), ``demo``; here ``main`` and the one
top-level error handler.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from bridge.cli.parser import build_parser
from bridge.service import UsageError
from supervisor.errors import SupervisorError

if TYPE_CHECKING:
    from supervisor.settings import Settings

__all__ = ["main"]

CLI_NAMES: Final = {"ids": "job ids", "statuses": "--status", "older_than_s": "--older-than"}
"""The service's parameters as the command line spells them, for its usage errors."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (``agent-supervisor`` and ``python -m bridge``)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command_argv: list[str] | None = None
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, command_argv = args_list[:cut], args_list[cut + 1 :]
    parser = build_parser()
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
    except UsageError as exc:
        parser.error(exc.render(CLI_NAMES))
    except KeyboardInterrupt:
        print("agent-supervisor: interrupted", file=sys.stderr)
        return 130
    except (SupervisorError, OSError) as exc:
        print(f"agent-supervisor: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    parts = [" ".join(str(exc).split()) or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None and len(parts) < 4:
        text = " ".join(str(cause).split()) or type(cause).__name__
        if text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    return " (caused by: ".join(parts) + ")" * (len(parts) - 1)


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    from supervisor.settings import load_settings

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("store", args.store)) if v is not None}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return load_settings(args.config, **overrides)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from bridge.cli.demo import run_demo

        return run_demo(keep=args.keep, data_dir=args.data_dir)
    if args.command == "db":
        from bridge.sqlcli import run_db

        return run_db(args, sys.stdout)
    if args.command == "bridge":
        from bridge.jsonrpc.stdio import run_bridge

        return run_bridge(args, lambda **extra: _settings(args, **extra))
    from bridge.cli import commands

    settings = _settings(args, concurrency=getattr(args, "concurrency", None))
    if args.command == "run":
        return commands.run(args, settings)
    from bridge.compose import build_store
    from bridge.service import JobService

    store = build_store(settings)
    try:
        return commands.COMMANDS[args.command](args, JobService(settings, store), sys.stdout)
    finally:
        store.close()
