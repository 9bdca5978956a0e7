"""postgrest-lite: the part of PostgREST that the Supabase store uses, on a real PostgreSQL.

The real supabase-py client talks HTTP; a respx router takes its requests (nothing else of the
client is replaced) and hands each ``POST /rest/v1/rpc/<fn>`` to ``PostgrestLite``, which runs
it the way PostgREST does (research/supabase.md section 5):

* the key picks the role (``service_role`` for the secret key, ``anon`` for the publishable
  one; an unknown key is refused with 401 like Supabase's gateway);
* one transaction per request: ``set local role``, READ ONLY for STABLE/IMMUTABLE functions;
* the JSON body is decoded into the function's named parameters with ``json_to_record`` and
  the parameter types from the catalog (a key the function does not have is PGRST202, 404);
* ``setof`` results become one JSON array (``[]`` when empty);
* errors become PostgREST's JSON ``{code, message, details, hint}`` with its HTTP status table.

``Faults`` wraps it to inject connection resets, timeouts (before the call, or after the commit:
a lost answer), 503s and outages. Thread-safe: one connection under a lock.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import respx
from psycopg import sql

from tests.pg import CLOCK_SETTING

URL = "https://project-ref.supabase.co"
SERVICE_KEY = "sb_secret_test-service-key-0123456789"
ANON_KEY = "sb_publishable_test-anon-key"

# PostgREST's SQLSTATE → HTTP status table (PostgREST docs, "Errors").
_EXACT = {"23503": 409, "23505": 409, "25006": 405, "P0001": 400, "42883": 404, "42P01": 404}
_BY_CLASS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}


def http_status(code: str, role: str) -> int:
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    if code == "42501":
        return 401 if role == "anon" else 403
    return _EXACT.get(code) or _BY_CLASS.get(code[:2], 400)


def _error(
    status: int, code: str | None, message: str, details: Any = None, hint: Any = None
) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "details": details, "hint": hint})


class PostgrestLite:
    """Executes RPC calls on ``dsn``; ``clock`` (epoch seconds) drives ``_jobs_now()``."""

    def __init__(self, dsn: str, *, clock: Callable[[], float] | None = None) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.clock = clock
        self.roles = {SERVICE_KEY: "service_role", ANON_KEY: "anon"}
        self._lock = threading.Lock()
        self._functions: dict[str, tuple[dict[str, str], bool]] = {}

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def _function(self, name: str) -> tuple[dict[str, str], bool] | None:
        """Input parameter names → types, and whether it is STABLE/IMMUTABLE (read only)."""
        if name not in self._functions:
            row = self.conn.execute(
                "select p.proargnames, p.proargmodes, p.proargtypes::oid[], p.proallargtypes,"
                " p.provolatile from pg_proc p where p.proname = %s"
                " and p.pronamespace = 'public'::regnamespace",
                (name,),
            ).fetchone()
            if row is None:
                return None
            names, modes, in_types, all_types, volatile = row
            types = all_types or in_types
            modes = modes or ["i"] * len(types)
            params = {}
            for arg, mode, oid in zip(names or [], modes, types, strict=False):
                if mode in ("i", "b", "v"):
                    params[arg] = self.conn.execute("select format_type(%s, null)", (oid,)).fetchone()[0]
            self._functions[name] = (params, volatile in ("s", "i"))
        return self._functions[name]

    def handle(self, request: httpx.Request, fn: str) -> httpx.Response:
        """The respx side effect of ``POST /rest/v1/rpc/<fn>``."""
        key = request.headers.get("apikey", "")
        role = self.roles.get(key)
        if role is None or request.headers.get("authorization") != f"Bearer {key}":
            return httpx.Response(401, json={"message": "Invalid API key", "hint": "Double check your key"})
        if request.headers.get("content-profile", "public") != "public":
            return _error(406, "PGRST106", "The schema must be one of the following: public")
        try:
            body = json.loads(request.content or b"{}")
        except ValueError:
            return _error(400, "PGRST102", "Empty or invalid json")
        with self._lock:
            found = self._function(fn)
            if found is None or not isinstance(body, dict) or not set(body) <= set(found[0]):
                args = ", ".join(sorted(body)) if isinstance(body, dict) else ""
                return _error(
                    404, "PGRST202", f"Could not find the function public.{fn}({args}) in the schema cache"
                )
            params, read_only = found
            return self._execute(fn, params, body, role, read_only)

    def _execute(
        self, fn: str, params: dict[str, str], body: dict[str, Any], role: str, read_only: bool
    ) -> httpx.Response:
        given = [name for name in params if name in body]
        call = sql.SQL("public.{}({})").format(
            sql.Identifier(fn),
            sql.SQL(", ").join(sql.SQL("{0} => a.{0}").format(sql.Identifier(n)) for n in given),
        )
        if given:
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(params[n])) for n in given
            )
            query = sql.SQL(
                "select coalesce(json_agg(r), '[]'::json)"
                " from json_to_record(%s::json) as a({}), lateral {} r"
            ).format(columns, call)
            args: tuple[Any, ...] | None = (json.dumps(body),)
        else:
            query = sql.SQL("select coalesce(json_agg(r), '[]'::json) from {} r").format(call)
            args = None
        try:
            with self.conn.transaction():
                if read_only:
                    self.conn.execute("set transaction read only")
                self.conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
                if self.clock is not None:
                    self.conn.execute("select set_config(%s, %s, true)", (CLOCK_SETTING, repr(self.clock())))
                rows = self.conn.execute(query, args).fetchone()[0]
        except psycopg.Error as exc:
            code = exc.sqlstate or "XX000"
            diag = exc.diag
            return _error(
                http_status(code, role),
                code,
                diag.message_primary or str(exc),
                diag.message_detail,
                diag.message_hint,
            )
        return httpx.Response(200, json=rows)


@dataclass
class Faults:
    """Fault injection in front of a ``PostgrestLite``: with probability ``rate`` a request
    fails as a connection reset, a timeout before the server saw it, a 503 from the gateway,
    or a timeout AFTER the server committed (the answer is lost: the client must replay).
    ``outage`` refuses every connection."""

    lite: PostgrestLite
    rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(4))
    outage: bool = False
    injected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, what: str) -> None:
        with self._lock:
            self.injected[what] = self.injected.get(what, 0) + 1

    def handle(self, request: httpx.Request, fn: str) -> httpx.Response:
        if self.outage:
            self._count("outage")
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        with self._lock:
            roll = self.rng.random()
            kind = self.rng.choice(["reset", "timeout", "503", "lost_answer"]) if roll < self.rate else None
        if kind == "reset":
            self._count(kind)
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        if kind == "timeout":
            self._count(kind)
            raise httpx.ConnectTimeout("timed out", request=request)
        if kind == "503":
            self._count(kind)
            return httpx.Response(
                503, text="<html>503 Service Unavailable</html>", headers={"Retry-After": "0"}
            )
        response = self.lite.handle(request, fn)
        if kind == "lost_answer":
            self._count(kind)
            raise httpx.ReadTimeout("timed out", request=request)
        return response


def routed_client(
    handler: Callable[[httpx.Request, str], httpx.Response],
) -> tuple[httpx.Client, respx.Route]:
    """An httpx client whose transport is a respx router sending ``/rpc/<fn>`` to ``handler``
    (the caller closes it); the route's ``calls`` record every request."""
    router = respx.MockRouter(base_url=f"{URL}/rest/v1", assert_all_called=False)
    route = router.post(path__regex=r"^/rpc/(?P<fn>[A-Za-z0-9_]+)$", name="rpc").mock(side_effect=handler)
    client = httpx.Client(
        transport=httpx.MockTransport(router.handler), timeout=httpx.Timeout(15.0, connect=5.0)
    )
    return client, route
