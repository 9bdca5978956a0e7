"""A stand-in for Supabase Realtime's Broadcast, fed by the database as the real one is.

Supabase Realtime (supabase/realtime) speaks Phoenix channels over a websocket at
``/realtime/v1/websocket?apikey=…&vsn=1.0.0``; the client realtime-py 2.34 (read at
``realtime/_async/{client,channel,push}.py`` and ``realtime/message.py``) sends JSON frames
``{"topic", "event", "payload", "ref", "join_ref"}``:

* ``phx_join`` on ``realtime:<topic>`` with ``{"config": {"broadcast", "presence", "private",
  "postgres_changes"}, "access_token"}`` → ``phx_reply`` ``{"status": "ok", "response": {}}``,
  or ``{"status": "error", "response": {"reason": …}}`` when a private channel's role may not
  read the topic (Supabase "Realtime Authorization": the server inserts a message and tries to
  read it back as the joining role under RLS, in a transaction it rolls back);
* ``heartbeat`` on ``phoenix`` → ``phx_reply`` ok; ``phx_leave`` → ``phx_reply`` ok;
  ``access_token`` → the channel's token is replaced;
* a message written by ``realtime.send(payload, event, topic, private)`` reaches every socket
  joined to ``realtime:<topic>`` with the same privacy as ``{"event": "broadcast", "payload":
  {"type": "broadcast", "event": …, "payload": …}, "ref": null}``. Supabase reads new messages
  from the WAL; the stand-in hears them by a NOTIFY from a trigger on ``realtime.messages``
  (tests/pg.py) and reads the row.

The gateway in front checks ``apikey`` (the project's anon or service key) before the upgrade.
``PostgrestStandin(realtime=True)`` proxies ``/realtime/v1/`` to this server, as Supabase's
gateway does, so the client reaches both at the project URL. ``drop_all`` ends every socket and
``refuse`` turns new ones away, for tests of a lost channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tests.standin import jwt

__all__ = ["RealtimeStandin"]


@dataclass(eq=False)  # a set of sockets: by identity
class _Socket:
    connection: ServerConnection
    joined: dict[str, bool] = field(default_factory=dict)  # topic -> private


class RealtimeStandin:
    """Realtime for the database ``dsn`` (a superuser DSN: it reads realtime.messages and runs
    the authorization check). ``keys`` are the API keys the gateway accepts; ``verify`` checks
    a JWT and returns its claims (the project's secret)."""

    def __init__(self, dsn: str, keys: tuple[str, ...], verify: Callable[[str], dict[str, Any]]) -> None:
        self.dsn = dsn
        self.keys = keys
        self.verify = verify
        self.refuse = False
        self.joins: list[tuple[str, str]] = []
        """(topic, "ok" | "error") per phx_join."""
        self._sockets: set[_Socket] = set()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._serve_thread, name="realtime-standin", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self._listener = threading.Thread(
            target=self._listen_thread, name="realtime-standin-wal", daemon=True
        )
        self._listener.start()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    def drop_all(self) -> None:
        """End every socket (as a Realtime node restart does)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._drop_all(), self._loop).result(10)

    async def _drop_all(self) -> None:
        for sock in list(self._sockets):
            await sock.connection.close(1011, "node restarting")

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._thread.join(timeout=10)
        self._listener.join(timeout=10)

    # -- the websocket server ------------------------------------------------------------
    def _serve_thread(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with serve(self._session, "127.0.0.1", 0, process_request=self._gateway) as server:
            self._server = server
            self._ready.set()
            await server.wait_closed()

    def _gateway(self, connection: ServerConnection, request: Request) -> Response | None:
        key = parse_qs(urlsplit(request.path).query).get("apikey", [""])[0]
        if self.refuse:
            return connection.respond(503, "Service Unavailable\n")
        if key not in self.keys:
            return Response(401, "Unauthorized", Headers([("Content-Type", "application/json")]),
                            b'{"message":"Invalid API key"}')  # fmt: skip
        return None

    async def _session(self, connection: ServerConnection) -> None:
        sock = _Socket(connection)
        self._sockets.add(sock)
        try:
            async for raw in connection:
                message = json.loads(raw)
                reply = await asyncio.to_thread(self._handle, sock, message)
                if reply is not None:
                    await connection.send(json.dumps(reply))
        except Exception:  # a socket that broke simply ends
            pass
        finally:
            self._sockets.discard(sock)

    def _handle(self, sock: _Socket, message: dict[str, Any]) -> dict[str, Any] | None:
        event, topic, ref = message.get("event"), message.get("topic", ""), message.get("ref")
        reply: dict[str, Any] = {
            "event": "phx_reply",
            "topic": topic,
            "ref": ref,
            "join_ref": message.get("join_ref"),
        }
        if event == "heartbeat":
            return {**reply, "payload": {"status": "ok", "response": {}}}
        if event == "phx_join":
            payload = message.get("payload") or {}
            private = bool((payload.get("config") or {}).get("private"))
            reason = self._authorize(topic.removeprefix("realtime:"), payload.get("access_token"), private)
            if reason is not None:
                self.joins.append((topic, "error"))
                return {**reply, "payload": {"status": "error", "response": {"reason": reason}}}
            sock.joined[topic] = private
            self.joins.append((topic, "ok"))
            return {**reply, "payload": {"status": "ok", "response": {}}}
        if event == "phx_leave":
            sock.joined.pop(topic, None)
            return {**reply, "payload": {"status": "ok", "response": {}}}
        return None  # access_token, broadcast from clients, presence: not used here

    def _authorize(self, topic: str, token: str | None, private: bool) -> str | None:
        """None when the token's role may join ``topic``; else Realtime's reason."""
        if not private:
            return None
        try:
            claims = self.verify(token or "")
        except jwt.JwtError as exc:
            return f"Unauthorized: {exc.message}"
        role = claims.get("role") or "anon"
        with psycopg.connect(self.dsn) as conn:
            probe = conn.execute(
                "insert into realtime.messages (topic, extension, event, private)"
                " values (%s, 'broadcast', 'probe', true) returning id",
                (topic,),
            ).fetchone()
            assert probe is not None
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
            conn.execute("select set_config('realtime.topic', %s, true)", (topic,))
            conn.execute(psycopg.sql.SQL("set local role {}").format(psycopg.sql.Identifier(role)))
            seen = conn.execute(
                "select count(*) from realtime.messages where id = %s", (probe[0],)
            ).fetchone()
            conn.rollback()
        if not seen or not seen[0]:
            return f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"
        return None

    # -- the database feed ---------------------------------------------------------------
    def _listen_thread(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("listen standin_realtime")
            while not self._stop.is_set():
                # One at a time (stop_after=1): each is read and sent as soon as it arrives;
                # the timeout only lets close() end the thread.
                for note in list(conn.notifies(timeout=0.2, stop_after=1)):
                    row = conn.execute(
                        "select topic, event, payload, private from realtime.messages where id = %s",
                        (note.payload,),
                    ).fetchone()
                    if row is not None and self._loop is not None:
                        asyncio.run_coroutine_threadsafe(self._broadcast(*row), self._loop)

    async def _broadcast(self, topic: str, event: str, payload: Any, private: bool) -> None:
        channel = f"realtime:{topic}"
        body = {"type": "broadcast", "event": event, "payload": payload}
        frame = json.dumps({"event": "broadcast", "topic": channel, "ref": None, "payload": body})
        for sock in list(self._sockets):
            if sock.joined.get(channel) is bool(private):
                with contextlib.suppress(Exception):
                    await sock.connection.send(frame)
