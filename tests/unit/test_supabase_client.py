"""SupabaseStore's HTTP client and wire shapes, with respx replacing only the transport (no
server): explicit timeouts, HTTP/1.1, one retry layer, what each request carries, and that
the secret key never shows in a repr, a log line or an error."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
import respx
from pydantic import SecretStr

from bridge.stores.policy import RetryPolicy
from bridge.stores.supabase import SupabaseStore
from supervisor.errors import ConfigError, LeaseLostError, StoreError, StoreUnavailableError
from supervisor.lifecycle import Outcome
from supervisor.settings import load_settings

URL = "https://project-ref.supabase.co"
KEY = "sb_secret_TOP-SECRET-KEY-value-42"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def store(sleeps: list[float]) -> Iterator[SupabaseStore]:
    """A store with its production HTTP client; respx intercepts that client's transport."""
    made = SupabaseStore(URL, SecretStr(KEY), retry=RetryPolicy(sleep=sleeps.append))
    made._schema_checked = True  # test_the_schema_version_is_checked_once covers the check
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=f"{URL}/rest/v1", assert_all_called=False) as router:
        yield router


def test_production_client_has_explicit_timeouts_http11_and_no_hidden_retry(store: SupabaseStore) -> None:
    """Connect 5 s / read 15 s (not httpx's default of the supabase client, 120 s), HTTP/1.1
    with a 20 s keep-alive (supabase-py #1064), the one client shared by postgrest, and
    postgrest-py's own GET retry turned off."""
    http = store._http
    assert http.timeout == httpx.Timeout(15.0, connect=5.0)
    pool = http._transport._pool  # type: ignore[attr-defined]
    assert (pool._http2, pool._http1, pool._keepalive_expiry) == (False, True, 20.0)
    assert http.follow_redirects is False
    assert store._client.postgrest.session is http
    assert store._client.options.postgrest_client_retry is False


def test_every_call_is_one_rpc_post_with_the_key_and_named_arguments(
    store: SupabaseStore, api: respx.MockRouter
) -> None:
    """A claim is POST /rest/v1/rpc/jobs_claim with apikey and Bearer, the public profile, and
    the arguments by name; an empty setof answer is []."""
    route = api.post("/rpc/jobs_claim").mock(return_value=httpx.Response(200, json=[]))
    assert store.claim("host-a", 3, lease_s=30, kinds={"b", "a"}) == []
    request = route.calls.last.request
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-profile"] == "public"
    body = json.loads(request.content)
    assert body["p_worker"] == "host-a"
    assert (body["p_limit"], body["p_lease_s"], body["p_kinds"]) == (3, 30, ["a", "b"])
    assert len(body["p_claim_id"]) == 36


def test_lost_answers_are_retried_with_the_same_claim_id(
    store: SupabaseStore, api: respx.MockRouter, sleeps: list[float]
) -> None:
    """A timeout and a 502 page are retried (POST included); every retry of one claim carries
    the same claim id, so the server can hand back the jobs it already took."""
    route = api.post("/rpc/jobs_claim").mock(
        side_effect=[
            httpx.ReadTimeout("timed out"),
            httpx.Response(502, text="<html>Bad Gateway</html>"),
            httpx.Response(200, json=[]),
        ]
    )
    store.claim("w", 1, lease_s=30)
    assert route.call_count == 3
    assert len({json.loads(c.request.content)["p_claim_id"] for c in route.calls}) == 1
    assert len(sleeps) == 2


def test_retry_after_is_honoured(store: SupabaseStore, api: respx.MockRouter, sleeps: list[float]) -> None:
    """A 429 with Retry-After: 3 waits at least 3 s before the next try."""
    api.post("/rpc/jobs_counts").mock(
        side_effect=[
            httpx.Response(429, json={"message": "rate limited"}, headers={"Retry-After": "3"}),
            httpx.Response(
                200,
                json=[
                    {
                        "status": "pending",
                        "jobs": 0,
                        "oldest_started_at": None,
                        "oldest_created_at": None,
                        "now": "2025-01-01T00:00:00+00:00",
                    }
                ],
            ),
        ]
    )
    store.counts()
    assert sleeps and sleeps[0] >= 3.0


def test_application_errors_are_raised_at_once_with_the_servers_message(
    store: SupabaseStore, api: respx.MockRouter
) -> None:
    """A 400 carrying our lease-lost SQLSTATE is LeaseLostError on the first answer."""
    message = "job 9: w attempt 1 no longer holds the lease (job is running, held by v attempt 2)"
    route = api.post("/rpc/jobs_finish").mock(
        return_value=httpx.Response(
            400, json={"code": "ASL01", "message": message, "details": None, "hint": None}
        )
    )
    with pytest.raises(LeaseLostError, match="held by v attempt 2"):
        store.finish(9, "w", 1, Outcome())
    assert route.call_count == 1


def test_the_key_never_leaks(
    store: SupabaseStore, api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the store's repr/str, nor the settings', nor a failing request's error (its
    message and its cause chain), nor the log lines contain the secret key."""
    caplog.set_level(logging.DEBUG)
    assert KEY not in repr(store) and KEY not in str(store)
    api.post("/rpc/jobs_get").mock(side_effect=httpx.ConnectError(f"refused while sending apikey={KEY}"))
    api.post("/rpc/jobs_events").mock(
        return_value=httpx.Response(401, json={"message": f"Invalid API key {KEY}", "hint": KEY})
    )
    for call, error in ((lambda: store.get(1), StoreUnavailableError), (lambda: store.events(1), StoreError)):
        with pytest.raises(error) as info:
            call()
        cause: BaseException | None = info.value
        while cause is not None:
            assert KEY not in str(cause)
            cause = cause.__cause__
    assert KEY not in caplog.text
    assert "***" in caplog.text  # the retries were logged, masked


def test_settings_and_composition(monkeypatch: pytest.MonkeyPatch) -> None:
    """`supabase` builds a SupabaseStore from SUPABASE_URL/SUPABASE_SERVICE_ROLE_KEY (the
    settings' repr hides the key); without them it is a ConfigError naming the variables."""
    from bridge.compose import build_store

    with pytest.raises(ConfigError, match="SUPABASE_URL"):
        build_store(load_settings(store="supabase"))
    monkeypatch.setenv("SUPABASE_URL", URL)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", KEY)
    settings = load_settings(store="supabase")
    assert KEY not in repr(settings) and KEY not in str(settings)
    made = build_store(settings)
    try:
        assert isinstance(made, SupabaseStore) and made.shared
    finally:
        made.close()


@pytest.mark.parametrize("url", ["ftp://x.supabase.co", "http://x.supabase.co", "x.supabase.co"])
def test_bad_urls_and_empty_keys_are_refused(url: str) -> None:
    """A URL that is not https (http only for localhost) or an empty key is a ConfigError."""
    with pytest.raises(ConfigError):
        SupabaseStore(url, SecretStr(KEY))
    with pytest.raises(ConfigError):
        SupabaseStore(URL, SecretStr(" "))
    SupabaseStore("http://localhost:54321", SecretStr(KEY)).close()


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ([{"version": 1, "product": "agent-supervisor"}], "version 1, older than this agent-supervisor"),
        ([{"version": 99, "product": "agent-supervisor"}], "newer than this agent-supervisor"),
    ],
)
def test_the_schema_version_is_checked_once(
    api: respx.MockRouter, sleeps: list[float], answer: list[dict[str, object]], says: str
) -> None:
    """Before its first call the store asks the database's schema version once: the right one
    lets every call through with no second check; an older or newer one is one clear line."""
    from bridge.sqlcli import SCHEMA_VERSION

    version = api.post("/rpc/jobs_schema_version").mock(
        side_effect=[httpx.Response(200, json=[{"version": SCHEMA_VERSION, "product": "agent-supervisor"}])]
    )
    counts = api.post("/rpc/jobs_now").mock(
        return_value=httpx.Response(200, json=[{"now": "2026-01-01T00:00:00+00:00", "schema_version": 2}])
    )
    good = SupabaseStore(URL, SecretStr(KEY), retry=RetryPolicy(sleep=sleeps.append))
    good.now()
    good.now()
    assert (version.call_count, counts.call_count) == (1, 2)
    good.close()
    version.side_effect = [httpx.Response(200, json=answer)]
    bad = SupabaseStore(URL, SecretStr(KEY), retry=RetryPolicy(sleep=sleeps.append))
    with pytest.raises(StoreError, match=says) as info:
        bad.now()
    assert "\n" not in str(info.value)
    assert counts.call_count == 2
    bad.close()
