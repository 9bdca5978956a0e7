"""Enqueue from JavaScript: scripts/supabase-js/ (the README's supabase-js example) run by node
with the real ``@supabase/supabase-js`` from npm against the Supabase stand-in; the jobs it
made are checked in the database."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from bridge.stores.postgres import PostgresStore
from supervisor.lifecycle import Status
from tests.standin.postgrest import PostgrestStandin
from tests.support import ROOT

pytestmark = pytest.mark.postgres

EXAMPLE = ROOT / "scripts" / "supabase-js"


@pytest.mark.timeout(300)  # npm ci on a cold cache
def test_supabase_js_enqueues_through_the_rpc(pg_dsn: str) -> None:
    """node's test runner passes the example's tests (ids in order, dedup, replay by request
    id, 600 specs in two calls, an Edge Function handler, the publishable key refused), and the
    jobs it reported are pending in the database with their payloads."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("node/npm are not installed; CI must run the supabase-js example (.ci/run)")
        pytest.skip("node/npm are not installed (in CI, with CI set, this is a failure)")
    if not (EXAMPLE / "node_modules" / "@supabase" / "supabase-js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=EXAMPLE, check=True, timeout=240
        )
    with PostgrestStandin(pg_dsn) as standin:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AGENT_SUPERVISOR_", "SUPABASE_"))},
            "SUPABASE_URL": standin.url,
            "SUPABASE_SECRET_KEY": standin.service_key,
            "SUPABASE_PUBLISHABLE_KEY": standin.anon_key,
        }
        out = subprocess.run(
            ["node", "--test", "--test-reporter=spec", "enqueue.test.mjs"],
            cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-2000:]}"
        assert re.search(r"\bpass 4\b", out.stdout) and re.search(r"\bfail 0\b", out.stdout), out.stdout
        assert standin.count("jobs_enqueue") >= 7
    ids = json.loads(re.search(r"IDS (\[.*\])", out.stdout).group(1))  # type: ignore[union-attr]
    store = PostgresStore(pg_dsn)
    try:
        jobs = [store.get(i) for i in ids]
        assert [(j.kind, j.payload, j.status) for j in jobs] == [
            ("summarize", {"doc": 42}, Status.PENDING),
            ("summarize", {"doc": 43}, Status.PENDING),
            ("summarize", {"doc": 43}, Status.PENDING),
        ]
        assert jobs[0].priority == 5
        assert store.counts().by_status[Status.PENDING] == 2 + 1 + 600 + 1
    finally:
        store.close()
