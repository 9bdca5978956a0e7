"""The public API of ``supervisor``: what ``__all__`` names is exactly what the package
exports, each name resolves, and each is documented (after httpx's ``test_exported_members``)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import supervisor

EXPECTED = {
    "CancelMode",
    "ConfigError",
    "DataDirLockedError",
    "ErrorKind",
    "Event",
    "IllegalTransitionError",
    "InvalidJobError",
    "Job",
    "JobNotFoundError",
    "JobSpec",
    "JobStore",
    "KindConfig",
    "LeaseLostError",
    "Outcome",
    "Settings",
    "SpawnError",
    "StateFileError",
    "Status",
    "StoreError",
    "StoreMismatchError",
    "StoreUnavailableError",
    "Supervisor",
    "SupervisorError",
    "UpdateConflictError",
}


def test_all_is_the_expected_surface() -> None:
    """supervisor.__all__ names exactly the public API, sorted, without duplicates."""
    assert set(supervisor.__all__) == EXPECTED
    assert sorted(supervisor.__all__) == supervisor.__all__


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_exported_name_resolves_and_is_documented(name: str) -> None:
    """Each exported name is an attribute of the package with a docstring of its own."""
    member = getattr(supervisor, name)
    assert inspect.getdoc(member), name


def test_no_public_module_attribute_is_missing_from_all() -> None:
    """Every public class or function the package module itself defines or re-exports is in
    __all__ (modules and typing helpers aside)."""
    public = {
        n
        for n, v in vars(supervisor).items()
        if not n.startswith("_")
        and not inspect.ismodule(v)
        and n not in ("annotations", "TYPE_CHECKING", "Any")
    }
    assert public <= set(supervisor.__all__)


def test_the_lazy_names_do_not_load_the_loop_until_used() -> None:
    """Importing supervisor does not import the loop (it stays cheap for plugin hosts)."""
    code = (
        "import sys, supervisor; print('supervisor.loop' in sys.modules, 'supervisor.runner' in sys.modules)"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert importlib.import_module("supervisor").Supervisor.__name__ == "Supervisor"
