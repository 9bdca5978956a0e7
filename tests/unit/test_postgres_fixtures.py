"""The PostgreSQL test fixtures' policy when the server binaries are missing."""

from __future__ import annotations

import pytest

from tests import pg


class Called(Exception):
    pass


def raiser(kind: str) -> object:
    def call(message: str) -> None:
        raise Called(kind, message)

    return call


@pytest.mark.parametrize(("ci", "expected"), [(None, "skip"), ("true", "fail")])
def test_missing_postgres_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, expected: str
) -> None:
    """Without initdb the postgres tests skip with a reason that says what to install, except
    under CI=true, where a missing server is a failure."""
    monkeypatch.setattr(pg, "_server", None)
    monkeypatch.setattr(pg, "_server_error", None)
    monkeypatch.setattr(pg, "find_bin_dir", lambda: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(Called) as info:
        pg.server(raiser("skip"), raiser("fail"))  # type: ignore[arg-type]
    kind, message = info.value.args
    assert kind == expected
    assert "postgresql" in message
