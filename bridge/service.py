"""The one service layer: every rule the front ends share (CLI, JSON-RPC, the web dashboard).

A front end parses its input, calls ``JobService`` and renders what comes back; it drives no
store and holds no rule of its own. The rules here: a submission's defaults, bulk selection
(``select``: ids plus filters, the statuses a change may take, ``MAX_BULK``), purge (what may
go, and a running job stopped first with ``wait``), waiting for agents to stop and saying how
they ended (``wait_stopped``, ``how_ended``), logs by whole characters, health.

The service answers with domain objects (``Job``, ``Event``, ``HealthReport``, ``PurgeResult``
and the small dataclasses of bridge/answers.py, re-exported here); the stable JSON shapes are
bridge/views.py's. It prints nothing and knows no JSON-RPC.

Errors: only the project's tree (supervisor/errors.py), plus ``UsageError`` and
``LogNotFoundError`` (bridge/answers.py). A ``UsageError`` names parameters as ``{ids}``,
``{statuses}``, ``{older_than_s}`` in its template, and each front end fills in its own
spelling (``render``): the CLI says ``--status``, JSON-RPC ``status``, so the rule is written
once and each text stays the one its users know.

When a supervisor runs in the same process (the stdio bridge), the service wakes it after
every change it makes, so a new job is claimed and a cancel reaches its agent on this tick
rather than at the next poll or heartbeat.
"""

from __future__ import annotations

import builtins
import itertools
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bridge.answers import (
    ChangeResult,
    JobDetail,
    LogChunk,
    LogNotFoundError,
    Queued,
    Reconciliation,
    RunningSupervisor,
    Stopped,
    UsageError,
    how_ended,
    utf8_bounds,
)
from supervisor.errors import (
    IllegalTransitionError,
    JobNotFoundError,
    LeaseLostError,
    StoreError,
    UpdateConflictError,
)
from supervisor.lifecycle import LIVE, TERMINAL, CancelMode, Job, JobSpec, Status
from supervisor.store import JobStore, PurgeResult

if TYPE_CHECKING:  # the engine's heavier modules load only in the methods that use them
    from supervisor.health import HealthReport
    from supervisor.settings import Settings
    from supervisor.workspaces import MirrorInfo, PruneReport, Workspaces

__all__ = [
    "CANCELLABLE",
    "MAX_BULK",
    "RETRYABLE",
    "ChangeResult",
    "JobDetail",
    "JobService",
    "LogChunk",
    "LogNotFoundError",
    "Queued",
    "Reconciliation",
    "RunningSupervisor",
    "Stopped",
    "UsageError",
    "how_ended",
    "utf8_bounds",
]

_PER_JOB_ERRORS: Final = (JobNotFoundError, IllegalTransitionError, UpdateConflictError, LeaseLostError)
"""Errors about one job of a bulk cancel or retry: reported for that id, the others go on.
Anything else (the store is down) ends the whole call: it would fail every id alike."""

CANCELLABLE: Final = frozenset({Status.PENDING, Status.WAITING_RETRY, Status.PREPARING, Status.RUNNING})
"""The statuses a bulk cancel or kill chooses from (and the only ones its filter may name)."""
RETRYABLE: Final = frozenset({Status.FAILED, Status.CANCELLED})
"""The statuses a bulk retry chooses from."""
MAX_BULK: Final = 10_000
"""Most jobs one bulk selection may hold (JSON-RPC purge takes as many ids): a filter that
matches more is refused, so a typo never cancels a whole store by accident."""
STOP_MARGIN_S: Final = 2.0
"""Time allowed past a stop's own duration (heartbeat + grace) for its outcome to be recorded."""
_POLL_LOCAL_S: Final = 0.1
_POLL_SHARED_S: Final = 1.0
"""Waiting without a push channel: how often to look. A shared (remote) store costs a round
trip per look, so it is asked less often; a local SQLite file costs microseconds."""


class JobService:
    """The jobs of one store under one settings: submit, read, change, purge, logs, health.

    ``store`` belongs to the caller (it closes it). ``supervisor`` is the supervisor running in
    this process, if any; a host that starts or loses one later assigns the attribute.
    ``health_ttl_s`` > 0 serves ``health()`` from a snapshot at most that old, dropped on every
    change this service makes or is told of (``note_change``); ``clock`` measures that age.
    Safe to call from several threads as far as the store is.
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        supervisor: RunningSupervisor | None = None,
        health_ttl_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.supervisor = supervisor
        self._health_ttl_s = health_ttl_s
        self._clock = clock
        self._generations = itertools.count(1)  # next() is atomic: no lock for a counter
        self._generation = 0
        self._health: tuple[int, float, HealthReport] | None = None
        self._health_lock = threading.Lock()

    # -- submit and read -----------------------------------------------------------------
    def submit(self, specs: Sequence[JobSpec]) -> builtins.list[int]:
        """Queue jobs; returns their ids in order.

        Every spec is checked against the kinds registry and given its defaults
        (``resolve_spec``: the kind's, then the settings' timeouts) before anything is written,
        then all go in one ``enqueue``: one bad spec queues none. A spec whose ``dedup_key``
        matches a waiting job returns that job's id (the store's rule).
        """
        from supervisor.submission import resolve_spec  # no loop, no pydantic: submit starts fast

        resolved = [resolve_spec(spec, self.settings) for spec in specs]
        if not resolved:
            return []
        ids = self.store.enqueue(resolved)
        self._changed()  # what Supervisor.submit does, for a whole batch at once
        return ids

    def get(self, job_id: int) -> JobDetail:
        """The job and its event log; ``JobNotFoundError`` if there is none."""
        return JobDetail(self.store.get(job_id), self.store.events(job_id))

    def list(
        self,
        statuses: Collection[Status] | None = None,
        *,
        kinds: Collection[str] | None = None,
        repo: str | None = None,
        owner: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Job]:
        """Jobs newest first: ``limit`` of them after skipping ``offset``, only those of
        ``statuses``, ``kinds``, the repository ``repo`` (any form ``submit --repo`` takes, with
        ``owner`` for a bare name) and created in (``created_after``, ``created_before``) (store
        clock) when given. Every filter is the store's, on an index."""
        key = None
        if repo is not None:
            from supervisor.keys import repo_key

            key = repo_key(repo, owner)
        return self.store.list(
            statuses=set(statuses) if statuses else None,
            kinds=set(kinds) if kinds else None,
            concurrency_key=key,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            offset=offset,
        )

    def select(
        self,
        ids: Sequence[int] = (),
        *,
        statuses: Collection[Status] | None = None,
        kinds: Collection[str] | None = None,
        repo: str | None = None,
        owner: str | None = None,
        allowed: frozenset[Status] = CANCELLABLE,
    ) -> builtins.list[int]:
        """The ids of a bulk change: ``ids`` as given, then every job of the ``allowed``
        statuses that matches all the filters given (``statuses`` narrows ``allowed``).

        The rule: give ids or at least one filter; a status filter names only allowed
        statuses; a selection of more than ``MAX_BULK`` jobs is refused whole. ``UsageError``
        names the parameter that breaks it (``{ids}``, ``{statuses}``, ``{kinds}``, ``{repo}``).
        """
        filtered = bool(statuses or kinds or repo is not None)
        if not ids and not filtered:
            raise UsageError(
                "give {ids} or a filter ({statuses}, {kinds}, {repo})",
                param="ids",
                reason="give {ids} or a filter",
            )
        wrong = sorted(set(statuses or ()) - allowed)
        if wrong:
            may = ", ".join(sorted(allowed))
            raise UsageError(
                f"{{statuses}} may only name {may} here, not {', '.join(wrong)}",
                param="statuses",
                reason=f"only {may}",
            )
        chosen = list(dict.fromkeys(ids))
        if filtered:
            jobs = self.list(statuses or allowed, kinds=kinds, repo=repo, owner=owner, limit=MAX_BULK + 1)
            if len(jobs) > MAX_BULK:
                raise UsageError(
                    f"the filters match more than {MAX_BULK} jobs; narrow them "
                    "({statuses}, {kinds}, {repo}) and run it again",
                    param="statuses",
                    reason=f"more than {MAX_BULK} jobs match",
                )
            seen = set(chosen)
            chosen += [j.id for j in jobs if j.id not in seen]
        return chosen

    def queued(self, ids: Sequence[int]) -> builtins.list[Queued]:
        """Each job's status and place in the queue (``submit --json``): one ``get`` and one
        ``queue_position`` per job."""
        answers = []
        for job_id in ids:
            job = self.store.get(job_id)
            position = self.store.queue_position(job_id) if job.status is Status.PENDING else None
            now_or_later = job.run_after if job.status is Status.PENDING else None
            run_after = now_or_later if now_or_later is not None and now_or_later > job.created_at else None
            answers.append(Queued(job_id, job.status, position, run_after))
        return answers

    # -- change --------------------------------------------------------------------------
    def cancel(self, ids: Sequence[int], mode: CancelMode = CancelMode.CANCEL) -> builtins.list[ChangeResult]:
        """Cancel each job: a pending or waiting one at once, a live one by a request its
        supervisor carries out (``KILL``: without the grace period). A finished job is refused
        (``IllegalTransitionError``) and a missing one is ``JobNotFoundError``, each in its own
        result; the other ids go on."""
        return self._each(ids, f"{mode.value} requested", lambda i: self.store.request_cancel(i, mode))

    def retry(self, ids: Sequence[int]) -> builtins.list[ChangeResult]:
        """Run each failed or cancelled job again, with a fresh attempt budget. A job in any
        other status is refused (``IllegalTransitionError``) and a missing one is
        ``JobNotFoundError``, each in its own result; the other ids go on."""
        return self._each(ids, "retry requested", self.store.retry)

    def purge(
        self,
        *,
        ids: Collection[int] | None = None,
        statuses: Collection[Status] | None = None,
        older_than_s: float | None = None,
        wait: bool = False,
    ) -> PurgeResult:
        """Delete finished jobs and their events.

        The rule: give ``ids`` or ``statuses``, not both, or ``older_than_s`` alone; without
        ``ids`` and ``statuses`` only terminal jobs are chosen; ``older_than_s`` narrows the
        choice to jobs unchanged for that long (store clock). A chosen live job gets a cancel
        request; with ``wait`` the call waits for its agent to stop (at most ``stop_wait_s``)
        and deletes it too, else it is deleted by a later purge. ``cancel_requested`` holds the
        live jobs left. A ``UsageError`` names the parameter that breaks the rule.
        """
        if not ids and not statuses and older_than_s is None:
            raise UsageError(
                "purge needs {ids}, {statuses} or {older_than_s}",
                param="ids",
                reason="give {ids}, {statuses} or {older_than_s}",
            )
        if ids and statuses:
            raise UsageError(
                "give {ids} or {statuses}, not both",
                param="statuses",
                reason="not allowed together with {ids}",
            )
        result = self.store.purge(
            ids=list(ids) if ids else None,
            statuses=set(statuses) if statuses else (None if ids else TERMINAL),
            older_than_s=older_than_s,
        )
        self._changed()
        self._forget_files(result.deleted)
        if not wait or not result.cancel_requested:
            return result
        live = list(result.cancel_requested)
        self._await(lambda: self._all_stopped(live), self.stop_wait_s)
        settled = [j.id for j in map(self._get_or_none, live) if j is not None and j.status not in LIVE]
        later = self.store.purge(ids=settled) if settled else PurgeResult((), ())
        self._changed()
        self._forget_files(later.deleted)
        still = tuple(i for i in live if i not in later.deleted)
        return PurgeResult(result.deleted + later.deleted, still)

    def _forget_files(self, job_ids: Sequence[int]) -> None:
        """A purged job's run dirs and logs go with its row (those of this store only)."""
        if not job_ids:
            return
        from supervisor.datadir import DataDir
        from supervisor.retention import remove_job_files

        datadir = DataDir.at(self.settings.data_dir)
        try:
            datadir = datadir.for_store(self.store.identity())
        except StoreError:
            return  # which store's files they are is unknown: retention takes them later
        remove_job_files(datadir, job_ids)

    # -- waiting ---------------------------------------------------------------------------
    @property
    def stop_wait_s(self) -> float:
        """How long stopping a running agent may take: its supervisor learns of the request
        at its next heartbeat (at once when the store pushes changes), then SIGTERM, the grace
        period, SIGKILL; plus a margin for the outcome to reach the store."""
        return self.settings.heartbeat_s + self.settings.stop_grace_s + STOP_MARGIN_S

    def wait_stopped(
        self, results: Sequence[ChangeResult], *, timeout_s: float | None = None
    ) -> builtins.list[Stopped]:
        """Wait until no job of a cancel or kill still has an agent (at most ``timeout_s``,
        default ``stop_wait_s``), then say how each one ended, from its events and their facts.
        A job the cancel refused because it had already ended counts as stopped."""
        timeout = self.stop_wait_s if timeout_s is None else timeout_s
        ids = [r.job_id for r in results if r.error is None]
        started = self._clock()
        self._await(lambda: self._all_stopped(ids), timeout)
        waited = self._clock() - started
        answers = []
        for r in results:
            if isinstance(r.error, IllegalTransitionError):
                job = self._get_or_none(r.job_id)
                status = job.status.value if job is not None else "gone"
                answers.append(Stopped(r.job_id, True, f"already finished ({status})", job))
                continue
            if r.error is not None:
                answers.append(Stopped(r.job_id, False, str(r.error)))
                continue
            job = self._get_or_none(r.job_id)
            if job is None:
                answers.append(Stopped(r.job_id, True, "stopped; the job has since been purged"))
            elif job.status in LIVE:
                answers.append(Stopped(r.job_id, False, f"still running after {waited:.0f} s", job))
            else:
                answers.append(
                    Stopped(r.job_id, True, how_ended(r.before, job, self.store.events(job.id)), job)
                )
        return answers

    def _get_or_none(self, job_id: int) -> Job | None:
        try:
            return self.store.get(job_id)
        except JobNotFoundError:
            return None

    def _all_stopped(self, ids: Sequence[int]) -> bool:
        """No job of ``ids`` holds an agent: one ``list`` of the live jobs (few: at most the
        running agents of every supervisor) however many ids a bulk change waits for."""
        if not ids:
            return True
        live = {j.id for j in self.store.list(statuses=LIVE)}
        return live.isdisjoint(ids)

    def _await(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``done()`` (at most ``timeout_s``): woken by the store's push channel
        when it has one, else looking again every ``_POLL_*_S``. True when it came true."""
        woken = threading.Event()
        handle = self.store.watch(lambda _due: woken.set())
        poll = _POLL_SHARED_S if self.store.shared else _POLL_LOCAL_S
        deadline = self._clock() + timeout_s
        try:
            while True:
                if done():
                    return True
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                pushed = handle is not None and handle.live
                # with a live push channel a look is only needed when woken; a wake-up lost
                # to a race is caught by the slower look
                woken.wait(min(remaining, poll * 10 if pushed else poll))
                woken.clear()
        finally:
            if handle is not None:
                handle.close()

    def note_change(self) -> None:
        """Something else changed the store (the supervisor's ``on_change``): the next
        ``health()`` reads it afresh."""
        self._generation = next(self._generations)

    # -- logs ----------------------------------------------------------------------------
    def logs(
        self,
        job_id: int,
        *,
        attempt: int | None = None,
        offset: int | None = None,
        limit: int | None = None,
        whole_characters: bool = True,
    ) -> LogChunk:
        """Up to ``limit`` bytes (None: all) of an attempt's log (default: the latest attempt)
        from ``offset`` (None: the last ``limit`` bytes, the tail).

        With ``whole_characters`` the chunk never starts or ends inside a UTF-8 character: a
        tail drops the partial character it starts in, and the end of a live attempt's log
        holds back a character the agent has not finished writing (read it from
        ``next_offset``). Without, the bytes are exactly the file's (a byte stream).
        ``LogNotFoundError`` if the job never ran or the log file does not exist;
        ``JobNotFoundError`` if there is no such job.
        """
        job = self.store.get(job_id)
        wanted = attempt or job.attempt
        if wanted == 0:
            raise LogNotFoundError(f"job {job_id} has not run yet; no log", job=job, attempt=0, path=None)
        path = self._log_path(job_id, wanted)
        try:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = (max(0, size - limit) if limit is not None else 0) if offset is None else offset
                f.seek(start)
                data = f.read(-1 if limit is None else limit)
        except FileNotFoundError:
            raise LogNotFoundError(
                f"no log for job {job_id} at {path}", job=job, attempt=wanted, path=path
            ) from None
        size = max(size, start + len(data))  # it grew between fstat and read
        if whole_characters:
            live = job.status in LIVE and wanted == job.attempt
            begin, end = utf8_bounds(data, skip_head=offset is None and start > 0, hold_tail=live)
            data, start = data[begin:end], start + begin
        return LogChunk(job=job, attempt=wanted, path=path, data=data, offset=start, size=size)

    def _log_path(self, job_id: int, attempt: int) -> Path:
        """The log file of an attempt, as recorded when it started; the data dir's default
        place (``DataDir.log_path``) for an attempt without a recorded path."""
        for event in reversed(self.store.events(job_id)):
            path = event.facts.get("log_path")
            if path and event.attempt == attempt:
                return Path(path)
        from supervisor.datadir import DataDir

        return DataDir.at(self.settings.data_dir).log_path(job_id, attempt)

    # -- health and reconcile ------------------------------------------------------------
    def health(self) -> HealthReport:
        """The health report of the data dir's supervisor and the queue (``health --json``);
        from a snapshot at most ``health_ttl_s`` old when that is set."""
        if self._health_ttl_s <= 0:
            return self._health_report()
        generation = self._generation
        with self._health_lock:
            cached = self._health
            if (
                cached is not None
                and cached[0] == generation
                and self._clock() - cached[1] < self._health_ttl_s
            ):
                return cached[2]
            report = self._health_report()
            self._health = (generation, self._clock(), report)
            return report

    def _health_report(self) -> HealthReport:
        from supervisor.datadir import DataDir
        from supervisor.health import check_health, read_status
        from supervisor.outbox import outbox_depth
        from supervisor.recovery import read_worker_id

        data = DataDir.at(self.settings.data_dir)
        return check_health(
            self.store,
            self.settings,
            worker_id=read_worker_id(self.settings),
            outbox_depth=outbox_depth(data.outbox),
            status=read_status(data.root),
        )

    def finished_since(self, since: float, *, limit: int) -> builtins.list[Job]:
        """Jobs that reached completed, failed or cancelled at or after ``since`` (store clock),
        newest first, at most ``limit`` (the dashboard's throughput chart and metrics), through
        the store's ``finished_after`` filter, which has an index on finished_at."""
        return self.store.list(statuses=TERMINAL, finished_after=since, limit=limit)

    def reconcile(self, *, subreaper: bool = False) -> Reconciliation:
        """Settle the agents a crashed supervisor left on this data dir (adopt or kill them,
        record their outcomes), then release the data dir.

        A supervisor running in this process did that when it started and keeps agents and
        store in agreement while it runs: then nothing is done (``ran`` False). Otherwise the
        data dir's lock is taken for a moment (``DataDirLockedError`` while another supervisor
        holds it). ``subreaper`` only in a process that is nothing but this command (the CLI).
        """
        if self.supervisor is not None:
            return Reconciliation(ran=False, decisions=[], outbox_depth=0)
        from bridge.compose import build_supervisor

        sup = build_supervisor(
            self.settings, store=self.store, install_signal_handlers=False, subreaper=subreaper
        )
        decisions = sup.reconcile()
        self._changed()
        return Reconciliation(ran=True, decisions=decisions, outbox_depth=sup.outbox_depth)

    # -- workspaces ----------------------------------------------------------------------
    def workspaces(self) -> builtins.list[MirrorInfo]:
        """The repository mirrors held in the data dir, each with the jobs holding a
        worktree of it. Reads a few small files and sizes the mirrors: no git, no store."""
        return self._workspaces().mirrors()

    def prune_workspaces(self) -> PruneReport:
        """Apply the workspace retention policy now (what the supervisor's retention pass
        does): finished worktrees, mirrors unused past ``workspace_max_age_s`` or beyond
        ``workspace_max_bytes``. Keeps the worktree of every job the store has preparing or
        running, whoever runs it, so it needs the store: a ``StoreError`` rather than a guess."""
        from supervisor.workspaces import live_attempts

        return self._workspaces().prune(live=live_attempts(self.store))

    def _workspaces(self) -> Workspaces:
        from supervisor.datadir import DataDir
        from supervisor.workspaces import Workspaces, WorkspaceSettings

        return Workspaces(
            DataDir.at(self.settings.data_dir).workspaces,
            settings=WorkspaceSettings.from_settings(self.settings),
        )

    # -- internals -----------------------------------------------------------------------
    def _each(
        self, ids: Sequence[int], reason: str, change: Callable[[int], Job]
    ) -> builtins.list[ChangeResult]:
        results = []
        for job_id in ids:
            before: Status | None = None
            try:
                before = self.store.get(job_id).status
                job = change(job_id)
            except _PER_JOB_ERRORS as exc:
                results.append(ChangeResult(job_id, reason, before=before, error=exc))
            else:
                results.append(ChangeResult(job_id, reason, job=job, before=before))
        if any(r.error is None for r in results):
            self._changed()
        return results

    def _changed(self) -> None:
        """A change of ours: drop the health snapshot, wake the supervisor of this process."""
        self.note_change()
        supervisor = self.supervisor
        if supervisor is not None:
            supervisor.wake()
