"""Retention: finished attempts' files go after retention_s and under the size cap, oldest
first; live and young ones stay; a purge takes its jobs' files along."""

from __future__ import annotations

import os
import time
from pathlib import Path

from supervisor.clock import SYSTEM_CLOCK
from supervisor.datadir import DataDir, prepare_data_dir
from supervisor.job import JobSpec, Outcome, Status
from supervisor.retention import Retention, RetentionReport, remove_job_files
from supervisor.testing import ManualClock, MemoryStore

DAY = 86400.0


def attempt(
    datadir: DataDir, job_id: int, attempt: int, *, age_s: float, size: int = 100
) -> tuple[Path, Path]:
    """An attempt's run dir and log, last written ``age_s`` ago."""
    run = datadir.attempt_dir(job_id, attempt)
    (run / "payload.json").write_bytes(b"{}")
    datadir.store_logs.mkdir(parents=True, exist_ok=True)
    log = datadir.log_path(job_id, attempt)
    log.write_bytes(b"x" * size)
    then = time.time() - age_s
    for path in (run / "payload.json", run, log):
        os.utime(path, (then, then))
    return run, log


def allocated(run: Path, log: Path) -> int:
    """What an attempt takes on disk: its dir, the files in it and its log, in whole blocks."""
    paths = [run, *run.iterdir(), log]
    return sum(p.lstat().st_blocks * 512 for p in paths)


def retention(
    datadir: DataDir, *, live: set[tuple[int, int]] | None = None, **kw: float | int | None
) -> Retention:
    reports: list[RetentionReport] = []
    args = {"retention_s": 7 * DAY, "files_max_bytes": 0, "every_s": 60.0, "retain_jobs_s": None, **kw}
    return Retention(
        datadir,
        MemoryStore(),
        clock=SYSTEM_CLOCK,
        live=lambda: live or set(),
        on_report=reports.append,
        **args,  # type: ignore[arg-type]
    )


def test_files_older_than_the_retention_go_and_younger_ones_stay(tmp_path: Path) -> None:
    """An 8-day-old attempt's run dir and log are deleted; a 1-day-old one is kept."""
    datadir = prepare_data_dir(tmp_path / "d").for_store("abcdef123456")
    old = attempt(datadir, 1, 1, age_s=8 * DAY)
    young = attempt(datadir, 2, 1, age_s=1 * DAY)
    report = retention(datadir).sweep()
    assert not old[0].exists() and not old[1].exists()
    assert young[0].exists() and young[1].exists()
    assert (report.deleted_attempts, report.attempts) == (1, 1)
    assert report.bytes == allocated(*young) and report.files == 3
    assert report.bytes >= 2 * 4096 > 100 + 2  # blocks, not lengths: a tiny file takes one


def test_a_live_attempt_is_never_deleted_however_old(tmp_path: Path) -> None:
    """An attempt that runs now keeps its files even past the retention and the cap."""
    datadir = prepare_data_dir(tmp_path / "d").for_store("s")
    run, log = attempt(datadir, 5, 2, age_s=30 * DAY, size=5000)
    retention(datadir, live={(5, 2)}, files_max_bytes=10).sweep()
    assert run.exists() and log.exists()


def test_over_the_cap_the_oldest_go_first(tmp_path: Path) -> None:
    """Four attempts of a few bytes each under a cap of two and a half of them, counted as
    they take the disk (blocks): the two oldest go, the two newest stay."""
    datadir = prepare_data_dir(tmp_path / "d").for_store("s")
    made = [attempt(datadir, n, 1, age_s=(10 - n) * 3600, size=10) for n in range(1, 5)]
    each = allocated(*made[0])
    assert all(allocated(*m) == each for m in made)
    report = retention(datadir, files_max_bytes=each * 5 // 2).sweep()
    assert [log.exists() for _, log in made] == [False, False, True, True]
    assert report.bytes == 2 * each and report.deleted_bytes == 2 * each


def test_young_files_are_safe_even_over_the_cap(tmp_path: Path) -> None:
    """Files written in the last two minutes stay (an attempt starting during a sweep)."""
    datadir = prepare_data_dir(tmp_path / "d").for_store("s")
    _, log = attempt(datadir, 1, 1, age_s=5, size=4096)
    retention(datadir, files_max_bytes=1).sweep()
    assert log.exists()


def test_files_of_the_old_flat_layout_are_retained_too(tmp_path: Path) -> None:
    """runs/<job>-<attempt> and logs/<job>-<attempt>.log of an older version are swept."""
    flat = prepare_data_dir(tmp_path / "d")
    old = attempt(flat, 3, 1, age_s=9 * DAY)
    retention(flat.for_store("new")).sweep()
    assert not old[0].exists() and not old[1].exists()


def test_remove_job_files_takes_every_attempt_of_the_jobs(tmp_path: Path) -> None:
    """A purge's file removal deletes all attempts of the named jobs, and nothing else."""
    datadir = prepare_data_dir(tmp_path / "d").for_store("s")
    gone = [attempt(datadir, 7, n, age_s=0) for n in (1, 2)]
    kept = attempt(datadir, 8, 1, age_s=0)
    assert remove_job_files(datadir, [7]) == 2
    assert not any(p.exists() for pair in gone for p in pair)
    assert all(p.exists() for p in kept)


def test_finished_rows_are_purged_only_when_asked(tmp_path: Path) -> None:
    """retain_jobs_s purges finished jobs older than it; unset, rows stay."""
    datadir = prepare_data_dir(tmp_path / "d").for_store("s")
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    [job_id] = store.enqueue([JobSpec(command=("x",))])
    [job] = store.claim("w", 1, lease_s=30)
    store.finish(job_id, "w", job.attempt, Outcome())
    assert store.get(job_id).status is Status.COMPLETED
    keep = Retention(
        datadir, store, clock=SYSTEM_CLOCK, retention_s=0, files_max_bytes=0, every_s=60,
        retain_jobs_s=None, live=set, on_report=lambda r: None,
    )  # fmt: skip
    assert keep.sweep().purged_jobs == 0
    purge = Retention(
        datadir, store, clock=SYSTEM_CLOCK, retention_s=0, files_max_bytes=0, every_s=60,
        retain_jobs_s=60, live=set, on_report=lambda r: None,
    )  # fmt: skip
    assert purge.sweep().purged_jobs == 0  # finished just now
    clock.advance(61)
    assert purge.sweep().purged_jobs == 1
