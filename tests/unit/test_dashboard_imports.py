"""The dashboard's libraries are an optional extra: only its two commands load them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

WEB = {"starlette", "uvicorn", "prometheus_client"}


def loaded_after(code: str, data_dir: Path) -> set[str]:
    """Top-level modules loaded once ``code`` ran in a fresh interpreter (with ``data``)."""
    script = f"import sys, json\ndata = {str(data_dir)!r}\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return {name.split(".")[0] for name in json.loads(out.stdout.splitlines()[-1])}


def test_importing_the_cli_loads_no_web_library(tmp_path: Path) -> None:
    """``import bridge.cli`` and building its parser (which knows ``dashboard``) load none of
    starlette, uvicorn, prometheus_client."""
    loaded = loaded_after("import bridge.cli\nbridge.cli.build_parser().parse_args(['dashboard'])", tmp_path)
    assert "bridge" in loaded and not loaded & WEB


@pytest.mark.parametrize(
    "argv",
    [["submit", "--", "true"], ["list", "--json"], ["show", "1"], ["health", "--json"], ["purge", "1"]],
    ids=lambda argv: argv[0],
)
def test_other_commands_load_no_web_library(argv: list[str], tmp_path: Path) -> None:
    """Running another command end to end loads none of the dashboard's libraries."""
    code = (
        "from bridge.cli import main\n"
        "assert main(['--data-dir', data, 'submit', '--', 'true']) == 0\n"
        f"assert main(['--data-dir', data, *{argv!r}]) == 0\n"
    )
    loaded = loaded_after(code, tmp_path)
    assert not loaded & WEB, loaded & WEB


def test_metrics_command_loads_prometheus_client_only(tmp_path: Path) -> None:
    """``metrics`` needs prometheus-client, not the web server or framework."""
    loaded = loaded_after(
        "from bridge.cli import main\nassert main(['--data-dir', data, 'metrics']) == 0", tmp_path
    )
    assert "prometheus_client" in loaded and not loaded & {"starlette", "uvicorn"}
