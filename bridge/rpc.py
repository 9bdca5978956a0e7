"""JSON-RPC 2.0 for plugin hosts: the pure decode → dispatch → encode step.

``Dispatcher.handle(line)`` takes the bytes of one input line and returns the bytes of the one
line to write back (or None: notifications get no answer). It does no stream I/O and starts no
thread; what it needs from the process around it (the running supervisor, the health cache,
reading a log file, stopping) comes through the ``Backend`` protocol, which bridge/backend.py
implements and the unit tests fake. The contract itself (codes, methods, pydantic models, the
JSON Schema) is data in bridge/protocol.py. The methods mirror the CLI verb for verb and answer
with the same JSON shapes (bridge/views.py); bridge/PROTOCOL.md has one example each.

Errors are JSON-RPC error objects, never a dead server. Domain errors have stable codes, mapped
from the error tree by one table (``_DOMAIN_ERRORS``), the way httpx maps transport errors::

    -32700 parse error          -32001 not found            -32005 invalid job
    -32600 invalid request      -32002 illegal transition   -32006 data dir locked
    -32601 method not found     -32003 store error          -32000 other supervisor error
    -32602 invalid params       -32004 conflict             -32603 internal error
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from pydantic import ValidationError

from bridge.protocol import (
    CONFLICT,
    DATA_DIR_LOCKED,
    ERRORS,
    ILLEGAL_TRANSITION,
    INTERNAL_ERROR,
    INVALID_JOB,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    METHODS,
    NOT_FOUND,
    PARSE_ERROR,
    STORE_ERROR,
    SUPERVISOR_ERROR,
    IdParams,
    ListParams,
    LogsParams,
    Mode,
    PurgeParams,
    ReconcileResult,
    ShutdownParams,
    SubmitParams,
    SubscribeParams,
)
from bridge.views import (
    event_json,
    health_json,
    job_json,
    log_path,  # the CLI's own lookup, so `logs` reads the file the CLI would
)
from supervisor.errors import (
    DataDirLockedError,
    IllegalTransitionError,
    InvalidJobError,
    JobNotFoundError,
    LeaseLostError,
    StoreError,
    StoreUnavailableError,
    SupervisorError,
    UpdateConflictError,
)
from supervisor.health import HealthReport
from supervisor.lifecycle import LIVE, TERMINAL, CancelMode, Job, JobSpec, Status
from supervisor.settings import Settings
from supervisor.store import JobStore

__all__ = [
    "ERRORS",
    "MAX_BATCH",
    "METHODS",
    "Backend",
    "Dispatcher",
    "RpcError",
    "encode",
    "error_response",
    "notification",
]

log = logging.getLogger("agent_supervisor.bridge")

MAX_BATCH: Final = 1000
"""Requests in one batch; a bigger one is refused whole (a 1 MiB line of ``{}`` is ~500,000)."""
_MAX_MESSAGE: Final = 1000

# The error tree → codes, most specific first (JobNotFoundError is also a StoreError).
_DOMAIN_ERRORS: Final[tuple[tuple[type[BaseException], int], ...]] = (
    (JobNotFoundError, NOT_FOUND),
    (IllegalTransitionError, ILLEGAL_TRANSITION),
    (UpdateConflictError, CONFLICT),
    (LeaseLostError, CONFLICT),
    (StoreError, STORE_ERROR),
    (InvalidJobError, INVALID_JOB),
    (DataDirLockedError, DATA_DIR_LOCKED),
    (SupervisorError, SUPERVISOR_ERROR),
    (OSError, SUPERVISOR_ERROR),
)


class RpcError(Exception):
    """A JSON-RPC error object to send back: ``code``, one-line ``message``, optional ``data``."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = _one_line(message)
        self.data = data


class Backend(Protocol):
    """What the dispatcher needs from the process around it (bridge/backend.py's ``Bridge``)."""

    @property
    def store(self) -> JobStore: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def mode(self) -> Mode:
        """``run`` (a supervisor runs here), ``no_run`` (--no-run) or ``locked``."""
        ...

    @property
    def worker_id(self) -> str | None: ...

    def check_writable(self) -> None:
        """Raise ``DataDirLockedError`` while another supervisor holds the data dir."""
        ...

    def submit(self, spec: JobSpec) -> int:
        """Check the kind, fill in defaults (``resolve_spec``), enqueue, wake the loop."""
        ...

    def changed(self, job: Job, before: Status, reason: str) -> None:
        """A request of ours moved ``job`` (cancel, retry): notify subscribers, wake the loop."""
        ...

    def health(self) -> HealthReport:
        """The health report, possibly from a snapshot a moment old."""
        ...

    def read_log(self, path: Path, offset: int | None, limit: int) -> tuple[bytes, int, int]:
        """Up to ``limit`` bytes from ``offset`` (None: the last ``limit`` bytes) →
        (bytes, where they start, the file's size). ``FileNotFoundError`` if there is none."""
        ...

    def reconcile(self) -> ReconcileResult: ...

    def shutdown(self, *, drain: bool, leave_agents: bool | None) -> bool:
        """Ask the server to stop after this answer; returns whether agents are left running."""
        ...

    def subscribe(self, events: frozenset[str]) -> None: ...

    def unsubscribe(self, events: frozenset[str]) -> frozenset[str]:
        """Stop sending ``events``; returns the events still subscribed."""
        ...


class Dispatcher:
    """Decode one line, call the method, encode the answer. Never raises for bad input."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._handlers: dict[str, Callable[[Any], Any]] = {
            "submit": self._submit,
            "get": self._get,
            "list": self._list,
            "cancel": lambda p: self._cancel(p, CancelMode.CANCEL),
            "kill": lambda p: self._cancel(p, CancelMode.KILL),
            "retry": self._retry,
            "purge": self._purge,
            "health": lambda p: health_json(self.backend.health()),
            "logs": self._logs,
            "reconcile": lambda p: self.backend.reconcile().model_dump(),
            "shutdown": self._shutdown,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
        }
        assert set(self._handlers) == set(METHODS)

    def handle(self, line: bytes) -> bytes | None:
        """The answer to one line (a request, a notification or a batch), or None."""
        try:
            message = _decode(line)
        except RpcError as exc:
            return encode(error_response(None, exc))
        if isinstance(message, list):
            if not message:
                return encode(error_response(None, RpcError(INVALID_REQUEST, "empty batch")))
            if len(message) > MAX_BATCH:
                error = RpcError(INVALID_REQUEST, f"batch of {len(message)} requests; at most {MAX_BATCH}")
                return encode(error_response(None, error))
            replies = [r for r in map(self.handle_message, message) if r is not None]
            return _encode_replies(replies) if replies else None
        reply = self.handle_message(message)
        return _encode_replies(reply) if reply is not None else None

    def handle_message(self, message: Any) -> dict[str, Any] | None:
        """The response object to one decoded request, or None for a notification."""
        if not isinstance(message, dict):
            return error_response(None, RpcError(INVALID_REQUEST, "a request must be a JSON object"))
        rid = message.get("id")
        if not _valid_id(rid):
            return error_response(None, RpcError(INVALID_REQUEST, "id must be a string, a number or null"))
        if message.get("jsonrpc") != "2.0":
            return error_response(rid, RpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"'))
        method = message.get("method")
        if not isinstance(method, str):
            return error_response(rid, RpcError(INVALID_REQUEST, "method must be a string"))
        params = message.get("params")
        if "params" in message and not isinstance(params, dict | list):
            return error_response(rid, RpcError(INVALID_REQUEST, "params must be an object or an array"))
        try:
            result = self.call(method, params)
        except RpcError as exc:
            error: RpcError = exc
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error object, never a dead server
            error = _translate(exc)
        else:
            return None if "id" not in message else {"jsonrpc": "2.0", "id": rid, "result": result}
        if "id" not in message:
            log.info("notification %s failed: %s", method[:100], error.message)
            return None
        return error_response(rid, error)

    def call(self, method: str, params: dict[str, Any] | list[Any] | None) -> Any:
        """Validate ``params`` for ``method`` and run it; raises ``RpcError`` or a domain error."""
        spec = METHODS.get(method)
        if spec is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method[:100]!r}", {"method": method[:100]})
        if isinstance(params, list):
            raise RpcError(
                INVALID_PARAMS,
                "invalid params: give params by name (an object), not an array",
                {"field": "params", "reason": "by-position params are not supported"},
            )
        try:
            parsed = spec.params.model_validate(params or {})
        except ValidationError as exc:
            raise _invalid_params(exc) from None
        if spec.writes:
            self.backend.check_writable()
        return self._handlers[method](parsed)

    # -- methods -------------------------------------------------------------------------
    def _submit(self, p: SubmitParams) -> dict[str, Any]:
        spec = JobSpec.from_dict(p.model_dump(exclude_unset=True))
        return {"id": self.backend.submit(spec)}

    def _get(self, p: IdParams) -> dict[str, Any]:
        store = self.backend.store
        data = job_json(store.get(p.id))
        data["events"] = [event_json(e) for e in store.events(p.id)]
        return data

    def _list(self, p: ListParams) -> list[dict[str, Any]]:
        statuses = set(p.status) if p.status else None
        # The store pages newest-first through its id index; an offset costs offset + limit rows.
        jobs = self.backend.store.list(statuses=statuses, limit=p.offset + p.limit)
        return [job_json(j) for j in jobs[p.offset :]]

    def _cancel(self, p: IdParams, mode: CancelMode) -> dict[str, Any]:
        store = self.backend.store
        before = store.get(p.id).status
        job = store.request_cancel(p.id, mode)
        self.backend.changed(job, before, f"{mode.value} requested")
        return job_json(job)

    def _retry(self, p: IdParams) -> dict[str, Any]:
        store = self.backend.store
        before = store.get(p.id).status
        job = store.retry(p.id)
        self.backend.changed(job, before, "retry requested")
        return job_json(job)

    def _purge(self, p: PurgeParams) -> dict[str, Any]:
        # The CLI's rules: ids or statuses, not both; with neither, only finished jobs go.
        if not p.ids and not p.status and p.older_than_s is None:
            raise RpcError(
                INVALID_PARAMS,
                "invalid params: purge needs ids, status or older_than_s",
                {"field": "ids", "reason": "give ids, status or older_than_s"},
            )
        if p.ids and p.status:
            raise RpcError(
                INVALID_PARAMS,
                "invalid params: give ids or status, not both",
                {"field": "status", "reason": "not allowed together with ids"},
            )
        result = self.backend.store.purge(
            ids=p.ids or None,
            statuses=set(p.status) if p.status else (None if p.ids else TERMINAL),
            older_than_s=p.older_than_s,
        )
        return {"deleted": list(result.deleted), "cancel_requested": list(result.cancel_requested)}

    def _logs(self, p: LogsParams) -> dict[str, Any]:
        store = self.backend.store
        job = store.get(p.id)
        attempt = p.attempt or job.attempt
        if attempt == 0:
            raise RpcError(NOT_FOUND, f"job {p.id} has not run yet; no log", {"id": p.id})
        path = log_path(store, self.backend.settings, p.id, attempt)
        try:
            data, start, size = self.backend.read_log(path, p.offset, p.limit)
        except FileNotFoundError:
            raise RpcError(
                NOT_FOUND, f"no log for job {p.id} attempt {attempt}", {"id": p.id, "attempt": attempt}
            ) from None
        # Cut on character boundaries: a tail may start inside a character, and the end of a
        # live log may be half a character the agent has not finished writing.
        live = job.status in LIVE and attempt == job.attempt
        begin, end = utf8_bounds(data, skip_head=p.offset is None and start > 0, hold_tail=live)
        return {
            "data": data[begin:end].decode("utf-8", errors="replace"),
            "offset": start + begin,
            "next_offset": start + end,
            "eof": start + end >= size,
            "size": size,
            "attempt": attempt,
        }

    def _shutdown(self, p: ShutdownParams) -> dict[str, Any]:
        left = self.backend.shutdown(drain=p.drain, leave_agents=p.leave_agents)
        return {"stopping": True, "leave_agents": left}

    def _subscribe(self, p: SubscribeParams) -> dict[str, Any]:
        events = frozenset(p.events)
        self.backend.subscribe(events)
        return {"events": sorted(events), "mode": self.backend.mode, "worker_id": self.backend.worker_id}

    def _unsubscribe(self, p: SubscribeParams) -> dict[str, Any]:
        left = self.backend.unsubscribe(frozenset(p.events))
        return {"events": sorted(left), "mode": self.backend.mode, "worker_id": self.backend.worker_id}


# -- encoding ------------------------------------------------------------------------------
def error_response(rid: Any, error: RpcError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return {"jsonrpc": "2.0", "id": rid, "error": body}


def notification(method: str, params: dict[str, Any]) -> bytes:
    """One notification line (``job.changed``, ``health.alert``, ``bridge.mode``)."""
    return encode({"jsonrpc": "2.0", "method": method, "params": params})


def encode(message: Any) -> bytes:
    """One line of compact UTF-8 JSON, newline included. Never contains a raw newline: JSON
    escapes control characters inside strings."""
    try:
        text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8") + b"\n"
    except (ValueError, UnicodeEncodeError):
        # NaN in an agent's result (Python's json reads it), or a lone surrogate in a payload
        # ("\ud800" is valid JSON text but not UTF-8): send nulls and \u escapes instead of
        # a line the host's JSON.parse would refuse.
        text = json.dumps(_finite(message), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii") + b"\n"


def _encode_replies(replies: Any) -> bytes:
    try:
        return encode(replies)
    except Exception as exc:  # a result we cannot encode is a bug: answer it, do not die
        log.exception("cannot encode a response")
        items = replies if isinstance(replies, list) else [replies]
        errors = [error_response(r.get("id"), _translate(exc)) for r in items]
        return encode(errors if isinstance(replies, list) else errors[0])


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def utf8_bounds(data: bytes, *, skip_head: bool, hold_tail: bool) -> tuple[int, int]:
    """(begin, end) of ``data`` without a partial character at the start (when ``skip_head``)
    and at the end (when ``hold_tail``); at most 3 bytes are cut on either side."""
    begin = 0
    if skip_head:
        while begin < min(3, len(data)) and data[begin] & 0xC0 == 0x80:
            begin += 1
    end = len(data)
    if hold_tail:
        for back in range(1, min(4, end - begin) + 1):
            byte = data[end - back]
            if byte & 0xC0 != 0x80:  # the last lead (or ASCII) byte
                need = (
                    2
                    if byte & 0xE0 == 0xC0
                    else 3
                    if byte & 0xF0 == 0xE0
                    else 4
                    if byte & 0xF8 == 0xF0
                    else 1
                )
                if back < need:
                    end -= back
                break
    return begin, end


# -- decoding and errors -------------------------------------------------------------------
def _decode(line: bytes) -> Any:
    try:
        text = line.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise RpcError(PARSE_ERROR, "parse error: nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing 4,300+ digits
        raise RpcError(PARSE_ERROR, f"parse error: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf, which we could never send back
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _valid_id(rid: Any) -> bool:
    return rid is None or isinstance(rid, str) or (isinstance(rid, int | float) and not isinstance(rid, bool))


def _invalid_params(exc: ValidationError) -> RpcError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    fields = [(".".join(str(part) for part in e["loc"]) or "params", e["msg"]) for e in errors]
    field, reason = fields[0]
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return RpcError(
        INVALID_PARAMS,
        f"invalid params: {field}: {reason}{more}",
        {"field": field, "reason": reason, "errors": [{"field": f, "reason": r} for f, r in fields[:10]]},
    )


def _translate(exc: Exception) -> RpcError:
    for kind, code in _DOMAIN_ERRORS:
        if isinstance(exc, kind):
            data: dict[str, Any] = {"type": type(exc).__name__}
            if code == STORE_ERROR:
                data["retryable"] = isinstance(exc, StoreUnavailableError)
            text = str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)
            return RpcError(code, text or type(exc).__name__, data)
    log.exception("internal error")
    return RpcError(
        INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}", {"type": type(exc).__name__}
    )


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
