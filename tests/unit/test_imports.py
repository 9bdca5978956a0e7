"""The engine's import rules: one-way dependencies and a small import cost."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"bridge", "httpx", "supabase", "postgrest", "psycopg", "sqlite3", "tenacity", "respx"}
REMOTE = {"httpx", "supabase", "postgrest", "psycopg", "realtime", "tenacity", "respx"}
STORES = ROOT / "bridge" / "stores"


def imported(path: Path) -> list[str]:
    """Every absolute module name the file imports, at any depth (lazy imports included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "supervisor").rglob("*.py")), ids=lambda p: p.name)
def test_engine_module_imports_no_adapter(path: Path) -> None:
    """No module of supervisor/ imports an adapter, a remote client or sqlite3."""
    for name in imported(path):
        assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


SQLITE_PARTS = ("bridge.stores.rows", "bridge.stores.sqlite_db", "bridge.stores.wakeup")


@pytest.mark.parametrize("path", [STORES / f"{p.rsplit('.', 1)[1]}.py" for p in ("x.sqlite", *SQLITE_PARTS)])
def test_sqlite_store_imports_no_remote_code(path: Path) -> None:
    """The SQLite store and its parts (file, wake-ups, row conversion) import no remote client
    nor tenacity, and of bridge/ only each other."""
    for name in imported(path):
        assert name.split(".")[0] not in REMOTE, f"{path.name} imports {name}"
        assert not name.startswith("bridge") or name in SQLITE_PARTS, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", sorted(STORES.glob("*.py")), ids=lambda p: p.name)
def test_stores_import_no_front_end(path: Path) -> None:
    """A store imports from bridge/ only other stores; the one exception is sqlcli's DSN display."""
    for name in imported(path):
        if name.split(".")[0] == "bridge":
            assert name.startswith("bridge.stores") or name == "bridge.sqlcli", f"{path.name} imports {name}"


def test_stores_package_names_resolve() -> None:
    """Every public name of bridge.stores is the class of the module that defines it."""
    import bridge.stores

    for name in bridge.stores.__all__:
        value = getattr(bridge.stores, name)
        assert value.__name__ == name and value.__module__.startswith("bridge.stores.")
    with pytest.raises(AttributeError):
        _ = bridge.stores.NoSuchStore


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return {name.split(".")[0] for name in json.loads(out)}


@pytest.mark.parametrize(
    "statement",
    [
        "import supervisor",
        "import supervisor.runner",
        "from bridge.stores import SQLiteStore",
        "from bridge.compose import build_store; from supervisor.settings import Settings; "
        "build_store(Settings(data_dir={data_dir!r}))",
    ],
)
def test_sqlite_path_does_not_import_remote_clients(statement: str, tmp_path: Path) -> None:
    """The engine and the SQLite path never load supabase, httpx or postgrest."""
    loaded = loaded_after(statement.format(data_dir=str(tmp_path)))
    assert not loaded & {"supabase", "httpx", "postgrest", "psycopg", "realtime", "tenacity"}


def test_stores_package_imports_no_store() -> None:
    """Importing bridge.stores loads no store, so neither sqlite3 nor a remote client."""
    loaded = loaded_after("import bridge.stores")
    assert not loaded & (REMOTE | {"sqlite3", "_sqlite3"})
