"""The job stores: the adapters behind the engine's ``supervisor.store.JobStore``.

::

    sqlite.py    SQLiteStore, the default: one embedded file (sqlite3; SQL in bridge/sql/sqlite*.sql)
    remote.py    RemoteStore, the base of the two remote stores: the JobStore verbs over the SQL
                 functions of bridge/sql/functions.sql; it owns retries, a subclass moves bytes
    postgres.py  PostgresStore(RemoteStore): one direct connection (psycopg)
    supabase.py  SupabaseStore(RemoteStore): ``.rpc()`` through PostgREST (supabase-py, httpx)
    policy.py    what a remote call retries (tenacity) and which error it becomes
    rows.py      each store's rows as ``Job`` and ``Event``, and back; the remote JSON arguments

Who uses what: ``bridge/compose.py``, the composition root, builds the configured store and
imports only that store's module; the engine (``supervisor/``) never imports this package;
tests and scripts build stores directly. ``bridge/sqlcli.py`` (``db schema`` / ``db apply``)
applies the SQL that the remote stores call.

Importing the package imports no store, so the SQLite path never loads a remote client: the
names of ``__all__`` are resolved on first use. Code in this repository imports from the
modules themselves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from bridge.stores.policy import RetryPolicy
    from bridge.stores.postgres import PostgresStore
    from bridge.stores.remote import RemoteStore
    from bridge.stores.sqlite import SQLiteStore
    from bridge.stores.supabase import SupabaseStore

__all__ = ["PostgresStore", "RemoteStore", "RetryPolicy", "SQLiteStore", "SupabaseStore"]

_HOMES: Final = {
    "PostgresStore": "postgres",
    "RemoteStore": "remote",
    "RetryPolicy": "policy",
    "SQLiteStore": "sqlite",
    "SupabaseStore": "supabase",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
