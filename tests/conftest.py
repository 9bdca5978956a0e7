"""Fixtures shared by every test layer."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the developer's real config file or AGENT_SUPERVISOR_* environment."""
    import os

    for name in list(os.environ):
        if name.startswith("AGENT_SUPERVISOR_"):
            monkeypatch.delenv(name)
    missing = tmp_path_factory.mktemp("no-config") / "config.toml"
    monkeypatch.setenv("AGENT_SUPERVISOR_CONFIG", str(missing))
    # Nor its settings cache (supervisor/settings_cache.py): one for the session, so that
    # commands of a test and of later tests meet snapshots as a user's commands do.
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))


# -- PostgreSQL (issue 4): one real server per session, started on first use (tests/pg.py) --
# (imported here, not at the top, to keep this block self-contained for concurrent edits)
from collections.abc import Iterator  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _pg_server_teardown() -> Iterator[None]:
    """Stop the session's PostgreSQL server, if a test started one."""
    yield
    from tests import pg

    pg.stop_server()


@pytest.fixture(autouse=True)
def _no_supabase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings also read Supabase's own variables: a developer's must not leak in."""
    for name in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh database (schema applied, test clock installed) on the session's server."""
    from tests import pg

    server = pg.server(pytest.skip, pytest.fail)
    name = server.create_database()
    try:
        yield server.dsn(name)
    finally:
        server.drop_database(name)
