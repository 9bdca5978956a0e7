"""JobService: every rule the front ends share, against a MemoryStore and a manual clock."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.service import JobService, LogNotFoundError, UsageError, how_ended
from supervisor.errors import (
    DataDirLockedError,
    IllegalTransitionError,
    InvalidJobError,
    JobNotFoundError,
    StoreUnavailableError,
)
from supervisor.lifecycle import CancelMode, DecidedBy, ErrorKind, Event, Job, JobSpec, Outcome, Status
from supervisor.settings import KindConfig, Settings
from supervisor.testing import ManualClock, MemoryStore


class Waker:
    """Stands for a supervisor running in the service's process: counts its wake-ups."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


class CountingStore(MemoryStore):
    """A MemoryStore that counts enqueue calls and can be made unreachable."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.enqueues = 0
        self.down = False

    def enqueue(self, specs: object) -> list[int]:
        self.enqueues += 1
        return super().enqueue(specs)  # type: ignore[arg-type]

    def request_cancel(self, job_id: int, mode: CancelMode = CancelMode.CANCEL) -> Job:
        if self.down:
            raise StoreUnavailableError("store down")
        return super().request_cancel(job_id, mode)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> CountingStore:
    return CountingStore(clock)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    kinds = {"summarize": KindConfig(argv=["summarize"], timeout_s=60, idle_timeout_s=5)}
    return Settings(data_dir=tmp_path, default_timeout_s=900, kinds=kinds)


@pytest.fixture
def service(settings: Settings, store: CountingStore, clock: ManualClock) -> JobService:
    return JobService(settings, store, clock=clock)


def cmd(**fields: object) -> JobSpec:
    return JobSpec(command=("true",), **fields)  # type: ignore[arg-type]


def running(store: MemoryStore, **fields: object) -> Job:
    store.enqueue([cmd(**fields)])
    [job] = store.claim("w", 1, lease_s=30)
    return store.mark_running(job.id, "w", job.attempt, pid=4242, facts=None)


def failed(store: MemoryStore) -> Job:
    job = running(store, max_attempts=1)
    return store.finish(job.id, "w", job.attempt, Outcome(error_kind=ErrorKind.EXIT_CODE, exit_code=3))


# -- submit --------------------------------------------------------------------------------
def test_submit_fills_in_the_kinds_then_the_settings_defaults(
    service: JobService, store: MemoryStore
) -> None:
    """A kind's timeouts apply where the spec has none; a command gets default_timeout_s."""
    kind_id, cmd_id = service.submit([JobSpec(kind="summarize"), cmd()])
    assert (store.get(kind_id).timeout_s, store.get(kind_id).idle_timeout_s) == (60, 5)
    assert (store.get(cmd_id).timeout_s, store.get(cmd_id).idle_timeout_s) == (900, None)


def test_submit_refuses_an_unknown_kind_and_queues_none_of_the_batch(
    service: JobService, store: CountingStore
) -> None:
    """One spec of an unregistered kind fails the whole batch before anything is written."""
    with pytest.raises(InvalidJobError, match="unknown kind 'ghost'"):
        service.submit([cmd(), JobSpec(kind="ghost")])
    assert store.list() == [] and store.enqueues == 0


def test_submit_queues_a_batch_in_one_enqueue(service: JobService, store: CountingStore) -> None:
    """A batch is one enqueue call, and the ids come back in order."""
    ids = service.submit([cmd(priority=p) for p in range(5)])
    assert store.enqueues == 1
    assert [store.get(i).priority for i in ids] == list(range(5))


def test_submit_of_nothing_touches_nothing(service: JobService, store: CountingStore) -> None:
    """An empty batch returns no ids and makes no store call."""
    assert service.submit([]) == [] and store.enqueues == 0


def test_submit_wakes_the_supervisor_of_this_process(settings: Settings, store: CountingStore) -> None:
    """With a supervisor in the process, each submit wakes its loop once."""
    waker = Waker()
    service = JobService(settings, store, supervisor=waker)
    service.submit([cmd(), cmd()])
    assert waker.wakes == 1


# -- read ----------------------------------------------------------------------------------
def test_get_is_the_job_and_its_event_log(service: JobService, store: MemoryStore) -> None:
    """get answers the job with its events, oldest first; a missing id is JobNotFoundError."""
    job = running(store)
    detail = service.get(job.id)
    assert detail.job == store.get(job.id)
    assert [e.to_status for e in detail.events] == [Status.PENDING, Status.PREPARING, Status.RUNNING]
    with pytest.raises(JobNotFoundError):
        service.get(99)


def test_list_filters_by_status_and_pages_newest_first(service: JobService, store: MemoryStore) -> None:
    """list: newest first, only the given statuses, limit after skipping offset."""
    ids = store.enqueue([cmd() for _ in range(5)])
    store.request_cancel(ids[1])
    assert [j.id for j in service.list(limit=2)] == [5, 4]
    assert [j.id for j in service.list(limit=2, offset=3)] == [2, 1]
    assert [j.id for j in service.list({Status.CANCELLED})] == [2]
    assert [j.id for j in service.list([Status.PENDING], offset=1, limit=2)] == [4, 3]


# -- cancel and retry ----------------------------------------------------------------------
def test_cancel_of_a_pending_job_cancels_it_at_once(service: JobService, store: MemoryStore) -> None:
    """A pending job is cancelled by the call itself, and the result says what it was before."""
    [job_id] = store.enqueue([cmd()])
    [result] = service.cancel([job_id])
    assert (result.before, result.unwrap().status, result.reason) == (
        Status.PENDING,
        Status.CANCELLED,
        "cancel requested",
    )


def test_kill_of_a_running_job_flags_it_for_its_supervisor(service: JobService, store: MemoryStore) -> None:
    """A live job stays running with cancel_requested set to the mode, for its supervisor."""
    job = running(store)
    [result] = service.cancel([job.id], CancelMode.KILL)
    after = result.unwrap()
    assert (result.before, after.status, after.cancel_requested) == (
        Status.RUNNING,
        Status.RUNNING,
        CancelMode.KILL,
    )
    assert result.reason == "kill requested"


def test_bulk_cancel_reports_each_id_and_one_bad_id_hides_nothing(
    service: JobService, store: MemoryStore
) -> None:
    """A missing and a finished job fail in their own results; the other ids are cancelled."""
    first, done, last = store.enqueue([cmd(), cmd(), cmd()])
    store.force(done, status=Status.COMPLETED)
    results = service.cancel([first, 99, done, last])
    assert [r.job_id for r in results] == [first, 99, done, last]
    assert isinstance(results[1].error, JobNotFoundError)
    assert isinstance(results[2].error, IllegalTransitionError)
    assert store.get(first).status is store.get(last).status is Status.CANCELLED
    with pytest.raises(JobNotFoundError):
        results[1].unwrap()


def test_a_store_outage_ends_a_bulk_cancel(service: JobService, store: CountingStore) -> None:
    """An unreachable store is not one job's problem: the call raises instead of N results."""
    ids = store.enqueue([cmd(), cmd()])
    store.down = True
    with pytest.raises(StoreUnavailableError):
        service.cancel(ids)


def test_retry_requeues_failed_jobs_and_reports_refusals_per_id(
    service: JobService, store: MemoryStore
) -> None:
    """retry: a failed job becomes pending; a pending one is refused in its own result."""
    job = failed(store)
    [pending] = store.enqueue([cmd()])
    ok, refused = service.retry([job.id, pending])
    assert (ok.before, ok.unwrap().status, ok.reason) == (Status.FAILED, Status.PENDING, "retry requested")
    assert isinstance(refused.error, IllegalTransitionError) and refused.job is None


def test_changes_wake_the_supervisor_only_when_something_changed(
    settings: Settings, store: MemoryStore
) -> None:
    """A cancel or retry that changed a job wakes the loop once; one that changed nothing does not."""
    waker = Waker()
    service = JobService(settings, store, supervisor=waker)
    ids = store.enqueue([cmd(), cmd()])
    service.cancel(ids)
    assert waker.wakes == 1
    service.cancel([99])
    assert waker.wakes == 1
    service.retry(ids)
    assert waker.wakes == 2


# -- purge ---------------------------------------------------------------------------------
def test_purge_needs_ids_statuses_or_an_age(service: JobService) -> None:
    """With nothing to choose by, purge is a usage error pointing at ids."""
    with pytest.raises(UsageError) as info:
        service.purge()
    assert info.value.param == "ids"
    assert str(info.value) == "purge needs ids, statuses or older_than_s"


def test_purge_refuses_ids_with_statuses(service: JobService, store: MemoryStore) -> None:
    """ids and statuses together are a usage error pointing at statuses; nothing is deleted."""
    [job_id] = store.enqueue([cmd()])
    with pytest.raises(UsageError) as info:
        service.purge(ids=[job_id], statuses=[Status.PENDING])
    assert (info.value.param, str(info.value)) == ("statuses", "give ids or statuses, not both")
    assert store.get(job_id).status is Status.PENDING


def test_purge_by_age_alone_deletes_only_finished_jobs(
    service: JobService, store: MemoryStore, clock: ManualClock
) -> None:
    """older_than_s without ids or statuses chooses terminal jobs unchanged for that long."""
    old_done, old_pending = store.enqueue([cmd(), cmd()])
    store.request_cancel(old_done)
    clock.advance(3600)
    [new_done] = store.enqueue([cmd()])
    store.request_cancel(new_done)
    result = service.purge(older_than_s=600)
    assert (result.deleted, result.cancel_requested) == ((old_done,), ())
    assert {j.id for j in store.list()} == {old_pending, new_done}


def test_purge_by_ids_takes_any_status_and_flags_live_jobs(service: JobService, store: MemoryStore) -> None:
    """Named jobs go whatever their status; a running one gets a cancel request and stays."""
    live = running(store)
    [pending] = store.enqueue([cmd()])
    result = service.purge(ids=[pending, live.id])
    assert (result.deleted, result.cancel_requested) == ((pending,), (live.id,))
    assert store.get(live.id).cancel_requested is CancelMode.CANCEL


def test_purge_by_status_deletes_that_status_only(service: JobService, store: MemoryStore) -> None:
    """statuses choose exactly those statuses (a failed job stays when only cancelled go)."""
    job = failed(store)
    [cancelled] = store.enqueue([cmd()])
    store.request_cancel(cancelled)
    assert service.purge(statuses=[Status.CANCELLED]).deleted == (cancelled,)
    assert [j.id for j in store.list()] == [job.id]


def test_usage_error_speaks_each_front_ends_names(service: JobService) -> None:
    """render() spells the parameters as the caller says; unnamed ones keep the service's name."""
    with pytest.raises(UsageError) as info:
        service.purge()
    names = {"ids": "job ids", "statuses": "--status"}
    assert info.value.render(names) == "purge needs job ids, --status or older_than_s"
    assert info.value.render(names, reason=True) == "give job ids, --status or older_than_s"


# -- logs ----------------------------------------------------------------------------------
def write_log(settings: Settings, job: Job, data: bytes, attempt: int | None = None) -> Path:
    path = Path(settings.data_dir) / "logs" / f"{job.id}-{attempt or job.attempt}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_logs_of_a_job_that_never_ran(service: JobService, store: MemoryStore) -> None:
    """A job without an attempt has no log: LogNotFoundError with attempt 0 and no path."""
    [job_id] = store.enqueue([cmd()])
    with pytest.raises(LogNotFoundError, match="has not run yet") as info:
        service.logs(job_id)
    assert (info.value.attempt, info.value.path) == (0, None)


def test_logs_with_a_missing_file_name_the_path(
    service: JobService, store: MemoryStore, settings: Settings
) -> None:
    """An attempt whose log file does not exist: LogNotFoundError naming the expected path."""
    job = running(store)
    with pytest.raises(LogNotFoundError) as info:
        service.logs(job.id)
    expected = Path(settings.data_dir) / "logs" / f"{job.id}-1.log"
    assert (info.value.attempt, info.value.path, info.value.job.id) == (1, expected, job.id)
    assert str(info.value) == f"no log for job {job.id} at {expected}"


def test_logs_use_the_path_recorded_when_the_attempt_started(
    service: JobService, store: MemoryStore, tmp_path: Path
) -> None:
    """The log_path fact of the attempt's start wins over the data dir's default place."""
    store.enqueue([cmd()])
    [job] = store.claim("w", 1, lease_s=30)
    elsewhere = tmp_path / "elsewhere.log"
    elsewhere.write_bytes(b"from the recorded file\n")
    store.mark_running(job.id, "w", job.attempt, pid=1, facts={"log_path": str(elsewhere)})
    chunk = service.logs(job.id)
    assert (chunk.path, chunk.data) == (elsewhere, b"from the recorded file\n")


def test_logs_tail_and_pages_never_split_a_character(
    service: JobService, store: MemoryStore, settings: Settings
) -> None:
    """The tail skips a partial first character; a live log holds back an unfinished last one."""
    job = running(store)
    write_log(settings, job, "é".encode() * 10 + "😀".encode()[:2])  # 22 bytes, ends mid-character
    tail = service.logs(job.id, limit=17)  # starts at byte 5, inside an é
    assert (tail.data.decode(), tail.offset, tail.next_offset, tail.eof, tail.size) == (
        "é" * 7,
        6,
        20,
        False,
        22,
    )
    page = service.logs(job.id, offset=0, limit=17)
    assert (page.data.decode(), page.next_offset) == ("é" * 8, 16)


def test_a_finished_logs_last_bytes_are_final(
    service: JobService, store: MemoryStore, settings: Settings
) -> None:
    """Once the job has ended nothing is held back: the broken character is returned as is."""
    job = running(store)
    write_log(settings, job, b"ab" + "😀".encode()[:2])
    store.force(job.id, status=Status.FAILED)
    chunk = service.logs(job.id, offset=0)
    assert (chunk.data, chunk.eof) == (b"ab\xf0\x9f", True)


def test_logs_without_whole_characters_are_the_files_bytes(
    service: JobService, store: MemoryStore, settings: Settings
) -> None:
    """whole_characters=False: exactly the file's bytes from offset to the end, even mid-character."""
    job = running(store)
    data = "é".encode() * 3 + "😀".encode()[:2]
    write_log(settings, job, data)
    chunk = service.logs(job.id, offset=1, whole_characters=False)
    assert (chunk.data, chunk.offset, chunk.eof) == (data[1:], 1, True)


def test_logs_read_an_earlier_attempt_when_asked(
    service: JobService, store: MemoryStore, settings: Settings
) -> None:
    """attempt picks an older attempt's file; by default the latest attempt's is read."""
    job = failed(store)
    store.retry(job.id)
    [again] = store.claim("w", 1, lease_s=30)
    write_log(settings, job, b"first\n", attempt=1)
    write_log(settings, again, b"second\n")
    assert service.logs(job.id, attempt=1).data == b"first\n"
    latest = service.logs(job.id)
    assert (latest.attempt, latest.data) == (again.attempt, b"second\n")


# -- health and reconcile ------------------------------------------------------------------
def test_health_counts_the_queue(service: JobService, store: MemoryStore) -> None:
    """health reports the store's counts and, with no supervisor running, says so."""
    store.enqueue([cmd(), cmd()])
    running(store)
    report = service.health()
    assert (report.pending, report.running, report.supervisor_running) == (2, 1, False)
    assert "no_supervisor" in [a.kind for a in report.alerts]


def test_health_without_a_ttl_is_always_fresh(service: JobService, store: MemoryStore) -> None:
    """With no health_ttl_s every call reads the store again."""
    first = service.health()
    store.enqueue([cmd()])
    assert service.health() is not first and service.health().pending == 1


def test_health_snapshot_lasts_its_ttl(settings: Settings, store: MemoryStore, clock: ManualClock) -> None:
    """With health_ttl_s the same report is served until it is that old."""
    service = JobService(settings, store, health_ttl_s=0.5, clock=clock)
    first = service.health()
    clock.advance(0.4)
    assert service.health() is first
    clock.advance(0.2)
    assert service.health() is not first


def test_health_snapshot_is_dropped_on_every_change(
    settings: Settings, store: MemoryStore, clock: ManualClock
) -> None:
    """A submit, a cancel, a purge of this service, or note_change, make the next report fresh."""
    service = JobService(settings, store, health_ttl_s=60, clock=clock)
    stale = service.health()
    [job_id] = service.submit([cmd()])
    assert service.health().pending == 1
    service.cancel([job_id])
    assert service.health().cancelled == 1
    service.purge(ids=[job_id])
    assert service.health().cancelled == 0
    stale = service.health()
    store.enqueue([cmd()])  # behind the service's back: the snapshot stays
    assert service.health() is stale
    service.note_change()
    assert service.health().pending == 1


def test_finished_since_reads_only_the_window(
    service: JobService, store: MemoryStore, clock: ManualClock
) -> None:
    """finished_since: jobs that ended (completed, failed, cancelled) at or after the time,
    newest first, at most ``limit``; older finishes and unfinished jobs are left out."""
    early, late, retried, waiting = store.enqueue([cmd() for _ in range(4)])
    service.cancel([early])
    clock.advance(100)
    since = store.now()
    service.cancel([late])
    service.cancel([retried])
    service.retry([retried])  # pending again: not finished
    assert [j.id for j in service.finished_since(since, limit=10)] == [late]
    assert [j.id for j in service.finished_since(since - 100, limit=10)] == [late, early]
    assert [j.id for j in service.finished_since(since - 100, limit=1)] == [late]
    assert waiting not in [j.id for j in service.finished_since(0, limit=10)]


def test_reconcile_runs_once_on_the_data_dir(service: JobService, settings: Settings) -> None:
    """Without a supervisor here, reconcile takes the data dir for a moment and reports."""
    result = service.reconcile()
    assert (result.ran, result.decisions, result.outbox_depth) == (True, [], 0)
    assert (Path(settings.data_dir) / "supervisor.lock").exists()


def test_reconcile_is_refused_while_another_supervisor_holds_the_data_dir(
    service: JobService, settings: Settings
) -> None:
    """A data dir locked by another supervisor makes reconcile a DataDirLockedError."""
    from supervisor.datadir import DataDirLock, prepare_data_dir

    lock = DataDirLock(prepare_data_dir(settings.data_dir))
    lock.acquire()
    try:
        with pytest.raises(DataDirLockedError):
            service.reconcile()
    finally:
        lock.release()


def test_reconcile_does_nothing_while_a_supervisor_runs_here(settings: Settings, store: MemoryStore) -> None:
    """With a supervisor in the process, reconcile does not run (that supervisor did, on start)."""
    service = JobService(settings, store, supervisor=Waker())
    assert service.reconcile().ran is False
    assert not (Path(settings.data_dir) / "supervisor.lock").exists()


# -- bulk selection ---------------------------------------------------------------------------
def test_select_takes_ids_as_given_then_the_filters_matches(service: JobService, store: MemoryStore) -> None:
    """Ids keep their order; a status filter adds every job in it, newest first, without
    repeating an id."""
    live = running(store)
    a, b, c = store.enqueue([cmd(), cmd(), cmd()])
    assert service.select([c]) == [c]
    assert service.select([b], statuses=[Status.PENDING]) == [b, c, a]
    assert service.select(statuses=[Status.RUNNING]) == [live.id]


def test_select_without_a_status_takes_every_allowed_one(service: JobService, store: MemoryStore) -> None:
    """A filter chooses among the allowed statuses only: a bulk retry never picks a pending
    job, a bulk cancel never a finished one."""
    from bridge.service import CANCELLABLE, RETRYABLE

    done = failed(store)
    live = running(store)
    [pending] = store.enqueue([cmd(priority=1)])
    assert service.select(statuses=[Status.FAILED], allowed=RETRYABLE) == [done.id]
    assert sorted(service.select(statuses=sorted(CANCELLABLE))) == sorted([live.id, pending])
    assert done.id not in service.select(statuses=[Status.PENDING, Status.RUNNING])


def test_select_needs_ids_or_a_filter(service: JobService) -> None:
    """Neither ids nor a filter is a usage error pointing at ids (never 'all jobs')."""
    with pytest.raises(UsageError) as info:
        service.select([])
    assert info.value.param == "ids"
    assert info.value.render({"ids": "job ids", "statuses": "--status"}).startswith(
        "give job ids or a filter"
    )


def test_select_refuses_a_status_the_change_cannot_take(service: JobService) -> None:
    """Retry by --status completed is refused, naming the allowed statuses."""
    from bridge.service import RETRYABLE

    with pytest.raises(UsageError, match="may only name cancelled, failed here, not completed") as info:
        service.select(statuses=[Status.COMPLETED], allowed=RETRYABLE)
    assert info.value.param == "statuses"


def test_select_refuses_more_than_max_bulk(
    service: JobService, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter matching more than MAX_BULK jobs refuses the whole selection."""
    import bridge.service

    monkeypatch.setattr(bridge.service, "MAX_BULK", 2)
    store.enqueue([cmd(), cmd(), cmd()])
    with pytest.raises(UsageError, match="more than 2 jobs"):
        service.select(statuses=[Status.PENDING])


# -- waiting for agents to stop ---------------------------------------------------------------
SIGTERM_END = Outcome(
    error_kind=ErrorKind.CANCELLED,
    error="cancelled while running; killed by SIGTERM",
    signal=15,
    decided_by=DecidedBy.CANCEL,
    facts={"signals": [{"signal": "SIGTERM", "why": "cancel"}]},
)


def settle_later(store: MemoryStore, job: Job, outcome: Outcome, after_s: float = 0.05) -> threading.Timer:
    """Stands for the job's supervisor: records the outcome a moment after the request."""
    timer = threading.Timer(after_s, lambda: store.finish(job.id, "w", job.attempt, outcome))
    timer.start()
    return timer


def ticking_clock(step: float = 1.0) -> Callable[[], float]:
    """A clock that moves ``step`` seconds at every reading: deadlines pass without waiting."""
    counter = itertools.count()
    return lambda: next(counter) * step


@pytest.mark.parametrize(
    ("before", "status", "facts", "expected"),
    [
        (
            Status.RUNNING,
            Status.CANCELLED,
            {"signal": 15, "signals": [{"signal": "SIGTERM"}]},
            "stopped by SIGTERM",
        ),
        (
            Status.RUNNING,
            Status.CANCELLED,
            {"signal": 9, "signals": [{"signal": "SIGTERM"}, {"signal": "SIGKILL"}]},
            "killed by SIGKILL",
        ),
        (
            Status.RUNNING,
            Status.CANCELLED,
            {"signal": 9, "signals": [{"signal": "SIGKILL"}]},
            "killed by SIGKILL",
        ),
        (
            Status.RUNNING,
            Status.CANCELLED,
            {"exit_code": 0, "signals": [{"signal": "SIGTERM"}]},
            "exited with code 0 after SIGTERM",
        ),
        (
            Status.RUNNING,
            Status.COMPLETED,
            {"exit_code": 0, "signals": []},
            "finished on its own before the request reached it (completed, exit code 0)",
        ),
        (Status.PENDING, Status.CANCELLED, {}, "cancelled before it ran"),
        (Status.COMPLETED, Status.COMPLETED, {}, "already finished (completed)"),
    ],
)
def test_how_ended_reads_the_settling_events_facts(
    before: Status, status: Status, facts: dict[str, object], expected: str
) -> None:
    """The words for how a stop ended come from the status before and the settle's facts."""
    job = Job(id=1, status=status, created_at=0.0, updated_at=0.0)
    events = [
        Event(1, 0.0, Status.PREPARING, Status.RUNNING, "agent started", DecidedBy.SPAWN),
        Event(1, 1.0, Status.RUNNING, status, "whatever", DecidedBy.CANCEL, facts=facts),
    ]
    assert how_ended(before, job, events) == expected


def test_wait_stopped_returns_once_the_agent_is_gone_and_says_how(
    service: JobService, store: MemoryStore
) -> None:
    """cancel --wait: the supervisor stops the agent by SIGTERM; the wait says so."""
    job = running(store)
    results = service.cancel([job.id])
    timer = settle_later(store, job, SIGTERM_END)
    try:
        [stopped] = service.wait_stopped(results, timeout_s=30)
    finally:
        timer.join()
    assert (stopped.stopped, stopped.how, stopped.job and stopped.job.status) == (
        True,
        "stopped by SIGTERM",
        Status.CANCELLED,
    )


def test_wait_stopped_counts_a_finished_job_as_stopped(service: JobService, store: MemoryStore) -> None:
    """A cancel refused because the job had ended is 'already finished', not an error."""
    done = failed(store)
    [stopped] = service.wait_stopped(service.cancel([done.id]), timeout_s=1)
    assert (stopped.stopped, stopped.how) == (True, "already finished (failed)")


def test_wait_stopped_gives_up_at_its_deadline(settings: Settings, store: MemoryStore) -> None:
    """With no supervisor to stop it, the wait ends at the deadline and says it still runs."""
    service = JobService(settings, store, clock=ticking_clock())
    job = running(store)
    [stopped] = service.wait_stopped(service.cancel([job.id]), timeout_s=3)
    assert not stopped.stopped and stopped.how.startswith("still running after")


def test_stop_wait_covers_heartbeat_grace_and_a_margin(service: JobService, settings: Settings) -> None:
    """The default wait is one heartbeat (the request's way to the agent) + grace + margin."""
    from bridge.service import STOP_MARGIN_S

    assert service.stop_wait_s == settings.heartbeat_s + settings.stop_grace_s + STOP_MARGIN_S


# -- purge of running jobs --------------------------------------------------------------------
def test_purge_with_wait_stops_a_running_job_and_deletes_it(service: JobService, store: MemoryStore) -> None:
    """purge of a running job: cancel requested, waited for, then deleted — in one call."""
    job = running(store)
    timer = settle_later(store, job, SIGTERM_END)
    try:
        result = service.purge(ids=[job.id], wait=True)
    finally:
        timer.join()
    assert (result.deleted, result.cancel_requested) == ((job.id,), ())
    with pytest.raises(JobNotFoundError):
        store.get(job.id)


def test_purge_with_wait_leaves_a_job_that_did_not_stop_in_time(
    settings: Settings, store: MemoryStore
) -> None:
    """A job still running at the deadline keeps its cancel request and is reported, not deleted."""
    service = JobService(settings, store, clock=ticking_clock())
    job = running(store)
    result = service.purge(ids=[job.id], wait=True)
    assert (result.deleted, result.cancel_requested) == ((), (job.id,))
    assert store.get(job.id).cancel_requested is CancelMode.CANCEL


# -- store protocol v2: filters and queue places ----------------------------------------------
def test_select_by_kind_and_repo(service: JobService, store: MemoryStore) -> None:
    """--kind and --repo choose jobs of that kind or repository (any spelling of it)."""
    summ, echo = service.submit([JobSpec(kind="summarize"), cmd()])
    [repo_job] = service.submit([JobSpec.from_dict({"command": ["x"], "repo": "octo/notes"})])
    assert service.select(kinds=["summarize"]) == [summ]
    assert service.select(repo="https://github.com/Octo/Notes.git") == [repo_job]
    assert service.select(repo="notes", owner="octo", kinds=["summarize"]) == []
    assert echo not in service.select(kinds=["summarize"], repo="octo/notes")


def test_list_filters_by_creation_time(service: JobService, store: MemoryStore, clock: ManualClock) -> None:
    """created_after/created_before bound the creation time (store clock)."""
    early = service.submit([cmd()])[0]
    clock.advance(100)
    late = service.submit([cmd()])[0]
    assert [j.id for j in service.list(created_after=clock() - 50)] == [late]
    assert [j.id for j in service.list(created_before=clock() - 50)] == [early]


def test_queued_tells_status_place_and_delay(
    service: JobService, store: MemoryStore, clock: ManualClock
) -> None:
    """submit --json's answer: pending jobs have a 1-based place in claim order; a delayed one
    says when it runs; one that is not pending has no place."""
    live = running(store)
    low, high = service.submit([cmd(), cmd(priority=9)])
    [later] = service.submit([cmd(run_after=clock() + 600)])
    answers = {q.job_id: q for q in service.queued([low, high, later, live.id])}
    assert (answers[high].queue_position, answers[low].queue_position) == (1, 2)
    assert answers[later].run_after == clock() + 600
    assert answers[low].run_after is None
    assert (answers[live.id].status, answers[live.id].queue_position) == (Status.RUNNING, None)


def test_purge_removes_the_files_of_the_jobs_it_deleted(tmp_path: Path) -> None:
    """A purge takes the deleted jobs' run dirs and logs with their rows, and leaves other
    jobs' files alone."""
    from supervisor.datadir import prepare_data_dir

    store = MemoryStore()
    settings = Settings(data_dir=tmp_path / "d")
    service = JobService(settings, store)
    gone, kept = store.enqueue([JobSpec(command=("x",)), JobSpec(command=("y",))])
    for _ in range(2):
        [job] = store.claim("w", 1, lease_s=30)
        store.finish(job.id, "w", job.attempt, Outcome())
    datadir = prepare_data_dir(tmp_path / "d").for_store(store.identity())
    datadir.prepare_store_dirs()
    for job_id in (gone, kept):
        datadir.attempt_dir(job_id, 1)
        datadir.log_path(job_id, 1).write_text("out\n")
    service.purge(ids=[gone])
    assert not datadir.attempt_path(gone, 1).exists() and not datadir.log_path(gone, 1).exists()
    assert datadir.attempt_path(kept, 1).exists() and datadir.log_path(kept, 1).exists()
