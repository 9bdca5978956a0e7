"""One attempt of a job: how it is prepared, watched, and how its outcome is put together.

The supervisor loop (``runner``) owns the when; this module owns the what: the files and
environment an agent gets (the agent contract in README), the bookkeeping of a running
attempt, and the ``Outcome`` built from its exit status, result file and log tail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from supervisor.datadir import AttemptFiles, DataDir, write_private
from supervisor.errors import InvalidJobError
from supervisor.job import CancelMode, DecidedBy, Job, Outcome
from supervisor.logcap import LogCap
from supervisor.processes import TAG_ATTEMPT, TAG_JOB, TAG_WORKER, Agent, ExitStatus, Limits
from supervisor.scheduler import AgentView, StopState, outcome_for
from supervisor.settings import KindConfig, Settings
from supervisor.statefile import AgentEntry

if TYPE_CHECKING:
    from supervisor.workspaces import Workspace

__all__ = [
    "UNREAD_IDENTITY",
    "Attempt",
    "Launch",
    "agent_environment",
    "base_env",
    "exit_outcome",
    "limits_of",
    "prepare",
    "read_result",
]

UNREAD_IDENTITY: Final = "unread"
"""``AgentEntry.start_identity`` of a new attempt until the state file is next saved (the
process identity is read then: see ``procs.AgentProcess.identity``)."""
MAX_RESULT_BYTES: Final = 1 << 20
MAX_PROGRESS_BYTES: Final = 64 << 10
# Our own settings and secrets must never reach an agent's environment.
_PRIVATE_ENV_PREFIXES: Final = ("AGENT_SUPERVISOR_", "SUPABASE_")


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to spawn one attempt."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    run_dir: Path
    log_path: Path
    timeout_s: float
    idle_timeout_s: float | None
    limits: Limits


def limits_of(kind: KindConfig | None) -> Limits:
    """The per-agent limits of a kind (none for raw commands)."""
    if kind is None:
        return Limits()
    return Limits(
        memory_max_bytes=kind.memory_max_bytes,
        pids_max=kind.pids_max,
        cpu_time_s=kind.cpu_time_s,
        address_space_bytes=kind.address_space_bytes,
        cpu_max=kind.cpu_max,
    )


def base_env() -> dict[str, str]:
    """The environment agents inherit: ours without our own settings and secrets. The
    supervisor takes it once when it opens (and on ``reload``), not per spawn."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}


def prepare(
    job: Job,
    kind: KindConfig | None,
    settings: Settings,
    datadir: DataDir,
    worker: str,
    env: Mapping[str, str] | None = None,
    workspace: Workspace | None = None,
) -> Launch:
    """Write the payload file, clear stale result/exit files, and build argv and env
    (``env``: the inherited environment, default ``base_env()``). With a ``workspace`` the
    agent starts in it (a kind's relative ``cwd`` is taken inside it) and learns of it from
    its environment. The git token variable reaches only agents whose kind asks for it.

    The payload reaches the agent as a file and argv comes from a registered template (or a
    local raw command): nothing from a job row ever passes through a shell.
    """
    run_dir, fresh = datadir.new_attempt_dir(job.id, job.attempt)
    files = AttemptFiles(run_dir)
    payload_file, result_file, progress_file = files.payload, files.result, files.progress
    if not fresh:  # a dir made just now holds nothing stale
        for stale in (result_file, progress_file, files.exit):
            stale.unlink(missing_ok=True)
    # Written in place, not via temp + rename: no agent reads it before we spawn one, and a
    # write cut short by a crash is never used (the next claim is a new attempt, a new dir).
    payload = json.dumps(job.payload if job.payload is not None else {}).encode()
    write_private(payload_file, payload, atomic=False)
    if kind is not None:
        argv = kind.render(job.id, job.attempt, str(payload_file), str(result_file))
    else:
        argv = list(job.command or ())
    agent_env = agent_environment(
        base_env() if env is None else env,
        workspace,
        token_env=settings.git_token_env,
        pass_token=bool(kind and kind.pass_token),
    )
    if kind:
        agent_env.update(kind.env)
    agent_env.update(
        {
            TAG_JOB: str(job.id),
            TAG_ATTEMPT: str(job.attempt),
            TAG_WORKER: worker,
            "AGENT_SUPERVISOR_PAYLOAD_FILE": str(payload_file),
            "AGENT_SUPERVISOR_RESULT_FILE": str(result_file),
            "AGENT_SUPERVISOR_PROGRESS_FILE": str(progress_file),
        }
    )
    timeout = job.timeout_s or (kind.timeout_s if kind else None) or settings.default_timeout_s
    idle = job.idle_timeout_s or (kind.idle_timeout_s if kind else None)
    log_path = datadir.log_path(job.id, job.attempt)
    cwd = kind.cwd if kind else None
    if workspace is not None:
        cwd = str(workspace.path / cwd) if cwd else str(workspace.path)  # an absolute cwd wins
    return Launch(argv, agent_env, cwd, run_dir, log_path, timeout, idle, limits_of(kind))


@dataclass(eq=False)
class Attempt:
    """A running attempt: the job as claimed, its process, and the stop bookkeeping."""

    job: Job
    proc: Agent
    logcap: LogCap
    entry: AgentEntry
    last_output: float
    stop: StopState | None = None
    cancel_requested: CancelMode | None = None
    lease_lost: bool = False
    adopted: bool = False
    signals: list[dict[str, Any]] = field(default_factory=list)
    progress: Any = None
    progress_mtime: float = 0.0
    limits: Limits = field(default_factory=Limits)
    stats: dict[str, Any] | None = None
    """The latest sample of the tree: rss_bytes, cpu_percent, processes."""
    peak_rss_bytes: int = 0
    cpu_percent_sum: float = 0.0
    samples: int = 0
    breach: str | None = None
    """A limit the sampled tree broke (set by ``sample``; the planner then kills the tree)."""
    workspace: Workspace | None = None
    """The worktree the agent runs in (its job names a repository)."""
    output_seen: float = 0.0
    """``last_output`` as the previous heartbeat saw it (``active``)."""

    def active(self) -> bool:
        """Whether the agent wrote output since the previous call (one per heartbeat)."""
        fresh = self.last_output > self.output_seen
        self.output_seen = self.last_output
        return fresh

    def sample(self) -> None:
        """Take one resource sample of the tree; note a broken memory or process limit (with a
        cgroup the kernel usually acts first; without one, this is the enforcement)."""
        stats = self.proc.tree_stats()
        if stats is None:
            return
        self.stats = {
            "rss_bytes": stats.rss_bytes,
            "cpu_percent": round(stats.cpu_percent, 1),
            "processes": stats.processes,
        }
        self.peak_rss_bytes = max(self.peak_rss_bytes, stats.rss_bytes)
        self.cpu_percent_sum += stats.cpu_percent
        self.samples += 1
        mem, pids = self.limits.memory_max_bytes, self.limits.pids_max
        if self.breach is None and mem is not None and stats.rss_bytes > mem:
            self.breach = f"memory limit {mem >> 20} MiB exceeded (tree RSS {stats.rss_bytes >> 20} MiB)"
        elif self.breach is None and pids is not None and stats.processes > pids:
            self.breach = f"process limit {pids} exceeded ({stats.processes} processes)"

    @property
    def run_dir(self) -> Path:
        return Path(self.entry.run_dir)

    def state_entry(self) -> AgentEntry:
        """``entry`` for the state file, with the process identity (read now if not yet)."""
        if self.entry.start_identity == UNREAD_IDENTITY and (identity := self.proc.identity):
            self.entry = self.entry.model_copy(update={"start_identity": identity})
        return self.entry

    def view(self) -> AgentView:
        return AgentView(
            job_id=self.job.id,
            started=self.entry.started_mono,
            last_output=self.last_output,
            timeout_s=self.entry.timeout_s,
            idle_timeout_s=self.entry.idle_timeout_s,
            cancel_requested=self.cancel_requested,
            lease_lost=self.lease_lost,
            limit_breach=self.breach,
            stop=self.stop,
        )

    def read_progress(self) -> Any:
        """New progress the agent wrote to its progress file since the last call, else None."""
        path = AttemptFiles(self.run_dir).progress
        try:
            st = path.stat()
            if st.st_mtime == self.progress_mtime or st.st_size > MAX_PROGRESS_BYTES:
                return None
            self.progress_mtime = st.st_mtime
            self.progress = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return self.progress


def exit_outcome(attempt: Attempt, status: ExitStatus, now: float) -> Outcome:
    """The outcome of an attempt whose agent has ended, with the process facts behind it."""
    tail = attempt.logcap.finish()
    entry = attempt.entry
    kind, error, decided_by, forgive = outcome_for(
        exit_code=status.exit_code,
        signal_number=status.signal,
        stop=attempt.stop,
        timeout_s=entry.timeout_s,
        idle_timeout_s=entry.idle_timeout_s,
        limit_breach=attempt.breach or attempt.proc.limit_breach(),
    )
    if attempt.adopted and decided_by is DecidedBy.EXIT:
        decided_by = DecidedBy.RECONCILE
    facts: dict[str, Any] = {
        "pid": entry.pid,
        "exit_code": status.exit_code,
        "signal": status.signal,
        "peak_rss_bytes": status.peak_rss_bytes,
        "signals": attempt.signals,
        "runtime_s": round(now - entry.started_mono, 3),
        "log_bytes": attempt.logcap.size,
        "log_dropped_bytes": attempt.logcap.dropped,
        "adopted": attempt.adopted,
        "tree_peak_rss_bytes": attempt.peak_rss_bytes or None,
        "cpu_percent_avg": round(attempt.cpu_percent_sum / attempt.samples, 1) if attempt.samples else None,
    }
    if status.escaped:  # descendants that left its group, stopped with it (supervisor.escapees)
        facts["escaped"] = [e.fact() for e in status.escaped]
    if attempt.proc.enforcement:  # e.g. "CPU rate 0.5 CPUs: not enforced (...)"
        facts["limits_enforcement"] = attempt.proc.enforcement
    result = None
    if kind is None:
        try:
            result = read_result(attempt.run_dir)
        except InvalidJobError as exc:
            facts["result_error"] = str(exc)
    return Outcome(
        error_kind=kind,
        error=error,
        exit_code=status.exit_code,
        signal=status.signal,
        result=result,
        output_tail=tail,
        decided_by=decided_by,
        facts=facts,
        forgive=forgive,
    )


def read_result(run_dir: Path) -> Any:
    """The JSON the agent wrote to its result file, or None when it wrote none."""
    path = AttemptFiles(run_dir).result
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RESULT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidJobError(f"result file unreadable: {exc.strerror}") from exc
    if len(data) > MAX_RESULT_BYTES:
        raise InvalidJobError(f"result file is larger than {MAX_RESULT_BYTES} bytes; not stored")
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidJobError(f"result file is not JSON: {exc}") from exc


def agent_environment(
    env: Mapping[str, str], workspace: Workspace | None, *, token_env: str, pass_token: bool
) -> dict[str, str]:
    """An agent's environment: ``env`` without the git token variable (unless its kind has
    ``pass_token``), plus the workspace's variables."""
    result = dict(env)
    if not pass_token:
        result.pop(token_env, None)
    if workspace is not None:
        result.update(workspace.env())
    return result
