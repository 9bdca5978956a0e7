"""The Supabase job store: the SQL functions of ``bridge/sql/`` called as ``.rpc()`` through
PostgREST by supabase-py. Selected by ``AGENT_SUPERVISOR_STORE=supabase`` with
``AGENT_SUPERVISOR_SUPABASE_URL`` / ``SUPABASE_URL`` and ``AGENT_SUPERVISOR_SUPABASE_KEY`` /
``SUPABASE_SERVICE_ROLE_KEY`` (the secret key: RLS is on and only service_role may call).

One supabase client per store, built once, on an httpx client of our own:

* explicit timeouts (connect 5 s, read 15 s): httpx's default of the supabase client is 120 s,
  which would hold the supervisor's loop for two minutes on a dead connection;
* HTTP/1.1 with keep-alive expiry (20 s) below the idle timeouts of Supabase's proxies:
  long-lived idle HTTP/2 connections die with "Server disconnected" (supabase-py #1064);
* postgrest-py's own retry off (``postgrest_client_retry=False``): it retries GET/HEAD only,
  with hidden sleeps; tenacity in bridge/stores/policy.py is the one retry layer, for every call.

The key is a ``SecretStr``: it is unwrapped only to build the client, and never appears in a
repr, a log line or an error message. In per-user mode (bridge/sql/per_user.sql) the key is the
publishable one and ``access_token`` a signed-in user's token. Before its first call the store
checks the database's schema version once (``bridge.sqlcli.schema_mismatch``).

``watch()`` pushes change hints through Supabase Realtime (``RealtimeWatch``): Broadcast from
Database on the private topic ``agent_supervisor`` (or ``agent_supervisor:<user id>``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from bridge.sqlcli import schema_mismatch
from bridge.stores.policy import RetryPolicy, ServerError
from bridge.stores.remote import RemoteStore
from supervisor.errors import ConfigError, StoreError
from supervisor.lifecycle import DEFAULT_BACKOFF_CAP_S

if TYPE_CHECKING:
    from supabase import Client

__all__ = ["RealtimeWatch", "SupabaseStore", "default_http_client"]

log = logging.getLogger("agent_supervisor.store")

CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 15.0
KEEPALIVE_EXPIRY_S: Final = 20.0
_MAX_RETRY_AFTER_S: Final = 60.0
_JOIN_WAIT_S: Final = 10.0
"""How long ``watch`` waits for the first join before it returns a watch that is not live."""


def default_http_client(read_timeout_s: float = READ_TIMEOUT_S) -> httpx.Client:
    """The httpx client the store uses unless one is injected (see the module docstring)."""
    return httpx.Client(
        timeout=httpx.Timeout(read_timeout_s, connect=CONNECT_TIMEOUT_S),
        limits=httpx.Limits(
            max_connections=10, max_keepalive_connections=4, keepalive_expiry=KEEPALIVE_EXPIRY_S
        ),
        http2=False,
        follow_redirects=False,  # a redirect would resend the key to wherever it points
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), _MAX_RETRY_AFTER_S))


class SupabaseStore(RemoteStore):
    """A ``JobStore`` on a Supabase project that has the SQL of ``agent-supervisor db schema``.

    ``http_client`` replaces the default client (tests route it to a fake server; the store
    then leaves closing it to the caller). ``retry`` is the policy for transient failures.
    """

    def __init__(
        self,
        url: str,
        key: SecretStr,
        *,
        http_client: httpx.Client | None = None,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        retry: RetryPolicy | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
        access_token: SecretStr | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError("supabase_url must be the project URL, e.g. https://<ref>.supabase.co")
        if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
            raise ConfigError("supabase_url must use https (the secret key would travel in clear)")
        if not isinstance(key, SecretStr) or not key.get_secret_value().strip():
            raise ConfigError(
                "supabase_key is missing: set AGENT_SUPERVISOR_SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY"
            )
        super().__init__(name=f"Supabase store {parts.hostname}", backoff_cap_s=backoff_cap_s, retry=retry)
        self._url = url.rstrip("/")
        self._key = key
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else default_http_client(read_timeout_s)
        self._access_token = access_token
        # postgrest-py turns an error answer into APIError without its HTTP status or headers;
        # a response hook keeps them (per thread: each call runs in its caller's thread).
        self._last = threading.local()
        self._http.event_hooks["response"] = [*self._http.event_hooks.get("response", []), self._remember]
        self._client = self._build_client()
        self._closed = False
        self._schema_checked = False

    def _build_client(self) -> Client:
        from supabase import ClientOptions, create_client
        from supabase.lib.client_options import DEFAULT_HEADERS, SyncClientOptions

        # A signed-in user's access token (per-user mode, bridge/sql/README.md) goes where
        # supabase-py puts a session's token: the Authorization header; the key stays the apikey.
        headers = dict(DEFAULT_HEADERS)
        if self._access_token is not None:
            headers["Authorization"] = f"Bearer {self._access_token.get_secret_value()}"
        options: SyncClientOptions = ClientOptions(
            headers=headers,
            httpx_client=self._http,
            postgrest_client_retry=False,
            auto_refresh_token=False,  # a service key has no session to refresh
            persist_session=False,
        )
        try:
            return create_client(self._url, self._key.get_secret_value(), options)
        except Exception as exc:  # noqa: BLE001 - SupabaseException and friends; the key stays out
            raise ConfigError(
                f"cannot create the Supabase client for {self._name}: {type(exc).__name__}"
            ) from None

    def __repr__(self) -> str:
        return f"SupabaseStore(url={self._url!r})"

    def _secrets(self) -> Iterable[str]:
        token = () if self._access_token is None else (self._access_token.get_secret_value(),)
        return (self._key.get_secret_value(), *token)

    def _remember(self, response: httpx.Response) -> None:
        self._last.status = response.status_code
        self._last.retry_after = _retry_after(response.headers.get("retry-after"))

    def _send(self, fn: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self._closed:
            raise StoreError(f"{self._name} is closed")
        if not self._schema_checked:
            # Once per store, before its first call: a database whose SQL is older or newer
            # than this package is said as such, not as some function's "not found" later.
            rows = self._rpc("jobs_schema_version", {})
            version = rows[0].get("version") if rows and isinstance(rows[0], dict) else None
            mismatch = schema_mismatch(self._name, version if isinstance(version, int) else None)
            if mismatch:
                raise StoreError(mismatch)
            self._schema_checked = True
        return self._rpc(fn, params)

    def _rpc(self, fn: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        from postgrest import APIError

        self._last.status = self._last.retry_after = None
        try:
            answer = self._client.rpc(fn, params).execute()
        except APIError as exc:
            raise ServerError(
                exc.code,
                exc.message or "",
                status=getattr(self._last, "status", None),
                retry_after=getattr(self._last, "retry_after", None),
            ) from exc
        rows = answer.data
        if not isinstance(rows, list):
            raise StoreError(f"{self._name}: {fn} answered {type(rows).__name__}, not rows")
        return rows

    def watch(self, wake: Callable[[float | None], None]) -> RealtimeWatch:
        """Push wake-ups (protocol v2) through Supabase Realtime: Broadcast from Database
        (functions.sql sends every change a claimer cares about with ``realtime.send`` to the
        private topic ``agent_supervisor``, or ``agent_supervisor:<user id>`` for a user's
        session), received by supabase-py's async realtime client on an asyncio loop in a
        thread of its own. ``live`` is False while the socket is down."""
        if self._closed:
            raise StoreError(f"{self._name} is closed")
        token = None if self._access_token is None else self._access_token.get_secret_value()
        sub = _claim(token, "sub") if token else None
        topic = "agent_supervisor" if sub is None else f"agent_supervisor:{sub}"
        watch = RealtimeWatch(
            f"{self._url}/realtime/v1", self._key, self._access_token, topic, wake, name=self._name
        )
        watch.wait_live(_JOIN_WAIT_S)
        return watch

    def close(self) -> None:
        """Close the HTTP connections (unless the client was injected). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_http:
            self._http.close()


def _claim(token: str, name: str) -> Any:
    """A claim of a JWT, read without verifying it (the server verifies; this only picks the
    user's Realtime topic)."""
    try:
        body = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))).get(name)
    except (IndexError, ValueError, AttributeError):
        return None


class RealtimeWatch:
    """A Realtime channel in a thread of its own (``SupabaseStore.watch``).

    supabase-py's sync client has no realtime (``realtime/_sync/client.py`` raises
    NotImplementedError), so the thread runs an asyncio loop with realtime-py's
    ``AsyncRealtimeClient``: it joins the private topic, calls ``wake(due_at)`` for every
    ``wake`` broadcast, and ``wake(None)`` once per rejoin (what happened while away is
    unknown). The client's own reconnects are off: when the socket or the channel fails, this
    loop makes a new client after a backoff (0.5 s doubling to 30 s), and ``live`` says False
    meanwhile, so that the supervisor polls. The key and token never appear in a log line:
    realtime-py logs its URL with the apikey redacted, and errors are logged by type only.
    """

    def __init__(
        self,
        url: str,
        key: SecretStr,
        access_token: SecretStr | None,
        topic: str,
        wake: Callable[[float | None], None],
        *,
        name: str,
    ) -> None:
        self._url = url
        self._key = key
        self._access_token = access_token
        self._topic = topic
        self._wake = wake
        self._name = name
        self._live = False
        self._closing = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._tried = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-supervisor-realtime", daemon=True)
        self._thread.start()
        self._started.wait(10)

    @property
    def live(self) -> bool:
        """The channel is joined right now."""
        return self._live

    def wait_live(self, timeout_s: float) -> bool:
        """Wait until the first join succeeded or failed (or ``timeout_s``); whether it is live."""
        return self._tried.wait(timeout_s) and self._live

    def close(self) -> None:
        """Leave the channel, close the socket, stop the loop and join the thread. Idempotent."""
        self._closing.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=15)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        if self._closing.is_set():
            return
        delay = 0.5
        first = True
        while not self._stop.is_set():
            if await self._session(first):
                delay = 0.5
            first = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30.0)

    async def _session(self, first: bool) -> bool:
        """One client, one join, until the channel fails or close(); True if it was joined."""
        from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

        assert self._stop is not None
        changed = asyncio.Event()
        states: list[RealtimeSubscribeStates] = []

        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            states.append(state)
            changed.set()

        def on_wake(message: Any) -> None:
            payload = message.get("payload") if isinstance(message, dict) else None
            due = payload.get("due_at") if isinstance(payload, dict) else None
            self._call(float(due) if isinstance(due, int | float) else None)

        client = AsyncRealtimeClient(
            self._url, token=self._key.get_secret_value(), auto_reconnect=False, max_retries=1, timeout=10
        )
        if self._access_token is not None:  # a user's session: its token authorises the join
            client.access_token = self._access_token.get_secret_value()
        joined = False
        try:
            channel = client.channel(
                self._topic,
                {
                    "config": {
                        "broadcast": {"ack": False, "self": False},
                        "presence": {"key": "", "enabled": False},
                        "private": True,
                    }
                },
            )
            channel.on_broadcast("wake", on_wake)
            await channel.subscribe(on_state)
            if states and states[-1] is RealtimeSubscribeStates.SUBSCRIBED:
                joined = True
                self._live = True
                self._tried.set()
                if not first:  # the first join: the caller has just started and looks anyway
                    self._call(None)
                # The client's reader task ending is a lost socket too, even when realtime-py
                # fails to say so (it can die of an exception of its own: realtime-py 2.34
                # reads ConnectionClosed.code, which websockets >= 13.1 deprecates).
                reader: asyncio.Future[Any] | None = getattr(client, "_listen_task", None)
                while not self._stop.is_set():
                    changed.clear()
                    stop = asyncio.ensure_future(self._stop.wait())
                    change = asyncio.ensure_future(changed.wait())
                    waits: set[asyncio.Future[Any]] = {stop, change}
                    if reader is not None:
                        waits.add(reader)
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for task in (stop, change):
                        task.cancel()
                    if states[-1] is not RealtimeSubscribeStates.SUBSCRIBED or (reader and reader.done()):
                        break
            elif not self._stop.is_set():
                log.warning("%s: Realtime refused the wake-up channel (%s); polling", self._name,
                            states[-1].value if states else "no answer")  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - any failure of the socket: poll, then reconnect
            if not self._stop.is_set():
                log.warning("%s: Realtime wake-up channel down (%s); polling", self._name, type(exc).__name__)
        finally:
            self._live = False
            self._tried.set()
            with contextlib.suppress(Exception):
                await client.close()
        return joined

    def _call(self, due_at: float | None) -> None:
        try:
            self._wake(due_at)
        except Exception:  # the caller's bug must not end the watch
            log.exception("%s: wake-up callback failed", self._name)
