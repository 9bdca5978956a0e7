"""The remote stores' retry policy as data: what is retried, how long it waits, and how errors
are translated into the supervisor's error tree (no server, no network)."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest
from postgrest import APIError

from bridge.stores.policy import (
    RetryPolicy,
    ServerError,
    StatementTimeoutError,
    describe,
    is_retryable,
    translate,
)
from bridge.stores.rows import clean, epoch
from supervisor.errors import (
    IllegalTransitionError,
    InvalidJobError,
    JobNotFoundError,
    LeaseLostError,
    StoreError,
    StoreUnavailableError,
    UpdateConflictError,
)

REQ = httpx.Request("POST", "https://x.supabase.co/rest/v1/rpc/jobs_claim")

RETRYABLE: list[BaseException] = [
    httpx.ConnectError("refused", request=REQ),
    httpx.ConnectTimeout("timed out", request=REQ),
    httpx.ReadTimeout("timed out", request=REQ),
    httpx.PoolTimeout("no connection", request=REQ),
    httpx.RemoteProtocolError("Server disconnected without sending a response.", request=REQ),
    httpx.ReadError("connection reset by peer", request=REQ),
    ConnectionResetError(104, "reset"),
    *(ServerError(code, "pgrst") for code in ("PGRST000", "PGRST001", "PGRST002", "PGRST003")),
    *(ServerError(code, "pg") for code in ("40001", "40P01", "08006", "08001", "53300", "57P01")),
    *(ServerError(None, "gateway", status=status) for status in (500, 502, 503, 504, 429, 408)),
    ServerError("502", "Bad Gateway"),  # postgrest-py's code for a non-JSON error body
    APIError({"code": "PGRST001", "message": "no connection to the database"}),
    APIError({"code": "503", "message": "Service Unavailable"}),
    psycopg.OperationalError("connection failed: connection refused"),
    psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    psycopg.errors.DeadlockDetected("deadlock detected"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.InterfaceError("the connection is closed"),
]
FINAL: list[BaseException] = [
    httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'.", request=REQ),
    *(ServerError(code, "ours", status=400) for code in ("ASN01", "ASL01", "ASC01", "AST01", "ASV01")),
    ServerError("23514", "violates check constraint", status=400),
    ServerError("23505", "duplicate key", status=409),
    ServerError("42501", "permission denied for function jobs_claim", status=403),
    ServerError("PGRST202", "Could not find the function", status=404),
    ServerError("PGRST301", "JWT expired", status=401),
    ServerError("XX000", "internal error", status=500),  # a definite SQLSTATE beats the 500
    # The statement timeout cancelled the call: it would be cancelled again (issue 10).
    ServerError("57014", "canceling statement due to statement timeout", status=500),
    APIError({"code": "57014", "message": "canceling statement due to statement timeout"}),
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    *(ServerError(None, "client error", status=status) for status in (400, 401, 403, 404, 409)),
    APIError({"code": "P0001", "message": "raised"}),
    psycopg.OperationalError('connection failed: FATAL: password authentication failed for user "x"'),
    psycopg.OperationalError('connection failed: FATAL: database "nope" does not exist'),
    psycopg.errors.CheckViolation("new row violates check constraint"),
    psycopg.errors.UndefinedFunction("function public.jobs_claim does not exist"),
    ValueError("a bug"),
    KeyError("job_id"),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: f"{type(e).__name__}:{getattr(e, 'code', '')}")
def test_transient_failures_are_retryable(exc: BaseException) -> None:
    """Network errors, timeouts, 5xx/408/429, PostgREST's PGRST000-003 and the transient
    SQLSTATEs (serialization, deadlock, class 08, shutdown) are retried."""
    assert is_retryable(exc)


@pytest.mark.parametrize("exc", FINAL, ids=lambda e: f"{type(e).__name__}:{getattr(e, 'code', '')}")
def test_application_errors_are_final(exc: BaseException) -> None:
    """Our SQLSTATEs, constraint and permission errors, other 4xx, bad URLs, wrong passwords
    and bugs are raised at once, never retried."""
    assert not is_retryable(exc)


def state(attempt: int, exc: BaseException | None = None) -> Any:
    outcome = None if exc is None else SimpleNamespace(exception=lambda: exc)
    return SimpleNamespace(attempt_number=attempt, outcome=outcome)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6])
def test_waits_are_full_jitter_exponential(attempt: int) -> None:
    """Each wait is uniform in [0, min(max, multiplier * 2**(n-1))]: 4,000 draws stay in the
    range and their mean is within 8 % of half the bound (a tenacity-style statistical test)."""
    policy = RetryPolicy(multiplier=0.5, max_wait_s=8.0)
    bound = min(8.0, 0.5 * 2 ** (attempt - 1))
    random.seed(attempt)
    waits = [policy.wait(state(attempt, httpx.ConnectError("x", request=REQ))) for _ in range(4000)]
    assert all(0.0 <= w <= bound for w in waits)
    assert abs(sum(waits) / len(waits) - bound / 2) <= 0.08 * bound / 2


def test_retry_after_is_waited_out() -> None:
    """A 429/503 with Retry-After waits at least that long (capped by the total budget)."""
    policy = RetryPolicy(multiplier=0.01, total_s=30.0)
    assert policy.wait(state(1, ServerError(None, "slow down", status=429, retry_after=7.0))) >= 7.0
    assert policy.wait(state(1, ServerError(None, "down", status=503, retry_after=900.0))) <= 30.0


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    """A call that keeps failing is tried ``attempts`` times, sleeping between tries (injected
    sleep: nothing really waits), then its last error is raised as it is."""
    sleeps: list[float] = []
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise httpx.ConnectError(f"refused {len(calls)}", request=REQ)

    policy = RetryPolicy(attempts=6, sleep=sleeps.append)
    with pytest.raises(httpx.ConnectError, match="refused 6"):
        policy.run(failing, lambda s: None)
    assert len(calls) == 6
    assert len(sleeps) == 5
    assert all(0 <= s <= min(8.0, 0.5 * 2**i) for i, s in enumerate(sleeps))


def test_total_time_is_bounded() -> None:
    """No sleep starts that would end past ``total_s``: a store that keeps failing gives up
    within its time budget even with attempts to spare."""
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise httpx.ConnectError("refused", request=REQ)

    policy = RetryPolicy(attempts=1000, total_s=0.3, multiplier=0.02, max_wait_s=0.05)
    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        policy.run(failing, lambda s: None)
    assert time.monotonic() - started < 0.6
    assert 1 < len(calls) < 1000


def test_quick_policy_is_shorter() -> None:
    """Calls that are repeated anyway (heartbeat, claim) get at most 3 tries and 5 s."""
    quick = RetryPolicy(attempts=6, total_s=30.0).quick()
    assert (quick.attempts, quick.total_s) == (3, 5.0)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("ASN01", JobNotFoundError),
        ("ASL01", LeaseLostError),
        ("ASC01", UpdateConflictError),
        ("AST01", IllegalTransitionError),
        ("ASV01", InvalidJobError),
        ("23514", InvalidJobError),
        ("22P05", InvalidJobError),
        ("42501", StoreError),
        ("PGRST202", StoreError),
    ],
)
def test_server_codes_map_to_the_error_tree(code: str, error: type[Exception]) -> None:
    """Our SQLSTATEs become the matching supervisor error with the server's message; bad data
    is InvalidJobError; permission and missing-function errors are StoreError with a hint."""
    got = translate(ServerError(code, "job 7: the message"), store="S", fn="jobs_finish", tries=1)
    assert type(got) is error
    assert not isinstance(got, StoreUnavailableError)
    assert "job 7: the message" in str(got)
    if code == "PGRST202":
        assert "db apply" in str(got)
    if code == "42501":
        assert "service-role" in str(got)


def test_spent_retries_are_store_unavailable_in_one_line_without_secrets() -> None:
    """A transient error after the retries is StoreUnavailableError: one line, secrets masked."""
    exc = httpx.ConnectError("refused\nconnecting with key sb_secret_xyz", request=REQ)
    got = translate(exc, store="Supabase store x", fn="jobs_claim", tries=6, secrets=["sb_secret_xyz"])
    assert isinstance(got, StoreUnavailableError)
    assert "\n" not in str(got)
    assert "sb_secret_xyz" not in str(got)
    assert "6 attempts" in str(got)
    assert describe(None) == "?"


def test_clean_makes_text_acceptable_to_postgres() -> None:
    """NUL characters and lone surrogates (which text and jsonb refuse) are replaced, deep in
    JSON values too; other values pass through."""
    dirty = {"tail": "a\x00b", "deep": [{"x": "\ud800z"}], "n": 1.5, "ok": True, "none": None}
    cleaned = clean(dirty)
    assert cleaned == {"tail": "a\ufffdb", "deep": [{"x": "?z"}], "n": 1.5, "ok": True, "none": None}
    assert clean(("a", 1)) == ["a", 1]
    assert clean(object()).startswith("<object")


def test_server_times_round_trip_exactly() -> None:
    """A timestamptz in JSON converts back to the float the store was given (microseconds)."""
    for t in (1_700_000_000.0, 1_700_000_035.501, 1_700_000_012.345678):
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t))) + f".{round(t % 1 * 1e6):06d}+00:00"
        assert epoch(text) == t
    assert epoch("2023-11-14T22:13:20+00:00") == 1_700_000_000.0


def test_a_statement_timeout_is_said_and_tried_once() -> None:
    """57014 (the server's statement timeout cancelled the call) is not retried: one attempt,
    then StatementTimeoutError, a StoreUnavailableError for the engine that says what it is."""
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise ServerError("57014", "canceling statement due to statement timeout", status=500)

    with pytest.raises(ServerError) as raised:
        RetryPolicy(sleep=lambda s: None).run(call, lambda state: None)
    assert len(calls) == 1
    got = translate(raised.value, store="S", fn="jobs_enqueue", tries=1)
    assert isinstance(got, StatementTimeoutError) and isinstance(got, StoreUnavailableError)
    assert "statement timeout" in str(got) and "jobs_enqueue" in str(got)
