"""doctor's checks that need a remote service or a skewed clock, without either: the anon-key
privilege check against a fake HTTP answer, the clock check against a fake store clock."""

from __future__ import annotations

import httpx
import pytest

from bridge.cli.doctor import SKEW_FAIL_S, SKEW_WARN_S, anon_key_check, clock_check


def client(status_for: dict[str, int]) -> httpx.Client:
    """An httpx client whose answers are ``status_for[path]`` (404 for any other path)."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["apikey"] == "anon-key"
        return httpx.Response(status_for.get(request.url.path, 404), json=[])

    return httpx.Client(transport=httpx.MockTransport(answer))


def test_an_anon_key_that_is_refused_passes() -> None:
    """401 on the table and the function: the publishable key is powerless, as it must be."""
    http = client({"/rest/v1/jobs": 401, "/rest/v1/rpc/jobs_now": 401})
    check = anon_key_check("https://x.supabase.co", "anon-key", http)
    assert check.status == "ok"


@pytest.mark.parametrize(
    ("answers", "needle"),
    [
        ({"/rest/v1/jobs": 200, "/rest/v1/rpc/jobs_now": 401}, "can read jobs"),
        ({"/rest/v1/jobs": 401, "/rest/v1/rpc/jobs_now": 200}, "can call jobs_now"),
    ],
)
def test_an_anon_key_that_can_read_fails_with_a_fix(answers: dict[str, int], needle: str) -> None:
    """A 2xx to the anon key is a failed check that names the leak and how to fix it."""
    check = anon_key_check("https://x.supabase.co", "anon-key", client(answers))
    assert check.status == "fail" and needle in check.message and check.fix and "db apply" in check.fix


@pytest.mark.parametrize(
    ("skew", "status"),
    [(0.3, "ok"), (-(SKEW_WARN_S + 1), "warn"), (SKEW_FAIL_S + 5, "fail")],
)
def test_clock_skew_is_judged_by_its_size(skew: float, status: str) -> None:
    """The store's clock against ours, with the round trip halved: ok, warn, or fail."""
    walls = iter([1000.0, 1000.2])
    check = clock_check(lambda: 1000.1 + skew, wall=lambda: next(walls))
    assert check.status == status
    assert ("ahead of" if skew > 0 else "behind") in check.message
