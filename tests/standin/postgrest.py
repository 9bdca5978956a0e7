"""A stand-in for Supabase's REST API (its gateway + PostgREST) on a real PostgreSQL, as strict
as the real service in everything the remote stores rely on.

It is an HTTP/1.1 server on 127.0.0.1, port 0, in a thread of the test process; the production
``SupabaseStore`` talks to it through its production httpx client over a real socket. Each
behaviour below is pinned to PostgREST's source (``PostgREST/postgrest`` at commit 4834678,
paths under ``src/library/PostgREST/``) or to Supabase's documentation:

* Gateway: ``apikey`` must be the project's anon or service-role key, else 401
  ``{"message": "Invalid API key"}`` / ``"No API key found in request"`` (Supabase's API gateway;
  as reported in nuxt-modules/supabase#195 and mmvergara/supadart#185).
* Auth: ``Authorization: Bearer <JWT>`` is verified (HS256, the stand-in's secret; tokens from
  ``tests/standin/jwt.py``), the role is the ``role`` claim, no token means ``anon``
  (Auth.hs ~114). JWT errors are 401 PGRST301/PGRST303 with ``WWW-Authenticate`` (Error.hs
  639-689).
* One transaction per request on a pooled connection logged in as ``authenticator`` (no global
  lock: requests run concurrently, as behind PostgREST's pool). READ ONLY for a STABLE or
  IMMUTABLE function (Plan.hs 224-228). Per request, before the call: ``search_path``, the
  impersonated role's own settings (``statement_timeout``: anon 3 s, authenticated 8 s;
  service_role keeps authenticator's 8 s), ``role``, ``request.jwt.claims`` with ``role`` added,
  ``request.method``, ``request.path``, ``request.headers`` (Query/PreQuery.hs 36-59).
* Function lookup as ``findProc`` (Plan.hs 258-307): by name and by the JSON body's keys (all
  required parameters, any optional ones); none → PGRST202 (404), several → PGRST203 (300).
* The call: body decoded with ``json_to_record`` into the named parameters, the function in a
  LATERAL (Query/QueryBuilder.hs 170-192, Query/SqlFragment.hs 306-344); the result LIMITed to
  ``max_rows`` (Plan.hs 524-530: max-rows applies to RPC results; Supabase's default is 1,000)
  and rendered as PostgREST does (Query/SqlFragment.hs 196-208): a set → JSON array, a single
  composite → a bare object, a scalar → a bare value; void → 204 (Response.hs 188).
* Errors: ``{"code", "message", "details", "hint"}`` with the SQLSTATE → HTTP status map of
  Error.hs 545-597 (``http_status`` below, pinned by tests/unit/test_remote_standin.py),
  ``Proxy-Status: PostgREST; error=<code>`` and, for 401, ``WWW-Authenticate: Bearer``
  (Error.hs 86-88, 467-470).

``Faults`` (tests/standin/faults.py) can break any request: reset, timeout, an answer lost after
the commit, or a gateway timeout while the call runs on (a retry then overlaps it).
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg import sql

from tests.pg import CLOCK_SETTING
from tests.standin import jwt
from tests.standin.faults import Fault, Faults
from tests.standin.realtime import RealtimeStandin

__all__ = ["DEFAULT_MAX_ROWS", "Call", "PostgrestStandin", "Routine", "http_status"]

DEFAULT_MAX_ROWS = 1000
"""Supabase's ``db-max-rows`` (API settings, "Max rows")."""
_API_ROLES = ("anon", "authenticated", "service_role")


# -- PostgREST's SQLSTATE -> HTTP status map (Error.hs 545-597 at 4834678) ----------------
def http_status(code: str, message: str = "", *, anon: bool = False) -> int:
    """The HTTP status PostgREST answers for a database error ``code`` (SQLSTATE) raised by a
    request of the anon role (``anon``) or another role."""
    exact = {
        "23503": 409,  # foreign_key_violation
        "23505": 409,  # unique_violation
        "25006": 405,  # read_only_sql_transaction
        "53400": 500,  # config limit exceeded (before the 53 class)
        "57P01": 503,  # terminating connection due to administrator command (before 57)
        "P0001": 400,  # default code for "raise"
        "42P01": 404,  # undefined table
        "42P17": 500,  # infinite recursion
    }
    if code in exact:
        return exact[code]
    if code == "21000":  # cardinality_violation; pg-safeupdate's message is a client error
        return 400 if message.endswith("requires a WHERE clause") else 500
    if code == "22023":  # invalid_parameter_value; a JWT role that does not exist is 401
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
    if code == "42883":  # undefined function
        return 406 if message.startswith("function xmlagg(") else 404
    if code == "42501":  # insufficient privilege
        return 401 if anon else 403
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    by_class = {
        "08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500, "38": 500,
        "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500, "57": 500, "58": 500,
        "F0": 500, "HV": 500, "P0": 500, "XX": 500,
    }  # fmt: skip
    return by_class.get(code[:2], 400)


# -- the schema cache ---------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    name: str
    type: str
    required: bool


@dataclass(frozen=True)
class Routine:
    """What PostgREST's schema cache knows of a function (SchemaCache.hs 397-467)."""

    name: str
    params: tuple[Param, ...]
    volatility: str  # 'v', 's', 'i'
    returns_set: bool
    returns_composite: bool
    returns_void: bool

    def matches(self, keys: frozenset[str]) -> bool:
        """Plan.hs 291-307: all required parameters given, the rest optional ones."""
        if not self.params:
            return not keys
        required = {p.name for p in self.params if p.required}
        optional = {p.name for p in self.params if not p.required}
        return required <= keys and keys - required <= optional

    def signature(self) -> str:
        return f"public.{self.name}({', '.join(f'{p.name} => {p.type}' for p in self.params)})"


_ROUTINES_SQL = """
select p.proname, p.provolatile, p.proretset, p.pronargs, p.pronargdefaults,
       coalesce(p.proallargtypes, p.proargtypes::oid[]) as types, p.proargnames, p.proargmodes,
       (t.typtype = 'c' or coalesce(p.proargmodes::text[] && '{t,b,o}', false)) as composite,
       p.prorettype = 'void'::regtype as void
from pg_proc p join pg_type t on t.oid = p.prorettype
where p.pronamespace = 'public'::regnamespace and p.prokind = 'f' and p.prorettype <> 'trigger'::regtype
"""


def _load_routines(conn: psycopg.Connection[Any]) -> dict[str, list[Routine]]:
    found: dict[str, list[Routine]] = {}
    type_names: dict[int, str] = {}
    for name, volatility, retset, nargs, ndefaults, types, names, modes, composite, void in conn.execute(
        _ROUTINES_SQL
    ).fetchall():
        params: list[Param] = []
        inputs = 0
        for i, oid in enumerate(types or []):
            mode = modes[i] if modes else "i"
            if mode not in ("i", "b", "v"):
                continue
            inputs += 1
            if oid not in type_names:
                type_names[oid] = conn.execute("select format_type(%s, null)", (oid,)).fetchone()[0]  # type: ignore[index]
            arg = (names[i] if names and i < len(names) else "") or ""
            params.append(Param(arg, type_names[oid], inputs <= nargs - ndefaults))
        if any(not p.name for p in params):
            continue  # PostgREST calls such functions only with a single unnamed json/text body
        found.setdefault(name, []).append(
            Routine(name, tuple(params), volatility, retset, bool(composite), bool(void))
        )
    return found


def _role_settings(conn: psycopg.Connection[Any]) -> dict[str, dict[str, str]]:
    """Each API role's own settings (``alter role … set``), as PostgREST reads them."""
    rows = conn.execute(
        "select r.rolname, s.setconfig from pg_db_role_setting s join pg_roles r on r.oid = s.setrole"
        " where s.setdatabase in (0, (select oid from pg_database where datname = current_database()))"
        " and r.rolname = any(%s) order by s.setdatabase",
        (list(_API_ROLES),),
    ).fetchall()
    settings: dict[str, dict[str, str]] = {}
    for role, config in rows:  # database-specific settings come last and win
        for item in config or []:
            key, _, value = item.partition("=")
            settings.setdefault(role, {})[key] = value
    return settings


# -- the server ---------------------------------------------------------------------------
class _Refused(Exception):
    """An answer decided before the database was asked."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = body
        self.headers = headers or {}


def _pgrst_error(status: int, code: str, message: str, details: Any = None, hint: Any = None) -> _Refused:
    headers = {"Proxy-Status": f"PostgREST; error={code}"}
    return _Refused(status, {"code": code, "details": details, "hint": hint, "message": message}, headers)


@dataclass
class Call:
    """One request being served: what the fault plan and the tests can see of it."""

    fn: str
    role: str
    n: int
    body: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    done: threading.Event = field(default_factory=threading.Event)


class PostgrestStandin:
    """The REST API of a Supabase project whose database is ``dsn`` (a database of the tests'
    server with Supabase's roles, tests/pg.py). ``url`` is the project URL to give the client;
    ``service_key`` / ``anon_key`` are its API keys; ``user_token(sub)`` signs a user's access
    token. ``clock`` (epoch seconds) drives the store clock of every call; ``max_rows`` is
    ``db-max-rows``; ``role_settings`` overrides a role's settings (``{"service_role":
    {"statement_timeout": "200ms"}}``); ``pool_size`` is PostgREST's ``db-pool``."""

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], float] | None = None,
        max_rows: int | None = DEFAULT_MAX_ROWS,
        role_settings: dict[str, dict[str, str]] | None = None,
        pool_size: int = 10,
        acquisition_timeout_s: float = 10.0,
        realtime: bool = False,
    ) -> None:
        self.dsn = dsn
        self.clock = clock
        self.max_rows = max_rows
        self.faults = Faults()
        self._secret = secrets.token_urlsafe(32)
        issued = int(time.time())
        self.anon_key = jwt.sign(
            {"iss": "supabase", "role": "anon", "iat": issued, "exp": issued + 10**8}, self._secret
        )
        self.service_key = jwt.sign(
            {"iss": "supabase", "role": "service_role", "iat": issued, "exp": issued + 10**8}, self._secret
        )
        self._overrides = role_settings or {}
        self._pool: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._pool_size = pool_size
        self._opened = 0
        self._pool_lock = threading.Lock()
        self._acquisition_timeout_s = acquisition_timeout_s
        self._calls: list[Call] = []
        self._calls_lock = threading.Lock()
        self._stopping = threading.Event()
        with psycopg.connect(self._authenticator_dsn(), autocommit=True) as conn:
            self._routines = _load_routines(conn)
            self._role_settings = _role_settings(conn)
        self._realtime_wanted = realtime
        self._realtime: RealtimeStandin | None = None
        self._realtime_lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="postgrest-standin", daemon=True
        )
        self._thread.start()

    # -- public face ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def realtime(self) -> RealtimeStandin | None:
        """The Realtime server (``realtime=True``), started on first use: most tests never
        open a socket, and its threads and LISTEN connection cost a little each."""
        if not self._realtime_wanted or self._stopping.is_set():
            return self._realtime
        with self._realtime_lock:
            if self._realtime is None:
                self._realtime = RealtimeStandin(
                    self.dsn, (self.anon_key, self.service_key), lambda token: jwt.verify(token, self._secret)
                )
            return self._realtime

    @property
    def calls(self) -> list[Call]:
        """Every request that reached the RPC endpoint, in arrival order."""
        with self._calls_lock:
            return list(self._calls)

    def count(self, fn: str | None = None) -> int:
        return sum(1 for c in self.calls if fn is None or c.fn == fn)

    def user_token(self, sub: str, *, expires_in_s: float = 3600) -> str:
        """A signed-in user's access token, as Supabase Auth issues it."""
        now = int(time.time())
        claims = {"aud": "authenticated", "exp": now + int(expires_in_s), "iat": now, "sub": sub,
                  "role": "authenticated", "iss": "supabase-standin"}  # fmt: skip
        return jwt.sign(claims, self._secret)

    def sign(self, claims: dict[str, Any]) -> str:
        """Any token signed with the project's JWT secret (for tests of odd claims)."""
        return jwt.sign(claims, self._secret)

    def reload_schema(self) -> None:
        """``NOTIFY pgrst, 'reload schema'``: read the functions and role settings again."""
        with psycopg.connect(self._authenticator_dsn(), autocommit=True) as conn:
            self._routines = _load_routines(conn)
            self._role_settings = _role_settings(conn)

    def close(self) -> None:
        """Stop serving and close every pooled connection. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.faults.release_all()
        if self._realtime is not None:
            self._realtime.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                break
            conn.close()

    def __enter__(self) -> PostgrestStandin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pool ------------------------------------------------------------------------
    def _authenticator_dsn(self) -> str:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        parts = conninfo_to_dict(self.dsn)
        parts["user"] = "authenticator"
        parts["application_name"] = "postgrest-standin"
        return make_conninfo(**parts)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            with self._pool_lock:
                grow = self._opened < self._pool_size
                if grow:
                    self._opened += 1
            if grow:
                try:
                    conn = psycopg.connect(self._authenticator_dsn())
                except psycopg.OperationalError as exc:
                    with self._pool_lock:
                        self._opened -= 1
                    raise _pgrst_error(503, "PGRST000", "Database connection error", str(exc)) from None
            else:
                try:
                    conn = self._pool.get(timeout=self._acquisition_timeout_s)
                except queue.Empty:
                    raise _pgrst_error(
                        504, "PGRST003", "Timed out acquiring connection from connection pool."
                    ) from None
        try:
            yield conn
        finally:
            if conn.broken or conn.closed or self._stopping.is_set():
                conn.close()
                with self._pool_lock:
                    self._opened -= 1
            else:
                self._pool.put(conn)

    # -- one request ---------------------------------------------------------------------
    def authenticate(self, headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
        """The role and claims of a request, or ``_Refused``."""
        key = headers.get("apikey")
        if not key:
            raise _Refused(401, {"message": "No API key found in request",
                                 "hint": "No apikey request header or url param was found."})  # fmt: skip
        if key not in (self.anon_key, self.service_key):
            hint = "Double check your Supabase `anon` or `service_role` API key."
            raise _Refused(401, {"message": "Invalid API key", "hint": hint})
        authorization = headers.get("authorization")
        if authorization is None:
            return "anon", {}
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise _pgrst_error(401, "PGRST301", "Unsupported token type")
        try:
            claims = jwt.verify(token.strip(), self._secret)
        except jwt.JwtError as exc:
            refused = _pgrst_error(401, exc.code, exc.message)
            refused.headers["WWW-Authenticate"] = (
                f'Bearer error="invalid_token", error_description={json.dumps(exc.message)}'
            )
            raise refused from None
        role = claims.get("role")
        return (role if isinstance(role, str) and role else "anon"), claims

    def routine(self, fn: str, keys: frozenset[str]) -> Routine:
        """findProc (Plan.hs 258-267)."""
        candidates = [r for r in self._routines.get(fn, []) if r.matches(keys)]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise _pgrst_error(
                300,
                "PGRST203",
                "Could not choose the best candidate function between: "
                + ", ".join(r.signature() for r in candidates),
                hint="Try renaming the parameters or the function itself in the database so "
                "function overloading can be resolved",
            )
        args = ", ".join(sorted(keys))
        raise _pgrst_error(
            404,
            "PGRST202",
            f"Could not find the function public.{fn}({args}) in the schema cache",
            f"Searched for the function public.{fn} with parameters {args} or with a single unnamed "
            "json/jsonb parameter, but no matches were found in the schema cache.",
        )

    def _query(self, routine: Routine, body: dict[str, Any]) -> tuple[sql.Composable, tuple[Any, ...]]:
        given = [p for p in routine.params if p.name in body]
        scalar = not routine.returns_composite and not routine.returns_void
        args = sql.SQL(", ").join(
            sql.SQL("{0} := pgrst_body.{0}").format(sql.Identifier(p.name)) for p in given
        )
        function = sql.SQL("public.{}").format(sql.Identifier(routine.name))
        if scalar or routine.returns_void:
            call = sql.SQL("(select {}({}) pgrst_scalar) pgrst_call").format(function, args)
            columns = sql.SQL("pgrst_call.pgrst_scalar")
        else:
            call = sql.SQL("{}({}) pgrst_call").format(function, args)
            columns = sql.SQL("pgrst_call.*")
        if given:
            typed = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL(p.type)) for p in given
            )
            source = sql.SQL(
                "select {} from (select %s::json as json_data) pgrst_payload,"
                " lateral (select * from json_to_record(pgrst_payload.json_data) as _({}) limit 1)"
                " pgrst_body,"
                " lateral {}"
            ).format(columns, typed, call)
            params: tuple[Any, ...] = (json.dumps(body),)
        else:
            source = sql.SQL("select {} from {}").format(columns, call)
            params = ()
        limit = (
            sql.SQL("") if self.max_rows is None else sql.SQL(" limit {}").format(sql.Literal(self.max_rows))
        )
        if routine.returns_set and not scalar:
            render = "coalesce(json_agg(_postgrest_t), '[]')"
        elif routine.returns_set:
            render = "coalesce(json_agg(_postgrest_t.pgrst_scalar), '[]')"
        elif scalar or routine.returns_void:
            render = "coalesce(json_agg(_postgrest_t.pgrst_scalar)->0, 'null')"
        else:
            render = "coalesce(json_agg(_postgrest_t)->0, 'null')"
        query = sql.SQL(
            "with pgrst_source as ({}) select {}::text, count(*) from"
            " (select pgrst_source.* from pgrst_source{}) _postgrest_t"
        ).format(source, sql.SQL(render), limit)  # type: ignore[arg-type]
        return query, params

    def _settings(
        self, role: str, claims: dict[str, Any], fn: str, headers: dict[str, str]
    ) -> list[tuple[str, str]]:
        own = {**self._role_settings.get(role, {}), **self._overrides.get(role, {})}
        settings = [("search_path", '"public"')]
        settings += sorted(own.items())
        settings += [
            ("role", role),
            ("request.jwt.claims", json.dumps({**claims, "role": role}, separators=(",", ":"))),
            ("request.method", "POST"),
            ("request.path", f"/rpc/{fn}"),
            (
                "request.headers",
                json.dumps({k: v for k, v in headers.items() if k not in ("apikey", "authorization")}),
            ),
        ]
        if self.clock is not None:
            settings.append((CLOCK_SETTING, repr(self.clock())))
        return settings

    def execute(
        self,
        call: Call,
        routine: Routine,
        body: dict[str, Any],
        claims: dict[str, Any],
        headers: dict[str, str],
        *,
        hold: Callable[[], None] | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """Run one call in its own transaction; (status, body, headers). ``hold`` runs after
        the call and before the commit (a fault keeping the transaction open)."""
        query, params = self._query(routine, body)
        read_only = routine.volatility in ("s", "i")
        with self._connection() as conn:
            call.pid = conn.info.backend_pid
            try:
                with conn.transaction():
                    if read_only:
                        conn.execute("set transaction read only")
                    settings = self._settings(call.role, claims, call.fn, headers)
                    names = [name for name, _ in settings]
                    values = [value for _, value in settings]
                    conn.execute(
                        sql.SQL("select {}").format(
                            sql.SQL(", ").join(
                                sql.SQL("set_config({}, %s, true)").format(sql.Literal(n)) for n in names
                            )
                        ),
                        values,
                    )
                    row = conn.execute(query, params).fetchone()
                    if hold is not None:
                        hold()
            except psycopg.Error as exc:
                code = exc.sqlstate or "XX000"
                diag = exc.diag
                message = diag.message_primary or str(exc)
                status = http_status(code, message, anon=call.role == "anon")
                out = {
                    "code": code,
                    "details": diag.message_detail,
                    "hint": diag.message_hint,
                    "message": message,
                }
                extra = {"Proxy-Status": f"PostgREST; error={code}"}
                if status == 401:
                    extra["WWW-Authenticate"] = "Bearer"
                return status, json.dumps(out).encode(), extra
        assert row is not None
        text, n = row
        if routine.returns_void:
            return 204, b"", {}
        extra = {"Content-Range": f"0-{n - 1}/*" if n else "*/*"}
        return 200, text.encode(), extra

    def begin(self, fn: str, role: str, body: dict[str, Any]) -> Call:
        with self._calls_lock:
            call = Call(fn, role, len(self._calls) + 1, body)
            self._calls.append(call)
        return call


def _handler(standin: PostgrestStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the production client uses it
        server_version = "postgrest-standin"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the tests' output stays readable; requests are in standin.calls

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            if body or status != 204:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def _reset(self) -> None:
            """Drop the connection with a TCP reset (SO_LINGER 0): no answer at all."""
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.close()

        def do_GET(self) -> None:
            realtime = standin.realtime if self.path.startswith("/realtime/v1/") else None
            if realtime is not None:
                self._proxy(realtime.port)
                return
            self._read_and_refuse()

        def _proxy(self, port: int) -> None:
            """Pass the connection through to Realtime, as Supabase's gateway does: the
            request as it came, then bytes both ways until either side closes."""
            head = "\r\n".join([self.requestline, *(f"{k}: {v}" for k, v in self.headers.items())])
            self.close_connection = True
            with socket.create_connection(("127.0.0.1", port)) as upstream:
                upstream.sendall(head.encode("latin-1") + b"\r\n\r\n")
                client = self.connection  # (a websocket client sends nothing before the 101)
                while not standin._stopping.is_set():
                    ready, _, _ = select.select([client, upstream], [], [], 0.5)
                    for source in ready:
                        other = upstream if source is client else client
                        try:
                            data = source.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            return
                        other.sendall(data)

        def do_PATCH(self) -> None:
            self._read_and_refuse()

        def _read_and_refuse(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            message = "Invalid path specified in request URL"
            body = {"code": "PGRST125", "details": None, "hint": None, "message": message}
            self._send(404, json.dumps(body).encode(), {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = self.path.split("?", 1)[0]
            if not path.startswith("/rest/v1/rpc/"):
                self._read_and_refuse()
                return
            fn = path.removeprefix("/rest/v1/rpc/")
            fault = standin.faults.take(fn)
            if fault is Fault.OUTAGE or fault is Fault.RESET:
                self._reset()
                return
            if fault is Fault.TIMEOUT:
                standin.faults.wait_out(standin._stopping)
                self._reset()
                return
            if fault is Fault.GATEWAY_503:
                self._send(503, b"<html><body>503 Service Unavailable</body></html>",
                           {"Content-Type": "text/html", "Retry-After": "0"})  # fmt: skip
                return
            try:
                role, claims = standin.authenticate(headers)
                if headers.get("content-profile", "public") != "public":
                    raise _pgrst_error(406, "PGRST106", "Invalid schema: " + headers["content-profile"],
                                       hint="Only the following schemas are exposed: public")  # fmt: skip
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    raise _pgrst_error(400, "PGRST102", "Empty or invalid json") from None
                if not isinstance(body, dict):
                    raise _pgrst_error(400, "PGRST102", "Empty or invalid json")
                routine = standin.routine(fn, frozenset(body))
            except _Refused as refused:
                self._send(refused.status, json.dumps(refused.body).encode(), refused.headers)
                return
            call = standin.begin(fn, role, body)
            try:
                if fault is Fault.OVERLAP:
                    # The gateway gives up (504) at once while the call runs on with its
                    # transaction held open until a retry of it is in the database.
                    def run_on() -> None:
                        try:
                            standin.execute(
                                call, routine, body, claims, headers,
                                hold=lambda: standin.faults.hold_for_retry(standin, call),
                            )  # fmt: skip
                        finally:
                            call.done.set()

                    worker = threading.Thread(target=run_on, daemon=True)
                    worker.start()
                    standin.faults.running.append(worker)
                    self._send(
                        504, b"<html><body>504 Gateway Time-out</body></html>", {"Content-Type": "text/html"}
                    )
                    return
                try:
                    status, out, extra = standin.execute(call, routine, body, claims, headers)
                except _Refused as refused:
                    self._send(refused.status, json.dumps(refused.body).encode(), refused.headers)
                    return
                if fault is Fault.LOST:
                    self._reset()  # committed, and the answer never reaches the client
                    return
                self._send(status, out, extra)
            finally:
                if fault is not Fault.OVERLAP:
                    call.done.set()

    return Handler
