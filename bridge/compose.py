"""The composition root: the one place that turns settings into a store and a supervisor.

Remote-store clients are imported here only when such a store is configured, so the default
(SQLite) path never pays for supabase, httpx or psycopg; the supervisor loop only when a
supervisor is built, so the command line's one-off commands never pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

from supervisor.errors import ConfigError

if TYPE_CHECKING:
    from supervisor.runner import JobChange, Supervisor
    from supervisor.settings import Settings
    from supervisor.store import JobStore

QUICK_ATTEMPTS: Final = 2
QUICK_TOTAL_S: Final = 1.0
QUICK_CONNECT_S: Final = 2
"""The budget of a one-off command (``list``, ``cancel``…): a person waits for it, so a store
that does not answer is an error within ~2 s (two tries, at most 1 s of backoff; libpq's
connect timeout cannot be under 2 s), not after the supervisor loop's 30 s of retries."""

__all__ = ["build_store", "build_supervisor", "sqlite_path"]


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///absolute/path`` URL (``sqlite:///~/x`` expands the home)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path:
        raise ConfigError(f"invalid SQLite store URL {url!r}: use sqlite:///absolute/path/jobs.sqlite3")
    path = Path(unquote(parts.path)).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"invalid SQLite store URL {url!r}: the path must be absolute")
    return path


def build_store(settings: Settings, *, quick: bool = False) -> JobStore:
    """The store named by ``settings.store_url``; with ``quick``, a remote store retries a
    failed call within the one-off budget (``QUICK_*``) instead of the loop's.

    A SQLite store named explicitly (``store``) must be in an existing directory: a typo in
    the path must not silently start an empty queue. The default one, in the data dir, is
    created with the data dir.
    """
    url = settings.store_url
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from bridge.stores.sqlite import SQLiteStore

        path = sqlite_path(url)
        if settings.store is not None and not path.parent.is_dir():
            raise ConfigError(
                f"the SQLite store's directory {path.parent} does not exist: "
                "create it, or correct the store URL"
            )
        return SQLiteStore(path, backoff_cap_s=settings.backoff_cap_s)
    retry = None
    if quick:
        from bridge.stores.policy import RetryPolicy

        retry = RetryPolicy(attempts=QUICK_ATTEMPTS, total_s=QUICK_TOTAL_S, multiplier=0.25, max_wait_s=0.5)
    if scheme in ("postgresql", "postgres"):
        from bridge.stores.postgres import PostgresStore

        if quick:
            return PostgresStore(
                url, backoff_cap_s=settings.backoff_cap_s, retry=retry, connect_timeout_s=QUICK_CONNECT_S
            )
        return PostgresStore(url, backoff_cap_s=settings.backoff_cap_s)
    if url == "supabase":
        if not settings.supabase_url or settings.supabase_key is None:
            raise ConfigError(
                "store 'supabase' needs the project URL and the secret key: set "
                "AGENT_SUPERVISOR_SUPABASE_URL (or SUPABASE_URL) and AGENT_SUPERVISOR_SUPABASE_KEY "
                "(or SUPABASE_SERVICE_ROLE_KEY)"
            )
        from bridge.stores.supabase import SupabaseStore

        return SupabaseStore(
            settings.supabase_url, settings.supabase_key, backoff_cap_s=settings.backoff_cap_s, retry=retry
        )
    raise ConfigError(f"unsupported store {scheme!r}: use sqlite:///path, postgresql://… or supabase")


def build_supervisor(
    settings: Settings,
    *,
    store: JobStore | None = None,
    on_change: Callable[[JobChange], None] | None = None,
    install_signal_handlers: bool = True,
    subreaper: bool = False,
) -> Supervisor:
    """A supervisor on the configured store (or on ``store``, which the caller then owns).

    ``subreaper`` only for a process that is nothing but the supervisor (the CLI's ``run``,
    the stdio bridge): it makes this process adopt and reap its agents' escaped descendants.
    """
    from supervisor.runner import Supervisor

    return Supervisor(
        settings,
        store if store is not None else build_store(settings),
        on_change=on_change,
        install_signal_handlers=install_signal_handlers,
        subreaper=subreaper,
    )
