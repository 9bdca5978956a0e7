"""The dashboard's access rule (bridge/dashboard/auth.py ``decide``), as a table."""

from __future__ import annotations

import pytest

from bridge.dashboard.auth import Auth, Decision, decide

AUTH = Auth(token="s3cret-token", port=8123)
HOST = {"host": "127.0.0.1:8123"}
COOKIE = {AUTH.cookie_name: "s3cret-token"}
SAME_ORIGIN = {**HOST, "origin": "http://127.0.0.1:8123"}


def check(
    method: str = "GET",
    path: str = "/api/jobs",
    query: str = "",
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
) -> Decision:
    return decide(
        AUTH,
        method=method,
        path=path,
        query=query,
        headers=HOST if headers is None else headers,
        cookies=cookies or {},
    )


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({}, 401),
        ({"query": "token=wrong"}, 401),
        ({"cookies": {AUTH.cookie_name: "wrong"}}, 401),
        ({"cookies": {"agent_supervisor_dashboard_9999": "s3cret-token"}}, 401),
        ({"headers": {**HOST, "authorization": "Bearer wrong"}}, 401),
        ({"headers": {**HOST, "authorization": "Basic s3cret-token"}}, 401),
        ({"cookies": COOKIE}, 0),
        ({"query": "token=s3cret-token"}, 0),
        ({"headers": {**HOST, "authorization": "Bearer s3cret-token"}}, 0),
        ({"headers": {**HOST, "authorization": "bearer s3cret-token"}}, 0),
        ({"headers": {"host": "localhost:8123"}, "cookies": COOKIE}, 0),
        ({"headers": {"host": "evil.example:8123"}, "cookies": COOKIE}, 403),
        ({"headers": {"host": "127.0.0.1:9999"}, "cookies": COOKIE}, 403),
        ({"headers": {}, "cookies": COOKIE}, 403),
        ({"headers": {**HOST, "origin": "http://evil.example"}, "cookies": COOKIE}, 403),
        ({"headers": SAME_ORIGIN, "cookies": COOKIE}, 0),
    ],
)
def test_reads_need_the_token_and_our_host(kwargs: dict[str, object], status: int) -> None:
    """A GET passes only with the token (query, cookie of this port, or Bearer) and a Host
    naming this server; a foreign Host (DNS rebinding) or Origin is refused even with it."""
    decision = check(**kwargs)  # type: ignore[arg-type]
    assert decision.status == status, decision.reason
    assert decision.allowed is (status == 0)


@pytest.mark.parametrize(
    ("headers", "cookies", "status"),
    [
        (SAME_ORIGIN, COOKIE, 0),
        ({**HOST, "origin": "http://localhost:8123"}, COOKIE, 0),
        ({**SAME_ORIGIN, "sec-fetch-site": "same-origin"}, COOKIE, 0),
        (HOST, COOKIE, 403),  # a cookie alone never acts: no Origin, no action
        ({**HOST, "origin": "http://evil.example"}, COOKIE, 403),
        ({**HOST, "origin": "null"}, COOKIE, 403),
        ({**HOST, "origin": "http://127.0.0.1:9999"}, COOKIE, 403),
        ({**SAME_ORIGIN, "sec-fetch-site": "cross-site"}, COOKIE, 403),
        ({**HOST, "authorization": "Bearer s3cret-token"}, {}, 0),  # a script: no browser, no Origin
        ({**HOST, "authorization": "Bearer s3cret-token", "origin": "http://evil.example"}, {}, 403),
        (SAME_ORIGIN, {}, 401),
    ],
)
def test_actions_need_our_origin(headers: dict[str, str], cookies: dict[str, str], status: int) -> None:
    """A POST also needs an Origin naming this server, unless it is a Bearer request without one."""
    assert check("POST", "/api/jobs/1/cancel", headers=headers, cookies=cookies).status == status


def test_token_in_a_page_url_becomes_a_redirect_without_it() -> None:
    """Opening the printed URL redirects to the same page without the token (it becomes the
    cookie); other query parameters stay; API calls with ?token= are answered directly."""
    assert check(path="/", query="token=s3cret-token").redirect == "/"
    assert check(path="/", query="token=s3cret-token&x=1").redirect == "/?x=1"
    assert check(path="/api/jobs", query="token=s3cret-token").allowed
    assert check(path="/", cookies=COOKIE).allowed


def test_cookie_name_carries_the_port() -> None:
    """Two dashboards on one machine keep separate cookies (cookies ignore ports)."""
    assert Auth("t", 1).cookie_name != Auth("t", 2).cookie_name
