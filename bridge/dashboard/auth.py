"""Who may talk to the dashboard: the rule as a pure decision, and the ASGI middleware.

The server listens on 127.0.0.1 only, but that alone protects nothing from the browser the
user is sitting at: any web page may send requests to ``http://127.0.0.1:PORT``, and a page
on a name the attacker controls may re-point that name at 127.0.0.1 (DNS rebinding) and
read the answers as same-origin. So every request must pass, in order:

1. **Host**: the ``Host`` header is ``127.0.0.1:PORT`` or ``localhost:PORT``. A rebinding page
   sends its own name there, so this alone defeats DNS rebinding.
2. **Token**: the random token the command printed, as ``?token=`` (once: the page then gets
   it as a cookie and is redirected to the URL without it), as the ``HttpOnly; SameSite=Strict``
   cookie, or as ``Authorization: Bearer`` (scripts, a Prometheus scrape). Compared in
   constant time. Without it: 401.
3. **Origin**: a browser names the page that sent a request in ``Origin``; when present it
   must be this server, whatever the method. Anything but GET/HEAD (the actions) must carry
   it when authenticated only by the cookie (no Origin, no action), so a cross-site form can
   never act, even if a browser ignored ``SameSite``; a Bearer request (not a browser) may
   omit it. 403 otherwise.

The cookie's name carries the port: cookies are not port-scoped, and two dashboards on one
machine must not overwrite each other's. Every answer carries headers that keep the page from
being framed, sniffed, cached or leaking its URL in a Referer.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SECURITY_HEADERS", "Auth", "Decision", "Guard", "decide"]

_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
_PAGES: Final = frozenset({"/"})
"""Paths a person opens in the browser: a token in their URL becomes the cookie (redirect)."""

SECURITY_HEADERS: Final = {
    # Scripts and styles only from this server, no inline script: a job's payload or log that
    # slipped into the DOM unescaped still could not run.
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class Auth:
    """The server's secret and address: what ``decide`` checks requests against."""

    token: str
    port: int

    @property
    def cookie_name(self) -> str:
        return f"agent_supervisor_dashboard_{self.port}"

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset({f"127.0.0.1:{self.port}", f"localhost:{self.port}"})

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{host}" for host in self.hosts)

    def matches(self, candidate: str | None) -> bool:
        """``candidate`` is the token (constant-time)."""
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a request: let it through, refuse it (``status``), or redirect a page
    opened with ``?token=`` to ``redirect`` while setting the cookie."""

    status: int = 0
    """0: allowed; else the HTTP status of the refusal."""
    reason: str = ""
    redirect: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 0 and self.redirect is None


def decide(
    auth: Auth,
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
) -> Decision:
    """The rule of the module docstring. ``headers`` by lower-case name."""
    if headers.get("host", "").lower() not in auth.hosts:
        return Decision(403, "unexpected Host header: open the dashboard at the URL it printed")
    bearer = _bearer(headers.get("authorization"))
    in_query = dict(parse_qsl(query, keep_blank_values=True)).get("token")
    by_bearer = auth.matches(bearer)
    if not (by_bearer or auth.matches(cookies.get(auth.cookie_name)) or auth.matches(in_query)):
        return Decision(401, "token required: open the URL that `agent-supervisor dashboard` printed")
    origin = headers.get("origin")
    if origin is not None and origin.lower() not in auth.origins:
        return Decision(403, "cross-origin request refused")
    if method not in _SAFE_METHODS:
        if origin is None and not by_bearer:
            return Decision(403, "Origin header required")
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return Decision(403, "cross-site request refused")
    if in_query is not None and method in _SAFE_METHODS and path in _PAGES:
        rest = urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"])
        return Decision(redirect=path + (f"?{rest}" if rest else ""))
    return Decision()


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


class Guard:
    """ASGI middleware: ``decide`` on every HTTP request, security headers on every answer.
    Anything but HTTP (websockets: the dashboard has none) is refused; lifespan passes."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope)
        decision = decide(
            self.auth,
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=request.headers,
            cookies=request.cookies,
        )
        if decision.allowed:
            await self.app(scope, receive, _with_headers(send))
            return
        response: Response
        if decision.redirect is not None:
            response = RedirectResponse(decision.redirect, status_code=303)
            response.set_cookie(
                self.auth.cookie_name, self.auth.token, httponly=True, samesite="strict", path="/"
            )
        else:
            response = PlainTextResponse(decision.reason + "\n", status_code=decision.status)
        await response(scope, receive, _with_headers(send))


def _with_headers(send: Send) -> Send:
    extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            headers = list(message.get("headers", [])) + [(k, v) for k, v in extra if k not in names]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
