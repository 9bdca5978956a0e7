"""The TypeScript client's own tests (node's test runner) against the real bridge, so that the
README's single test command covers them too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT

SCRIPT = ROOT / "scripts" / "ts-client" / "run-tests.sh"


@pytest.mark.slow
@pytest.mark.timeout(600)  # npm ci on a cold cache, tsc, then five tests with real agents
def test_typescript_client_against_the_real_bridge() -> None:
    """scripts/ts-client/run-tests.sh passes: npm ci, tsc, node --test against the bridge."""
    if shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail(
                "node is not installed; CI must run the TypeScript client tests (.ci/run installs it)"
            )
        pytest.skip("node is not installed (in CI, with CI set, this is a failure)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    env["PYTHON"] = sys.executable  # the bridge runs in this interpreter (the venv of the test run)
    out = subprocess.run([str(SCRIPT)], capture_output=True, text=True, env=env, timeout=540)
    assert out.returncode == 0, (
        f"run-tests.sh exited {out.returncode}\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
    )
    assert re.search(r"\bpass [1-9]", out.stdout) and re.search(r"\bfail 0\b", out.stdout), out.stdout[-3000:]
