"""The Supabase stand-in behaves as the real REST API does, over a real socket: each test pins
one behaviour of PostgREST or of Supabase's gateway (tests/standin/postgrest.py cites where)."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.standin.faults import Fault
from tests.standin.postgrest import PostgrestStandin

pytestmark = pytest.mark.postgres

PROBES = """
create function public.probe_series(p_n integer) returns setof integer language sql stable
  as $$ select generate_series(1, p_n) $$;
create function public.probe_rows(p_n integer) returns table (n integer, square integer) language sql stable
  as $$ select i, i * i from generate_series(1, p_n) i $$;
create function public.probe_scalar(p_x integer) returns integer language sql immutable
  as $$ select p_x + 1 $$;
create function public.probe_one(p_x integer) returns public.job_events language sql stable
  as $$ select * from jsonb_populate_record(null::public.job_events, jsonb_build_object('attempt', p_x)) $$;
create function public.probe_void() returns void language sql volatile as $$ select $$;
create function public.probe_sleep(p_s double precision) returns integer language sql volatile
  as $$ select 1 from pg_sleep(p_s) $$;
create function public.probe_who() returns table (role text, uid uuid, claims jsonb) language sql stable
  as $$ select current_user::text, auth.uid(), auth.jwt() $$;
create function public.probe_write() returns integer language sql stable
  as $$ select nextval('public.jobs_id_seq')::integer $$;
create function public.probe_over(p_a integer) returns integer language sql as $$ select 1 $$;
create function public.probe_over(p_a integer, p_b integer default 0) returns integer language sql
  as $$ select 2 $$;
create function public.probe_private() returns integer language sql as $$ select 1 $$;
revoke all on function public.probe_private() from public, anon, authenticated, service_role;
"""


@pytest.fixture
def standin(pg_dsn: str) -> Iterator[PostgrestStandin]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(PROBES)
    made = PostgrestStandin(pg_dsn, max_rows=1000)
    try:
        yield made
    finally:
        made.close()


def rpc(standin: PostgrestStandin, fn: str, body: dict[str, Any], *, key: str | None = None,
        token: str | None = None, timeout: float = 15.0) -> httpx.Response:  # fmt: skip
    key = standin.service_key if key is None else key
    headers = {"apikey": key, "Authorization": f"Bearer {token or key}"}
    return httpx.post(f"{standin.url}/rest/v1/rpc/{fn}", json=body, headers=headers, timeout=timeout)


def test_max_rows_cuts_rpc_results_silently(standin: PostgrestStandin) -> None:
    """A set-returning function's answer stops at max_rows (1,000) with HTTP 200, as on
    Supabase (Plan.hs 524-530); shorter answers are whole."""
    cut = rpc(standin, "probe_series", {"p_n": 1500})
    assert cut.status_code == 200
    assert cut.json() == list(range(1, 1001))
    assert cut.headers["Content-Range"] == "0-999/*"
    assert rpc(standin, "probe_rows", {"p_n": 3}).json() == [
        {"n": 1, "square": 1}, {"n": 2, "square": 4}, {"n": 3, "square": 9}]  # fmt: skip


def test_scalars_and_single_rows_come_back_bare(standin: PostgrestStandin) -> None:
    """A scalar function answers a bare value, a single composite a bare object, void 204
    (Query/SqlFragment.hs 196-208, Response.hs 188)."""
    assert rpc(standin, "probe_scalar", {"p_x": 41}).json() == 42
    one = rpc(standin, "probe_one", {"p_x": 7}).json()
    assert isinstance(one, dict) and one["attempt"] == 7
    void = rpc(standin, "probe_void", {})
    assert (void.status_code, void.content) == (204, b"")


def test_unknown_and_ambiguous_functions(standin: PostgrestStandin) -> None:
    """No function with that name and those argument keys is PGRST202 (404); an argument the
    function lacks too; a call two overloads both accept is PGRST203 (300) (Plan.hs 258-307)."""
    missing = rpc(standin, "no_such_function", {})
    assert (missing.status_code, missing.json()["code"]) == (404, "PGRST202")
    extra = rpc(standin, "probe_scalar", {"p_x": 1, "p_bogus": 2})
    assert (extra.status_code, extra.json()["code"]) == (404, "PGRST202")
    assert rpc(standin, "probe_scalar", {}).json()["code"] == "PGRST202"  # a required one missing
    ambiguous = rpc(standin, "probe_over", {"p_a": 1})
    assert (ambiguous.status_code, ambiguous.json()["code"]) == (300, "PGRST203")
    assert rpc(standin, "probe_over", {"p_a": 1, "p_b": 2}).json() == 2
    assert missing.headers["Proxy-Status"] == "PostgREST; error=PGRST202"


def test_keys_roles_and_claims(standin: PostgrestStandin) -> None:
    """The gateway refuses unknown keys; the JWT's role becomes the database role, its claims
    request.jwt.claims (auth.uid() works); a bad or expired token is 401 with WWW-Authenticate."""
    bad = rpc(standin, "probe_who", {}, key="sb_secret_wrong")
    assert (bad.status_code, bad.json()["message"]) == (401, "Invalid API key")
    claims = {**_claims(standin.service_key), "role": "service_role"}
    assert rpc(standin, "probe_who", {}).json() == [{"role": "service_role", "uid": None, "claims": claims}]
    user = str(uuid.uuid4())
    who = rpc(standin, "probe_who", {}, key=standin.anon_key, token=standin.user_token(user)).json()[0]
    assert (who["role"], who["uid"], who["claims"]["sub"]) == ("authenticated", user, user)
    forged = standin.user_token(user)[:-3] + "abc"
    refused = rpc(standin, "probe_who", {}, key=standin.anon_key, token=forged)
    assert (refused.status_code, refused.json()["code"]) == (401, "PGRST301")
    assert refused.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    expired = rpc(
        standin, "probe_who", {}, key=standin.anon_key, token=standin.user_token(user, expires_in_s=-60)
    )
    assert (expired.status_code, expired.json()["message"]) == (401, "JWT expired")


def _claims(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


def test_privileges_are_401_for_anon_and_403_for_others(standin: PostgrestStandin) -> None:
    """42501 is 401 with WWW-Authenticate: Bearer for the anon role, 403 otherwise (Error.hs 589,
    467-470)."""
    anon = rpc(standin, "probe_private", {}, key=standin.anon_key)
    assert (anon.status_code, anon.json()["code"]) == (401, "42501")
    assert anon.headers["WWW-Authenticate"] == "Bearer"
    other = rpc(standin, "probe_private", {})
    assert (other.status_code, other.json()["code"]) == (403, "42501")
    assert "WWW-Authenticate" not in other.headers


def test_stable_functions_run_read_only(standin: PostgrestStandin) -> None:
    """A STABLE function runs in a READ ONLY transaction: a write in it is 25006, HTTP 405."""
    answer = rpc(standin, "probe_write", {})
    assert (answer.status_code, answer.json()["code"]) == (405, "25006")


def test_statement_timeout_per_role(pg_dsn: str) -> None:
    """A call running past its role's statement_timeout is cancelled: 57014, HTTP 500."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(PROBES)
    with PostgrestStandin(pg_dsn, role_settings={"service_role": {"statement_timeout": "200ms"}}) as standin:
        assert rpc(standin, "probe_sleep", {"p_s": 0.01}).json() == 1
        slow = rpc(standin, "probe_sleep", {"p_s": 2})
        assert (slow.status_code, slow.json()["code"]) == (500, "57014")
        # the override is service_role's alone: anon keeps Supabase's 3 s (tests/pg.py)
        assert rpc(standin, "probe_sleep", {"p_s": 0.01}, key=standin.anon_key).status_code == 200


def test_requests_run_concurrently(standin: PostgrestStandin) -> None:
    """Four calls of 0.5 s each finish in well under 2 s: a pool, no global lock."""
    answers: list[int] = []

    def call() -> None:
        answers.append(rpc(standin, "probe_sleep", {"p_s": 0.5}).status_code)

    threads = [threading.Thread(target=call) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * 4
    assert time.monotonic() - started < 1.5


def test_faults_happen_at_the_socket(standin: PostgrestStandin) -> None:
    """A reset is a transport error; a 503 page is HTML with Retry-After; a lost answer is a
    transport error after the call committed."""
    standin.faults.plan(Fault.RESET, "probe_void")
    with pytest.raises(httpx.TransportError):
        rpc(standin, "probe_void", {})
    standin.faults.plan(Fault.GATEWAY_503)
    page = rpc(standin, "probe_void", {})
    assert (page.status_code, page.headers["Retry-After"]) == (503, "0")
    standin.faults.plan(Fault.LOST)
    with pytest.raises(httpx.TransportError):
        rpc(standin, "probe_sleep", {"p_s": 0})
    assert [c.fn for c in standin.calls] == ["probe_sleep"]  # only the lost one reached the database
