"""The ``agent-supervisor`` command line: parse, call the service, render.

Exit codes: 0 success, 1 an error (one line on stderr, with its cause), 2 bad usage,
130 interrupted. A closed stdout (``agent-supervisor list | head -1``) ends the command
quietly with 0, as ``git log | head`` does. ``--json`` output is stable (see
bridge/views.py and the README).

The package: ``parser`` (the grammar), ``commands`` (one handler per verb, on
``bridge.service.JobService``), ``render`` (text output), ``talk`` (what ``run`` says),
``doctor``, ``login`` (``service install``), ``completion``, ``demo``; here ``main``, the
logging set-up of one-off commands and the one top-level error handler.

Start-up cost matters (a plugin or a shell prompt may call ``list`` every second): this
module and the parser import only the standard library and the job model; each command
imports what it uses, and ``list``/``submit``/``show`` never import the supervisor loop
(tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bridge.cli.parser import build_parser
from bridge.service import UsageError
from supervisor.errors import ConfigError, SupervisorError

if TYPE_CHECKING:
    from supervisor.settings import Settings

__all__ = ["main"]

CLI_NAMES: Final = {
    "ids": "job ids",
    "statuses": "--status",
    "older_than_s": "--older-than",
    "kinds": "--kind",
    "repo": "--repo",
}
"""The service's parameters as the command line spells them, for its usage errors."""

QUICK_COMMANDS: Final = frozenset({"submit", "list", "show", "logs", "cancel", "kill", "retry", "purge"})
"""The one-off verbs on jobs: they read settings from the cache when they can (a shell prompt
or a plugin may call them every second). The others load and validate the config in full."""

STORE_LOGGER: Final = "agent_supervisor.store"
"""The remote stores' logger: one WARNING per retried call. A one-off command shows only the
error its retries end in (unless -v); ``run`` folds them into one line per outage (talk.py)."""


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
    if args.command != "run":  # run sets up its own: transitions, summary line, outages
        _one_off_logging(args)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        return _stdout_closed()
    except UsageError as exc:
        parser.error(exc.render(CLI_NAMES))
    except KeyboardInterrupt:
        print("agent-supervisor: interrupted", file=sys.stderr)
        return 130
    except (SupervisorError, OSError) as exc:
        print(f"agent-supervisor: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _stdout_closed() -> int:
    """The reader of our stdout went away (``| head -1``): stop quietly, like ``git log``.
    Python would report the flush of the remaining buffer at exit; point fd 1 at /dev/null
    so that flush succeeds (the recipe of the ``signal`` module's documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


def _one_off_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else logging.WARNING - 10 * min(args.verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        from bridge.cli.talk import JsonLogFormatter

        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("agent-supervisor: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    if not args.verbose:
        logging.getLogger(STORE_LOGGER).setLevel(logging.ERROR)


def _one_line(exc: BaseException) -> str:
    parts = [" ".join(str(exc).split()) or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None and len(parts) < 4:
        text = " ".join(str(cause).split()) or type(cause).__name__
        if text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    return " (caused by: ".join(parts) + ")" * (len(parts) - 1)


def settings_of(args: argparse.Namespace, *, cached: bool = False, **extra: Any) -> Settings:
    """The settings the global options name: ``--config`` must exist (a typo must not fall
    back silently to no config); a relative ``--data-dir`` is taken from the current directory.

    ``cached`` (the ``QUICK_COMMANDS``): settings validated before under the same inputs are
    read back without loading pydantic (supervisor/settings_cache.py), and settings validated
    now are kept for the next command."""
    config: Path | None = args.config
    if config is not None:
        config = config.expanduser()
        if not config.is_file():
            why = "is not a file" if config.exists() else "does not exist"
            raise ConfigError(f"config file {config} {why}")
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = Path(os.path.abspath(args.data_dir.expanduser()))
    if args.store is not None:
        overrides["store"] = args.store
    if args.new_store:
        overrides["new_store"] = True
    overrides.update({k: v for k, v in extra.items() if v is not None})
    if not cached:
        from supervisor.settings import load_settings

        return load_settings(config, **overrides)
    from supervisor.settings_cache import SettingsCache

    cache = SettingsCache.default()
    key = cache.fingerprint(config, overrides)
    settings = cache.get(key)
    if settings is None:
        from supervisor.settings import cacheable_values, load_settings

        settings = load_settings(config, **overrides)
        values = cacheable_values(settings)
        if values is not None:
            cache.put(key, values)
    return settings


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo":
        from bridge.cli.demo import run_demo

        return run_demo(keep=args.keep, data_dir=args.data_dir)
    if command == "db":
        from bridge.sqlcli import run_db

        return run_db(args, sys.stdout)
    if command == "completion":
        from bridge.cli.completion import completion_script

        sys.stdout.write(completion_script(args.shell, build_parser()))
        return 0
    if command == "bridge":
        from bridge.jsonrpc.stdio import run_bridge

        return run_bridge(args, lambda **extra: settings_of(args, **extra))
    if command == "doctor":
        from bridge.cli.doctor import run_doctor

        return run_doctor(args, lambda: settings_of(args), sys.stdout)
    quick = command in QUICK_COMMANDS
    settings = settings_of(args, cached=quick, concurrency=getattr(args, "concurrency", None))
    if command == "run":
        from bridge.cli.talk import run

        return run(args, settings)
    if command == "service":
        from bridge.cli.login import run_service

        return run_service(args, settings, sys.stdout)
    from bridge.cli.commands import COMMANDS
    from bridge.compose import build_store
    from bridge.service import JobService

    store = build_store(settings, quick=True)  # one-off: fail within ~2 s, not the loop's 30
    try:
        return COMMANDS[command](args, JobService(settings, store), sys.stdout)
    finally:
        store.close()
