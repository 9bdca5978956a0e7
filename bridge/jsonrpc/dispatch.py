"""JSON-RPC 2.0 for plugin hosts: the pure decode → dispatch → encode step.

``Dispatcher.handle(line)`` takes the bytes of one input line and returns the bytes of the one
line to write back (or None: notifications get no answer). It does no stream I/O and starts no
thread. The methods call ``bridge.service.JobService``, which holds every rule they share with
the CLI, and answer with the same JSON shapes (bridge/views.py). What is not the service's
(the bridge's mode, notifications, subscriptions, stopping) comes through the ``Backend``
protocol, which bridge/jsonrpc/backend.py implements and the unit tests fake. The contract
itself (codes, methods, pydantic models, the JSON Schema) is data in bridge/jsonrpc/protocol.py;
bridge/jsonrpc/PROTOCOL.md has one example per method.

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
from typing import Any, Final, Protocol

from pydantic import ValidationError

from bridge.jsonrpc.protocol import (
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
    DecisionModel,
    ListParams,
    LogsParams,
    Mode,
    PurgeParams,
    ReconcileResult,
    ShutdownParams,
    SubmitParams,
    SubscribeParams,
)
from bridge.service import ChangeResult, JobService, LogNotFoundError, UsageError
from bridge.views import detail_json, health_json, job_json, mirror_json, prune_report_json
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
from supervisor.lifecycle import CancelMode, Job, JobSpec, Status

__all__ = [
    "ERRORS",
    "MAX_BATCH",
    "METHODS",
    "RPC_NAMES",
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

RPC_NAMES: Final = {"ids": "ids", "statuses": "status", "older_than_s": "older_than_s"}
"""The service's parameters as the protocol spells them, for its usage errors (-32602)."""

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
    """What the dispatcher needs from the process around it besides the service
    (bridge/jsonrpc/backend.py's ``Bridge``): its mode, notifications, stopping."""

    @property
    def mode(self) -> Mode:
        """``run`` (a supervisor runs here), ``no_run`` (--no-run) or ``locked``."""
        ...

    @property
    def worker_id(self) -> str | None: ...

    def check_writable(self) -> None:
        """Raise ``DataDirLockedError`` while another supervisor holds the data dir."""
        ...

    def changed(self, job: Job, before: Status | None, reason: str) -> None:
        """A request of ours moved ``job`` (cancel, retry): notify the subscribers."""
        ...

    def shutdown(self, *, drain: bool, leave_agents: bool | None) -> bool:
        """Ask the server to stop after this answer; returns whether agents are left running."""
        ...

    def subscribe(self, events: frozenset[str]) -> None: ...

    def unsubscribe(self, events: frozenset[str]) -> frozenset[str]:
        """Stop sending ``events``; returns the events still subscribed."""
        ...


class Dispatcher:
    """Decode one line, call the method, encode the answer. Never raises for bad input."""

    def __init__(self, service: JobService, backend: Backend) -> None:
        self.service = service
        self.backend = backend
        self._handlers: dict[str, Callable[[Any], Any]] = {
            "submit": self._submit,
            "get": lambda p: detail_json(self.service.get(p.id)),
            "list": self._list,
            "cancel": lambda p: self._changed(self.service.cancel([p.id], CancelMode.CANCEL)),
            "kill": lambda p: self._changed(self.service.cancel([p.id], CancelMode.KILL)),
            "retry": lambda p: self._changed(self.service.retry([p.id])),
            "purge": self._purge,
            "health": lambda p: health_json(self.service.health()),
            "logs": self._logs,
            "reconcile": self._reconcile,
            "workspaces": lambda p: [mirror_json(m) for m in self.service.workspaces()],
            "workspaces.prune": lambda p: prune_report_json(self.service.prune_workspaces()),
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
        [job_id] = self.service.submit([JobSpec.from_dict(p.model_dump(exclude_unset=True))])
        return {"id": job_id}

    def _list(self, p: ListParams) -> list[dict[str, Any]]:
        jobs = self.service.list(p.status, limit=p.limit, offset=p.offset)
        return [job_json(j) for j in jobs]

    def _changed(self, results: list[ChangeResult]) -> dict[str, Any]:
        [result] = results
        job = result.unwrap()
        self.backend.changed(job, result.before, result.reason)
        return job_json(job)

    def _purge(self, p: PurgeParams) -> dict[str, Any]:
        result = self.service.purge(ids=p.ids, statuses=p.status, older_than_s=p.older_than_s)
        return {"deleted": list(result.deleted), "cancel_requested": list(result.cancel_requested)}

    def _logs(self, p: LogsParams) -> dict[str, Any]:
        try:
            chunk = self.service.logs(p.id, attempt=p.attempt, offset=p.offset, limit=p.limit)
        except LogNotFoundError as exc:
            if exc.path is None:
                raise RpcError(NOT_FOUND, str(exc), {"id": p.id}) from None
            raise RpcError(
                NOT_FOUND,
                f"no log for job {p.id} attempt {exc.attempt}",
                {"id": p.id, "attempt": exc.attempt},
            ) from None
        return {
            "data": chunk.data.decode("utf-8", errors="replace"),
            "offset": chunk.offset,
            "next_offset": chunk.next_offset,
            "eof": chunk.eof,
            "size": chunk.size,
            "attempt": chunk.attempt,
        }

    def _reconcile(self, p: object) -> dict[str, Any]:
        result = self.service.reconcile()
        if not result.ran:
            answer = ReconcileResult(
                ran=False,
                message="this bridge's supervisor reconciled when it started and keeps agents "
                "and store in agreement while it runs",
            )
        else:
            answer = ReconcileResult(
                ran=True,
                message=f"reconciled {len(result.decisions)} agents; outbox depth {result.outbox_depth}",
                decisions=[
                    DecisionModel(job_id=d.job_id, attempt=d.attempt, action=str(d.action), why=d.why)
                    for d in result.decisions
                ],
            )
        return answer.model_dump()

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
    if isinstance(exc, UsageError):  # the service's rule, in the protocol's names
        field = RPC_NAMES.get(exc.param, exc.param) if exc.param else "params"
        reason = exc.render(RPC_NAMES, reason=True)
        return RpcError(
            INVALID_PARAMS, f"invalid params: {exc.render(RPC_NAMES)}", {"field": field, "reason": reason}
        )
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
