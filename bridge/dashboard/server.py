"""``agent-supervisor dashboard``: the loopback socket, the token, uvicorn, the supervisor.

One process, one event loop: uvicorn serves ``app.create_app`` on a socket this module binds
to 127.0.0.1 (never another address: there is no option for one), on ``--port`` or a port
the kernel picks. The token is made here, printed once inside the URL, and never logged:
uvicorn's access log (which would record ``?token=``) is off, and ``--open`` hands the
browser a private redirect file rather than the URL (``browser_page``).

With ``--run`` a supervisor runs in this process on a thread of its own (``Supervisor.start``)
with its own store connection, so the page's reads never queue behind its heartbeats; its
change stream feeds the page and the ``*_total`` metrics. Stop signals are ours, not
uvicorn's: uvicorn re-raises a captured SIGTERM once it has shut down, which would end the
process before the supervisor drained its agents. The first SIGINT/SIGTERM stops the server
and drains the agents (as ``run`` does); a second one stops them without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
import shutil
import socket
import tempfile
import threading
import webbrowser
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TextIO

import uvicorn

from bridge.dashboard.app import Options, create_app
from bridge.dashboard.auth import Auth
from bridge.service import JobService
from supervisor.datadir import write_private
from supervisor.signals import on_stop_signals

__all__ = ["HOST", "browser_page", "listen", "serve", "store_kind"]

HOST: Final = "127.0.0.1"
_HEALTH_TTL_S: Final = 0.5
"""Pages, the feed and scrapes share one health report this fresh (the bridge's figure)."""
_GRACEFUL_S: Final = 2
"""How long open event streams may take to end when the server stops."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(port: int | None) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (``port`` None or 0: one the kernel picks).

    Not inheritable (PEP 446's default), so agents started by an in-process supervisor never
    hold it open.
    """
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on an accepted connection only when its
    # socket says proto == IPPROTO_TCP (base_events._set_nodelay), and a socket made with proto
    # 0 passes 0 on to every connection it accepts. Without it, Nagle's algorithm and the
    # client's delayed ACK held each keep-alive answer for 40 ms (measured: 44 ms vs 1 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Restarting on the same --port must not fail on the last run's TIME_WAIT connections.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port or 0))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def browser_page(url: str) -> Path:
    """A private file that sends a browser on to ``url``, for ``--open``.

    The browser gets this file's path on its command line, never the URL itself: a command
    line is readable by every local user (``ps``, /proc/PID/cmdline), and the URL holds the
    token (Jupyter does the same for its token). The file is 0600 in a fresh 0700 directory;
    the caller removes the directory when the server stops.
    """
    folder = Path(tempfile.mkdtemp(prefix="agent-supervisor-dashboard-"))
    page = folder / "open.html"
    target = html.escape(url, quote=True)
    write_private(
        page,
        (
            '<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
            f'<meta http-equiv="refresh" content="0; url={target}">'
            f'<title>agent-supervisor dashboard</title><a href="{target}">open the dashboard</a>\n'
        ).encode(),
    )
    return page


def store_kind(store_url: str) -> str:
    """``sqlite``, ``postgres`` or ``supabase``: what the page may say about the store (a URL
    may carry a password)."""
    scheme = store_url.split(":", 1)[0].lower()
    return "postgres" if scheme in ("postgres", "postgresql") else scheme


def serve(
    service: JobService,
    out: TextIO,
    *,
    port: int | None = None,
    run: bool = False,
    open_browser: bool = False,
    refresh_s: float = 1.5,
) -> int:
    """Serve the dashboard over ``service``'s settings and store until a stop signal.

    Prints ``dashboard: URL`` (with the token) to ``out`` once the socket listens (and the
    supervisor, with ``run``, has started). Errors before that (the port is taken, another
    supervisor holds the data dir) propagate.
    """
    sock = listen(port)
    try:
        return asyncio.run(
            _serve(service, sock, out, run=run, open_browser=open_browser, refresh_s=refresh_s)
        )
    finally:
        sock.close()


async def _serve(
    service: JobService, sock: socket.socket, out: TextIO, *, run: bool, open_browser: bool, refresh_s: float
) -> int:
    settings = service.settings
    auth = Auth(secrets.token_urlsafe(32), sock.getsockname()[1])
    ours = JobService(settings, service.store, health_ttl_s=_HEALTH_TTL_S)
    supervisor = changes = None
    if run:
        from bridge.compose import build_supervisor

        supervisor = build_supervisor(settings, install_signal_handlers=False, subreaper=True)
        changes = supervisor.subscribe(loop=asyncio.get_running_loop())  # before start: no change missed
        try:
            supervisor.start()  # DataDirLockedError: another supervisor runs on this data dir
        except BaseException:
            changes.close()
            supervisor.store.close()
            raise
        ours.supervisor = supervisor
    server: _Server | None = None
    feed_close: Callable[[], None] | None = None
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        """The first signal stops the server (then the supervisor drains); a second one stops
        the agents at once. Flags and a self-pipe write only: it runs in a signal handler."""
        if server is not None:
            if server.should_exit and supervisor is not None:
                supervisor.request_stop(drain=False)
            server.should_exit = True
        elif supervisor is not None:
            supervisor.request_stop(drain=False)
        if feed_close is not None:
            loop.call_soon_threadsafe(feed_close)  # open event streams end now

    page: Path | None = None
    try:
        with on_stop_signals(on_signal):
            try:
                options = Options(
                    mode="run" if run else "store",
                    store_kind=store_kind(settings.store_url),
                    refresh_s=refresh_s,
                )
                app = create_app(ours, auth, options, changes=changes)
                feed_close = app.state.feed.close
                server = _Server(
                    uvicorn.Config(
                        app,
                        log_config=None,  # the command's logging (stderr) stays as it is
                        log_level="warning",
                        access_log=False,  # it would log ?token=
                        lifespan="on",
                        proxy_headers=False,  # nothing sits in front of a loopback server
                        server_header=False,
                        timeout_graceful_shutdown=_GRACEFUL_S,
                    )
                )
                url = f"http://{HOST}:{auth.port}/?token={auth.token}"
                out.write(f"dashboard: {url}\n")
                out.flush()
                if open_browser:  # a browser may take a moment to start: not on the event loop
                    page = browser_page(url)
                    threading.Thread(
                        target=webbrowser.open, args=(page.as_uri(),), name="dashboard-open", daemon=True
                    ).start()
                await server.serve(sockets=[sock])
            finally:
                if supervisor is not None:  # still under our signal handlers: a second one hurries it
                    ours.supervisor = None
                    await asyncio.to_thread(supervisor.stop, drain=True)
                    supervisor.store.close()
    finally:
        if page is not None:
            shutil.rmtree(page.parent, ignore_errors=True)
    return 0
