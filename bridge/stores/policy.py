"""What the two remote stores share in how they call: the retry policy and error translation.

Both stores (``RemoteStore`` of ``bridge/stores/remote.py`` and its subclasses
``PostgresStore``, over psycopg, and ``SupabaseStore``, over supabase-py ``.rpc()``) call the
SQL functions of ``bridge/sql/functions.sql`` with the same JSON arguments and get the same JSON
rows back (converted by ``bridge/stores/rows.py``). A transport raises its library's errors as
they are; this module decides what to retry, and translates the rest into
``supervisor.errors``::

    _send raises                             handling                      the caller sees
    httpx.TransportError, HTTP 5xx/408/429,  retried: tenacity, full       StoreUnavailableError
    PGRST000-003, 08xxx, 40001, 40P01,       jitter, Retry-After, bounded  once retries are spent
    psycopg connection errors                attempts and total time       (the runner's outbox)
    57014 (the statement timeout cancelled   not retried: the same call    StatementTimeoutError,
      the call; it rolled back)              would take as long again      a StoreUnavailableError
    ASN01 ASL01 ASC01 AST01 ASV01            not retried                   JobNotFoundError,
      (our SQLSTATEs, functions.sql)                                       LeaseLostError, Update-
                                                                           ConflictError, Illegal-
                                                                           TransitionError, Invalid-
                                                                           JobError
    22xxx, 23xxx (bad data, constraints)     not retried                   InvalidJobError
    anything else (42501, PGRST202, …)       not retried                   StoreError, one line

Every write is safe to repeat after a lost answer (see functions.sql), which is what makes
retrying POSTs correct: the retry of a call that did commit gets the committed answer.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import tenacity

from supervisor.errors import (
    IllegalTransitionError,
    InvalidJobError,
    JobNotFoundError,
    LeaseLostError,
    StoreError,
    StoreUnavailableError,
    SupervisorError,
    UpdateConflictError,
)

__all__ = [
    "RetryPolicy",
    "ServerError",
    "StatementTimeoutError",
    "describe",
    "is_retryable",
    "safe_cause",
    "translate",
]

T = TypeVar("T")

_APP_ERRORS: Final[dict[str, Callable[[str], SupervisorError]]] = {
    "ASN01": JobNotFoundError,
    "ASL01": LeaseLostError,
    "ASC01": UpdateConflictError,
    "AST01": IllegalTransitionError,
    "ASV01": InvalidJobError,
}
# Transient answers of the database or PostgREST (PostgREST "Errors" docs; PostgreSQL
# Appendix A): unreachable database or pool (PGRST000-003), serialization failure and deadlock
# (40001, 40P01: the transaction was rolled back), server shutting down (57P01-57P03), out of
# resources (53xxx, e.g. too many connections), class 08. Not 57014: a call the statement
# timeout cancelled would only be cancelled again (issue 10: retried six times, then reported
# as "unavailable"); the caller sees StatementTimeoutError at once and may split its work.
STATEMENT_TIMEOUT: Final = "57014"
_TRANSIENT_CODES: Final = frozenset(
    {
        "PGRST000",
        "PGRST001",
        "PGRST002",
        "PGRST003",
        "40001",
        "40P01",
        "57P01",
        "57P02",
        "57P03",
        "53000",
        "53100",
        "53200",
        "53300",
        "53400",
    }
)
# libpq reports failed connections without an SQLSTATE; these will not cure themselves.
_PERMANENT_CONNECT: Final = (
    "authentication failed",
    "no password supplied",
    "does not exist",
    "invalid dsn",
    "invalid connection option",
    "invalid uri",
)


class StatementTimeoutError(StoreUnavailableError):
    """The server cancelled the call at its ``statement_timeout`` (SQLSTATE 57014) and rolled
    it back. A ``StoreUnavailableError`` for the engine (an outcome goes to the outbox, a claim
    waits), but never retried as it is: a remote store splits a batch and tries the halves."""


class ServerError(Exception):
    """An error answer, normalised by a transport: ``code`` is an SQLSTATE, a PostgREST code
    (``PGRST…``) or, for a body that was not PostgREST JSON, the HTTP status as text."""

    def __init__(
        self, code: str | None, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


def _code_retryable(code: str | None, status: int | None) -> bool:
    if code:
        if code in _TRANSIENT_CODES or code.startswith("08"):
            return True
        if len(code) == 3 and code.isdigit():  # postgrest-py's code for a non-JSON error body
            status = int(code)
        else:
            return False  # a definite answer of the database or of PostgREST
    return status is not None and (status in (408, 429) or 500 <= status <= 599)


def is_retryable(exc: BaseException) -> bool:
    """True when the same call may succeed later: network errors, timeouts, HTTP 5xx/408/429,
    and the transient codes above. Application errors (4xx, our SQLSTATEs) are final."""
    import httpx

    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return False  # a bad URL or header: our mistake, not the network's
    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        # Includes RemoteProtocolError "Server disconnected" on idle keep-alive connections
        # (supabase-py #1064).
        return True
    if isinstance(exc, ServerError):
        return _code_retryable(exc.code, exc.status)
    postgrest = sys.modules.get("postgrest.exceptions")  # loaded only if supabase is in use
    if postgrest is not None and isinstance(exc, postgrest.APIError):
        return _code_retryable(exc.code, None)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.Error):
        if exc.sqlstate:
            return _code_retryable(exc.sqlstate, None)
        if isinstance(exc, psycopg.OperationalError):
            text = str(exc).lower()
            return not any(phrase in text for phrase in _PERMANENT_CONNECT)
        return isinstance(exc, psycopg.InterfaceError)  # "the connection is closed": reconnect
    return False


def _retry_after(exc: BaseException | None) -> float | None:
    return exc.retry_after if isinstance(exc, ServerError) else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with full-jitter exponential backoff (tenacity ``wait_random_exponential``:
    uniform in [0, min(max_wait_s, multiplier * 2**n)]), a ``Retry-After`` answer waited out,
    at most ``attempts`` calls and no sleep that would end past ``total_s``. ``sleep`` is
    injectable so tests check the waits without waiting."""

    attempts: int = 6
    total_s: float = 30.0
    multiplier: float = 0.5
    max_wait_s: float = 8.0
    sleep: Callable[[float], None] = time.sleep

    def quick(self) -> RetryPolicy:
        """The policy of calls that are repeated anyway (heartbeat, claim, reap): fewer tries,
        so a store outage never holds the supervisor's loop for long."""
        return RetryPolicy(
            min(self.attempts, 3), min(self.total_s, 5.0), self.multiplier, self.max_wait_s, self.sleep
        )

    def wait(self, state: tenacity.RetryCallState) -> float:
        jitter = tenacity.wait_random_exponential(multiplier=self.multiplier, max=self.max_wait_s)(state)
        asked = _retry_after(state.outcome.exception() if state.outcome else None)
        return jitter if asked is None else max(jitter, min(asked, self.total_s))

    def run(self, call: Callable[[], T], on_retry: Callable[[tenacity.RetryCallState], None]) -> T:
        """``call()`` until it succeeds, raises a non-retryable error, or the policy stops
        (then its last error is raised as it is)."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_retryable),
            stop=tenacity.stop_after_attempt(self.attempts) | tenacity.stop_before_delay(self.total_s),
            wait=self.wait,
            sleep=self.sleep,
            before_sleep=on_retry,
            reraise=True,
        )
        return retrying(call)


def describe(exc: BaseException | None, secrets: Iterable[str] = ()) -> str:
    """One line (≤ 300 chars) saying what went wrong, with every secret replaced by ``***``."""
    if exc is None:
        return "?"
    if isinstance(exc, ServerError):
        message: Any = exc.message
    elif getattr(exc, "diag", None) is not None:  # psycopg: the primary message, no CONTEXT
        message = exc.diag.message_primary  # type: ignore[attr-defined]
    else:
        message = getattr(exc, "message", None)  # postgrest.APIError
    text = " ".join(str(message or exc).split()) or type(exc).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:300]


def safe_cause(exc: BaseException, secrets: Iterable[str]) -> BaseException | None:
    """``exc`` to chain as the cause, or None when its text (or its causes') holds a secret:
    the CLI prints the whole cause chain."""
    secrets = [s for s in secrets if s]
    seen: set[int] = set()
    cause: BaseException | None = exc
    # Bounded, and cycle-safe: a context chain can loop (an error re-raised while handling
    # itself, as respx's side effects do).
    while cause is not None and id(cause) not in seen and len(seen) < 16:
        seen.add(id(cause))
        if any(s in str(cause) for s in secrets):
            return None
        cause = cause.__cause__ or cause.__context__
    return exc


def _code(exc: BaseException) -> str | None:
    """The SQLSTATE or PostgREST code of an error answer, if it has one."""
    code = exc.code if isinstance(exc, ServerError) else getattr(exc, "sqlstate", None)
    code = code or getattr(exc, "code", None)
    return code if isinstance(code, str) else None


def translate(
    exc: BaseException, *, store: str, fn: str, tries: int, secrets: Iterable[str] = ()
) -> Exception:
    """The ``supervisor.errors`` error for what a call raised (see the table above), after
    ``tries`` attempts. ``store`` names the store in messages; it never holds a secret."""
    if isinstance(exc, SupervisorError):
        return exc
    text = describe(exc, secrets)
    if _code(exc) == STATEMENT_TIMEOUT:
        return StatementTimeoutError(
            f"{store}: the server cancelled {fn} at its statement timeout; nothing of it was kept ({text})"
        )
    if is_retryable(exc):
        return StoreUnavailableError(f"{store} unavailable ({fn}, {tries} attempts): {text}")
    code = _code(exc)
    if code in _APP_ERRORS:
        return _APP_ERRORS[code](text)
    if isinstance(code, str) and code[:2] in ("22", "23"):
        return InvalidJobError(f"{store} refused the data ({fn}): {text}")
    if code in ("42501", "401", "403", "PGRST301", "PGRST302", "PGRST303"):
        return StoreError(
            f"{store} refused access to {fn}: use the service-role (secret) key "
            f"or a role granted in schema.sql ({text})"
        )
    if code in ("PGRST202", "42883", "404"):
        return StoreError(
            f"{store} has no function {fn}: apply the SQL (agent-supervisor "
            f"db apply --dsn … or db schema) and reload the schema cache ({text})"
        )
    return StoreError(f"{store}: {fn} failed: {text}")
