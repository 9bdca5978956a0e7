"""The stdio JSON-RPC protocol as data: error codes, methods, pydantic models, JSON Schema.

bridge/jsonrpc/dispatch.py processes lines against this contract; bridge/jsonrpc/PROTOCOL.md
explains it to people.

Params models validate requests (unknown fields refused, no type coercion: ``"5"`` is not an
id). Result models *describe* the answers for the JSON Schema (``bridge --schema``) and for the
tests; the answers themselves are built by bridge/views.py, the same functions as the CLI's
``--json`` output, and a unit test checks that both name the same fields.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Final, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic.json_schema import models_json_schema

from supervisor.health import Alert, HealthReport
from supervisor.lifecycle import CancelMode, DecidedBy, ErrorKind, JobSpec, Status

__all__ = [
    "CONFLICT",
    "DATA_DIR_LOCKED",
    "ERRORS",
    "EVENTS",
    "ILLEGAL_TRANSITION",
    "INTERNAL_ERROR",
    "INVALID_JOB",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHODS",
    "METHOD_NOT_FOUND",
    "NOTIFICATIONS",
    "NOT_FOUND",
    "PARSE_ERROR",
    "STORE_ERROR",
    "SUPERVISOR_ERROR",
    "BridgeModeParams",
    "DecisionModel",
    "EventModel",
    "GetResult",
    "HealthAlertParams",
    "HealthModel",
    "HolderModel",
    "IdParams",
    "JobChangedParams",
    "JobList",
    "JobModel",
    "ListParams",
    "LogsParams",
    "LogsResult",
    "Method",
    "MirrorModel",
    "Mode",
    "NoParams",
    "PruneWorkspacesResult",
    "PurgeParams",
    "PurgeResultModel",
    "ReconcileResult",
    "ShutdownParams",
    "ShutdownResult",
    "SubmitParams",
    "SubmitResult",
    "SubscribeParams",
    "SubscribeResult",
    "WorkspacesResult",
    "schema_document",
]

Mode = Literal["run", "no_run", "locked"]
Event = Literal["job.changed", "health.alert", "bridge.mode"]
_ALL_EVENTS: Final[tuple[Event, ...]] = ("bridge.mode", "health.alert", "job.changed")
EVENTS: Final[frozenset[str]] = frozenset(_ALL_EVENTS)

_MAX_ID: Final = 2**63 - 1  # SQLite's INTEGER; a bigger id would overflow in the driver
JobId = Annotated[StrictInt, Field(ge=1, le=_MAX_ID)]
Seconds = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]
_SPEC: Final = {f.name: f.default for f in dataclasses.fields(JobSpec)}


def _default(name: str) -> Any:
    """JobSpec's own default, so that the schema shows it and it is defined in one place."""
    return _SPEC[name]


def _listify(value: Any) -> Any:
    """``"failed"`` → ``["failed"]``: one status or several, like the CLI's repeatable --status."""
    return [value] if isinstance(value, str) else value


Statuses = Annotated[list[Status], BeforeValidator(_listify), Field(min_length=1)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- params --------------------------------------------------------------------------------
class SubmitParams(_Params):
    """A job spec: the same object as one line of ``submit --batch``. Exactly one of ``kind``
    and ``command``. Omitted fields take the kind's, then the settings' defaults."""

    kind: StrictStr | None = Field(None, description="a kind registered in the config file")
    command: list[StrictStr] | None = Field(None, description="argv; local submissions only")
    payload: Any = Field(default_factory=dict, description="any JSON; the agent reads it from a file")
    priority: StrictInt = Field(_default("priority"), description="higher runs first")
    concurrency_key: StrictStr | None = Field(None, description="at most one running job per key")
    key: StrictStr | None = Field(None, description="the CLI's --key: another name for concurrency_key")
    dedup_key: StrictStr | None = Field(None, description="while a job with this key waits, return its id")
    max_attempts: StrictInt = Field(_default("max_attempts"), ge=1, le=1000)
    backoff_s: Seconds = Field(_default("backoff_s"), description="retry backoff base")
    timeout_s: Seconds | None = Field(None, description="seconds from start")
    idle_timeout_s: Seconds | None = Field(None, description="seconds without output")
    stuck_after_s: Seconds | None = Field(None, description="health reports the job stuck after this")
    queue_timeout_s: Seconds | None = Field(None, description="fail it if it waits longer than this to start")
    repo: StrictStr | None = Field(None, description="a repository: at most one running job per repo")
    owner: StrictStr | None = Field(None, description="the repository's owner (with repo)")
    ref: StrictStr | None = Field(None, description="the branch, tag or commit of repo to check out")
    run_after: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, description="not before this time (seconds since the epoch): a delayed job"
    )
    unique_key: StrictStr | None = Field(
        None, description="at most one job with this key ever: return its id instead"
    )


class IdParams(_Params):
    id: JobId


class ListParams(_Params):
    status: Statuses | None = Field(
        None, description="statuses (one string is taken as a list of one); default: all"
    )
    limit: StrictInt = Field(100, ge=1, le=1000)
    offset: StrictInt = Field(0, ge=0, le=100_000, description="skip this many (newest first)")


class PurgeParams(_Params):
    """The CLI's rules: ``ids`` or ``status``, not both; with neither, only finished jobs go."""

    ids: list[JobId] | None = Field(None, min_length=1, max_length=10_000)
    status: Statuses | None = None
    older_than_s: Seconds | None = None


class LogsParams(_Params):
    id: JobId
    attempt: StrictInt | None = Field(None, ge=1, le=2**31, description="default: the latest")
    offset: StrictInt | None = Field(None, ge=0, le=2**62, description="default: the last `limit` bytes")
    limit: StrictInt = Field(64 * 1024, ge=16, le=1024 * 1024)


class ShutdownParams(_Params):
    drain: StrictBool = Field(True, description="let running agents finish for drain_timeout_s first")
    leave_agents: StrictBool | None = Field(
        None, description="leave agents running for the next start to adopt; default: orphan_policy"
    )


class SubscribeParams(_Params):
    events: list[Event] = Field(default_factory=lambda: list(_ALL_EVENTS), min_length=1)


class NoParams(_Params):
    pass


# -- results -------------------------------------------------------------------------------
class SubmitResult(_Result):
    id: int


class JobModel(_Result):
    """One job, as ``show --json`` (bridge/views.py ``job_json``). Times are ISO 8601 UTC."""

    id: int
    kind: str | None
    command: list[str] | None
    status: Status
    priority: int
    concurrency_key: str | None
    dedup_key: str | None
    unique_key: str | None
    repo: str | None
    ref: str | None
    attempt: int
    attempts_used: int
    max_attempts: int
    backoff_s: float
    timeout_s: float | None
    idle_timeout_s: float | None
    stuck_after_s: float | None
    queue_timeout_s: float | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    error_kind: ErrorKind | None
    error: str | None
    result: Any
    output_tail: str | None
    progress: Any
    progress_final: bool = Field(description="the job has ended; progress is its last report")
    stats: Any = Field(description="the running attempt's tree: rss_bytes, cpu_percent, processes")
    payload: Any
    cancel_requested: CancelMode | None
    lease_owner: str | None
    lease_expires_at: str | None
    run_after: str | None
    created_at: str | None
    started_at: str | None
    timeout_at: str | None = Field(description="started_at + timeout_s")
    finished_at: str | None
    last_activity_at: str | None = Field(description="when the running attempt last wrote output or progress")
    updated_at: str | None
    version: int


class EventModel(_Result):
    at: str
    from_: Status | None = Field(alias="from")
    to: Status
    reason: str
    decided_by: DecidedBy
    worker: str | None
    attempt: int
    facts: dict[str, Any]


class JobList(RootModel[list[JobModel]]):
    """Jobs, newest first, as ``list --json``."""


class GetResult(JobModel):
    events: list[EventModel]


class PurgeResultModel(_Result):
    deleted: list[int]
    cancel_requested: list[int] = Field(description="live jobs: cancel requested, deleted later")


class HealthModel(RootModel[HealthReport]):
    """As ``health --json`` (bridge/views.py ``health_json``: the ``HealthReport`` dataclass as
    a dict). Derived from the dataclass, so the schema follows every field added to health."""


class LogsResult(_Result):
    data: str = Field(description="UTF-8 text; undecodable bytes become U+FFFD")
    offset: int = Field(description="where data starts in the file")
    next_offset: int = Field(description="pass it as offset to read on")
    eof: bool = Field(description="nothing more to read now (a live job may write more)")
    size: int = Field(description="the file's size when read")
    attempt: int


class HolderModel(_Result):
    job_id: int
    attempt: int


class MirrorModel(_Result):
    repository: str = Field(description="host/owner/name, or local/<name>-<hash> for a local path")
    url: str = Field(description="where it is fetched from; never holds a credential")
    path: str
    size_bytes: int = Field(description="as last measured (after a fetch or a prune)")
    fetched_at: str | None = Field(description="ISO 8601 UTC")
    used_at: str | None = Field(description="ISO 8601 UTC: a job's worktree was last made from it")
    jobs: list[HolderModel] = Field(description="attempts holding a worktree of it now")


class WorkspacesResult(RootModel[list[MirrorModel]]):
    """The repository mirrors held in the data dir, as ``workspaces --json``."""


class PruneWorkspacesResult(_Result):
    trees_removed: list[tuple[int, int]] = Field(description="[job_id, attempt] of each worktree removed")
    trees_kept: list[tuple[int, int]] = Field(description="live, or failed within workspace_keep_failed_s")
    mirrors_removed: list[str]
    busy: list[str] = Field(description="mirrors being prepared for a job: skipped")
    bytes_freed: int


class DecisionModel(_Result):
    job_id: int
    attempt: int
    action: str
    why: str


class ReconcileResult(_Result):
    ran: bool = Field(description="false while this bridge's own supervisor runs (it reconciled on start)")
    message: str
    decisions: list[DecisionModel] = Field(default_factory=list)


class ShutdownResult(_Result):
    stopping: bool
    leave_agents: bool


class SubscribeResult(_Result):
    events: list[Event]
    mode: Mode
    worker_id: str | None


# -- notifications -------------------------------------------------------------------------
class JobChangedParams(_Result):
    id: int
    from_: Status | None = Field(alias="from")
    to: Status
    reason: str
    attempt: int
    progress: Any


class HealthAlertParams(RootModel[Alert]):
    """One ``supervisor.health.Alert`` as a dict: ``kind``, ``message``, ``job_id``."""


class BridgeModeParams(_Result):
    mode: Mode
    worker_id: str | None
    message: str


# -- error codes ---------------------------------------------------------------------------
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
SUPERVISOR_ERROR: Final = -32000
NOT_FOUND: Final = -32001
ILLEGAL_TRANSITION: Final = -32002
STORE_ERROR: Final = -32003
CONFLICT: Final = -32004
INVALID_JOB: Final = -32005
DATA_DIR_LOCKED: Final = -32006

ERRORS: Final[dict[int, str]] = {
    PARSE_ERROR: "parse error: the line is not UTF-8 JSON",
    INVALID_REQUEST: "invalid request: not a JSON-RPC 2.0 request (also: line too long, empty batch)",
    METHOD_NOT_FOUND: "method not found",
    INVALID_PARAMS: "invalid params: data.field names the field, data.reason says why",
    INTERNAL_ERROR: "internal error: a bug; the traceback is on stderr",
    SUPERVISOR_ERROR: "another supervisor error (state file, spawn, config, OS)",
    NOT_FOUND: "no such job (or no log for it yet)",
    ILLEGAL_TRANSITION: "the job's status does not allow it (e.g. cancel a completed job)",
    STORE_ERROR: "the job store failed; data.retryable is true when trying again may work",
    CONFLICT: "a concurrent change won (stale version, lease lost)",
    INVALID_JOB: "the job spec is well-formed but refused (e.g. unknown kind, kind and command)",
    DATA_DIR_LOCKED: "another supervisor holds the data dir: this bridge only reads",
}


# -- methods and notifications ------------------------------------------------------------
class Method(NamedTuple):
    """One method of the protocol: its models, whether it changes state, one line of doc."""

    params: type[BaseModel]
    result: type[BaseModel]
    writes: bool
    """Changes state: refused while the data dir is locked by another supervisor."""
    doc: str


METHODS: Final[dict[str, Method]] = {
    "submit": Method(SubmitParams, SubmitResult, True, "queue a job (a `submit --batch` line)"),
    "get": Method(IdParams, GetResult, False, "one job and its events, as `show --json`"),
    "list": Method(ListParams, JobList, False, "jobs newest first, as `list --json`"),
    "cancel": Method(IdParams, JobModel, True, "cancel: SIGTERM, grace, SIGKILL"),
    "kill": Method(IdParams, JobModel, True, "cancel without the grace period"),
    "retry": Method(IdParams, JobModel, True, "run a failed or cancelled job again"),
    "purge": Method(PurgeParams, PurgeResultModel, True, "delete finished jobs and their events"),
    "health": Method(NoParams, HealthModel, False, "counts and alerts, as `health --json`"),
    "logs": Method(LogsParams, LogsResult, False, "a page of an attempt's output (default: the tail)"),
    "reconcile": Method(NoParams, ReconcileResult, True, "settle agents a crashed supervisor left"),
    "workspaces": Method(NoParams, WorkspacesResult, False, "repository mirrors held (`workspaces --json`)"),
    "workspaces.prune": Method(
        NoParams, PruneWorkspacesResult, True, "delete finished worktrees and unused mirrors now"
    ),
    "shutdown": Method(ShutdownParams, ShutdownResult, False, "answer, then stop the server"),
    "subscribe": Method(SubscribeParams, SubscribeResult, False, "start sending notifications"),
    "unsubscribe": Method(SubscribeParams, SubscribeResult, False, "stop sending notifications"),
}

NOTIFICATIONS: Final[dict[str, tuple[type[BaseModel], str]]] = {
    "job.changed": (JobChangedParams, "a job changed status (or progress) here"),
    "health.alert": (HealthAlertParams, "a new health alert appeared"),
    "bridge.mode": (BridgeModeParams, "the bridge started or stopped running agents"),
}


# -- schema --------------------------------------------------------------------------------
def schema_document() -> dict[str, Any]:
    """One JSON Schema document of every request, result and notification (``bridge --schema``)."""
    models: list[type[BaseModel]] = []
    for m in METHODS.values():
        models += [m.params, m.result]
    models += [params for params, _ in NOTIFICATIONS.values()]
    unique = list(dict.fromkeys(models))
    refs, defs = models_json_schema(
        [(m, "validation") for m in unique], ref_template="#/$defs/{model}", title="bridge"
    )

    def ref(model: type[BaseModel]) -> Any:
        return refs[(model, "validation")]

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "agent-supervisor bridge: JSON-RPC 2.0 over stdio, one message per line",
        "description": (
            "Requests are {jsonrpc: '2.0', id, method, params}, params by name; "
            "see bridge/jsonrpc/PROTOCOL.md."
        ),
        "methods": {
            name: {
                "description": m.doc,
                "params": ref(m.params),
                "result": ref(m.result),
                "changes_state": m.writes,
            }
            for name, m in METHODS.items()
        },
        "notifications": {
            name: {"description": doc, "params": ref(params)} for name, (params, doc) in NOTIFICATIONS.items()
        },
        "subscribable": sorted(EVENTS),
        "errors": {str(code): text for code, text in ERRORS.items()},
        "$defs": defs.get("$defs", {}),
    }
