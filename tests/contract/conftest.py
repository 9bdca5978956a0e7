"""Fixtures of the store contract suite: every test runs once per store in ``STORES``.

To add a store, register a factory: it gets the test's ``ManualClock`` (the store must use it
as its clock, so that lease and backoff tests move time without sleeping) and a private
``tmp_path``, and returns a fresh, empty store. A store that needs a server can skip itself
from inside its factory (``pytest.skip``) when the server is not available.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervisor.store import JobStore
from supervisor.testing import ManualClock, MemoryStore


@dataclass(frozen=True)
class StoreFactory:
    make: Callable[[ManualClock, Path], JobStore]
    lifecycle_in_python: bool = True
    """The store runs ``supervisor.lifecycle`` in this process, so a test may inject a failure
    into it (the Postgres stores run their SQL mirror of it on the server instead)."""
    other_writer: Callable[[JobStore, ManualClock, Path], JobStore] | None = None
    """Another handle on the same store, as another process would have (for ``watch``):
    None means the store itself (its own writes reach its watchers)."""
    protocol_v2: bool = True
    """The store implements protocol v2 (/work/notes/protocol-v2.md: list filters, identity,
    queue_position, unique_key, run_after, watch, reap promotion). The remote stores get it
    with issue 10; their factories set this once their SQL does."""


def _memory(clock: ManualClock, tmp_path: Path) -> JobStore:
    return MemoryStore(clock=clock, seed=7)


def _sqlite(clock: ManualClock, tmp_path: Path) -> JobStore:
    from bridge.stores.sqlite import SQLiteStore

    return SQLiteStore(tmp_path / "jobs.sqlite3", clock=clock, rng=random.Random(7))


def _sqlite_other(store: JobStore, clock: ManualClock, tmp_path: Path) -> JobStore:
    from bridge.stores.sqlite import SQLiteStore

    return SQLiteStore(tmp_path / "jobs.sqlite3", clock=clock, rng=random.Random(8))


def _postgres(clock: ManualClock, tmp_path: Path) -> JobStore:
    """PostgresStore on a fresh database of the session's PostgreSQL server (tests/pg.py),
    its server clock driven by ``clock``."""
    from bridge.stores.policy import RetryPolicy
    from tests import pg

    server = pg.server(pytest.skip, pytest.fail)
    name = server.create_database()
    return pg.clocked_postgres_store(  # type: ignore[no-any-return]
        server.dsn(name), clock, on_close=lambda: server.drop_database(name), retry=RetryPolicy(attempts=2)
    )


def _supabase(clock: ManualClock, tmp_path: Path) -> JobStore:
    """The real supabase-py client with its production HTTP client, over a loopback socket to
    the Supabase stand-in (tests/standin/postgrest.py: PostgREST's rules, a connection pool,
    max_rows 1,000) on a fresh database of the session's PostgreSQL server, with the server
    clock driven by ``clock``."""
    from pydantic import SecretStr

    from bridge.stores.policy import RetryPolicy
    from bridge.stores.supabase import SupabaseStore
    from tests import pg
    from tests.standin.postgrest import PostgrestStandin

    server = pg.server(pytest.skip, pytest.fail)
    name = server.create_database()
    standin = PostgrestStandin(server.dsn(name), clock=clock, realtime=True)

    class TestSupabaseStore(SupabaseStore):
        def close(self) -> None:
            if not self._closed:
                super().close()
                standin.close()
                server.drop_database(name)

    return TestSupabaseStore(standin.url, SecretStr(standin.service_key), retry=RetryPolicy(attempts=2))


STORES: dict[str, StoreFactory] = {
    "memory": StoreFactory(_memory),
    "sqlite": StoreFactory(_sqlite, other_writer=_sqlite_other),
    "postgres": StoreFactory(_postgres, lifecycle_in_python=False),
    "supabase": StoreFactory(_supabase, lifecycle_in_python=False),
}


@pytest.fixture
def clock() -> ManualClock:
    """The store's clock; tests move it with ``clock.advance(s)``."""
    return ManualClock()


@pytest.fixture(params=list(STORES))
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    return STORES[request.param]


@pytest.fixture
def v2(store_factory: StoreFactory) -> None:
    """Skips a protocol-v2 test on a store that does not have v2 yet."""
    if not store_factory.protocol_v2:
        pytest.skip("this store gets protocol v2 with issue 10")


@pytest.fixture
def other(
    store_factory: StoreFactory, store: JobStore, clock: ManualClock, tmp_path: Path
) -> Iterator[JobStore]:
    """Another writer on the same store (another process's handle), closed after the test."""
    if store_factory.other_writer is None:
        yield store
        return
    made = store_factory.other_writer(store, clock, tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def store(store_factory: StoreFactory, clock: ManualClock, tmp_path: Path) -> Iterator[JobStore]:
    """A fresh, empty store of each registered kind, closed after the test."""
    made = store_factory.make(clock, tmp_path)
    try:
        yield made
    finally:
        made.close()
