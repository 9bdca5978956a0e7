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


@pytest.mark.parametrize("path", sorted((ROOT / "supervisor").glob("*.py")), ids=lambda p: p.name)
def test_engine_module_imports_no_adapter(path: Path) -> None:
    """No module of supervisor/ imports an adapter, a remote client or sqlite3."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


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
        "from bridge.compose import build_store; from supervisor.settings import Settings; "
        "build_store(Settings(data_dir={data_dir!r}))",
    ],
)
def test_sqlite_path_does_not_import_remote_clients(statement: str, tmp_path: Path) -> None:
    """The engine and the SQLite path never load supabase, httpx or postgrest."""
    loaded = loaded_after(statement.format(data_dir=str(tmp_path)))
    assert not loaded & {"supabase", "httpx", "postgrest", "psycopg", "realtime", "tenacity"}
