"""The ``dashboard`` and ``metrics`` commands: their grammar and their handlers.

Both run on the optional extra ``agent-supervisor[dashboard]`` (Starlette, uvicorn,
prometheus-client). The parser imports this module for every command, so at the top it
imports only the standard library: the handlers import ``bridge.dashboard`` (and the rest)
when they run, so ``import bridge.cli`` and every other command never load a web library
(tests/unit/test_dashboard_imports.py). ``metrics`` needs only prometheus-client.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    from bridge.service import JobService

__all__ = ["add_parsers", "dashboard", "metrics"]

_EXTRA: Final = "pip install 'agent-supervisor[dashboard]'"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0.2 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0.2..3600 seconds, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_parsers(sub: Any) -> None:
    """Add ``dashboard`` and ``metrics`` to the command line's subparsers (``sub``:
    argparse's private ``_SubParsersAction``)."""
    d = sub.add_parser("dashboard", help="a live web page on 127.0.0.1: queue, jobs, logs, actions, /metrics")
    d.add_argument("--port", type=_port, help="default: a free port the system picks")
    d.add_argument("--open", action="store_true", help="open the page in the web browser")
    d.add_argument("--run", action="store_true", help="also run the supervisor in this process")
    d.add_argument("--concurrency", type=_count, help="with --run: agents at once (default 2)")
    d.add_argument(
        "--refresh", type=_seconds, default=1.5, help="seconds between looks at the store (default 1.5)"
    )
    sub.add_parser("metrics", help="print the Prometheus metrics (text format), as /metrics serves them")


def dashboard(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    """``dashboard``: serve the page until SIGINT/SIGTERM; prints its URL (with the token)."""
    from bridge.service import UsageError
    from supervisor.errors import ConfigError

    if args.concurrency is not None and not args.run:
        raise UsageError("--concurrency is for the supervisor that --run starts; add --run")
    try:
        from bridge.dashboard.server import serve
    except ImportError as exc:
        raise ConfigError(f"the dashboard needs {exc.name}: {_EXTRA}") from None
    return serve(service, out, port=args.port, run=args.run, open_browser=args.open, refresh_s=args.refresh)


def metrics(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    """``metrics``: the store-derived metrics once, in Prometheus text format (the in-process
    counters exist only under ``dashboard --run``)."""
    from supervisor.errors import ConfigError

    try:
        from bridge.dashboard.metrics import build_registry, render
    except ImportError as exc:
        raise ConfigError(f"metrics need {exc.name}: {_EXTRA}") from None
    from bridge.dashboard.queries import throughput

    registry, _ = build_registry(service.health, lambda: throughput(service, time.time()), in_process=False)
    out.write(render(registry).decode())
    return 0
