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
