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


def _memory(clock: ManualClock, tmp_path: Path) -> JobStore:
    return MemoryStore(clock=clock, seed=7)


def _sqlite(clock: ManualClock, tmp_path: Path) -> JobStore:
    from bridge.sqlite_store import SQLiteStore

    return SQLiteStore(tmp_path / "jobs.sqlite3", clock=clock, rng=random.Random(7))


STORES: dict[str, StoreFactory] = {
    "memory": StoreFactory(_memory),
    "sqlite": StoreFactory(_sqlite),
}


@pytest.fixture
def clock() -> ManualClock:
    """The store's clock; tests move it with ``clock.advance(s)``."""
    return ManualClock()


@pytest.fixture(params=list(STORES))
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    return STORES[request.param]


@pytest.fixture
def store(store_factory: StoreFactory, clock: ManualClock, tmp_path: Path) -> Iterator[JobStore]:
    """A fresh, empty store of each registered kind, closed after the test."""
    made = store_factory.make(clock, tmp_path)
    try:
        yield made
    finally:
        made.close()
