"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

Playwright cannot download its own browsers here, so it launches ``/usr/bin/chromium``
(``.ci/run`` installs the package). One browser session; the screenshot it takes is kept at
``tests/artifacts/dashboard.png`` (git-ignored; ``DASHBOARD_SCREENSHOT`` names another path)
for CI to keep as an artifact.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_dashboard import dashboard_process, submit
from tests.support import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(os.environ.get("DASHBOARD_SCREENSHOT") or ROOT / "tests" / "artifacts" / "dashboard.png")
WAIT_MS = 30_000


def _need_browser() -> None:
    missing = [
        what
        for what, ok in (
            ("Debian's chromium package", shutil.which(CHROMIUM) is not None),
            ("playwright (the test extra)", _importable("playwright")),
        )
        if not ok
    ]
    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} missing; CI must run the browser test (.ci/run installs both)")
    pytest.skip(f"{', '.join(missing)} missing (in CI, with CI set, this is a failure)")


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    """A fresh headless Chromium page (its own user-data dir), closed after the test."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1000},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.mark.timeout(120)
def test_jobs_complete_live_and_one_is_cancelled_from_the_page(page: object, tmp_path: Path) -> None:
    """With --run, submitted jobs turn completed on the page without a reload; a running job is
    cancelled from its view (after the confirmation); the chart counts the finished jobs and
    the log tail shows the agent's output."""
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    data = tmp_path / "d"
    with dashboard_process(data, "--run", "--concurrency", "4", "--refresh", "0.5") as board:
        page.goto(board.url)
        assert page.url == f"{board.base}/"  # the token became a cookie and left the address bar
        expect(page.get_by_test_id("connection")).to_have_text("live", timeout=WAIT_MS)
        page.evaluate("window.__loaded_once = true")  # a reload would forget this

        quick = [submit(data, "--", sys.executable, "-c", f"print('quick job {n}')") for n in range(3)]
        slow = submit(
            data,
            "--",
            sys.executable,
            "-u",
            "-c",
            "import time\nfor i in range(600):\n    print('tick', i)\n    time.sleep(0.1)",
        )
        for job_id in quick:
            row = page.locator(f'[data-testid="jobs-table"] tr[data-job-id="{job_id}"] .status')
            expect(row).to_have_text("completed", timeout=WAIT_MS)
        expect(page.get_by_test_id("count-completed")).to_have_text("3", timeout=WAIT_MS)

        page.locator(f'tr[data-job-id="{slow}"] td.what').click()
        expect(page.get_by_test_id("job-status")).to_have_text("running", timeout=WAIT_MS)
        expect(page.get_by_test_id("job-log")).to_contain_text("tick 3", timeout=WAIT_MS)

        page.get_by_test_id("action-cancel").click()
        expect(page.get_by_test_id("confirm")).to_be_visible()
        expect(page.get_by_test_id("confirm")).to_contain_text(f"Cancel job {slow}?")
        assert page.get_by_test_id("job-status").inner_text() == "running"  # nothing happens before "Yes"
        page.get_by_test_id("confirm-yes").click()
        expect(page.get_by_test_id("job-status")).to_have_text("cancelled", timeout=WAIT_MS)
        expect(page.locator(f'tr[data-job-id="{slow}"] .status')).to_have_text("cancelled", timeout=WAIT_MS)
        expect(page.get_by_test_id("job-events")).to_contain_text("cancel requested")

        chart = page.get_by_test_id("chart")
        expect(chart.locator("rect.bar.completed").first).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#chart-total")).to_contain_text("3 completed", timeout=WAIT_MS)
        expect(page.locator("#chart-total")).to_contain_text("1 cancelled", timeout=WAIT_MS)

        assert page.evaluate("window.__loaded_once") is True
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        print(f"dashboard screenshot: {SCREENSHOT}")
