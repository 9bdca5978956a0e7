"""The data dir: private modes, layout, and the one-supervisor-per-dir lock (F14)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.datadir import (
    DataDir,
    DataDirLock,
    prepare_data_dir,
    private_file,
    write_private,
)
from supervisor.errors import ConfigError, DataDirLockedError

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """umask 0: whatever mode we ask for is what we get, so only our chmods make things private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return prepare_data_dir(tmp_path / "data")


# -- layout and modes --------------------------------------------------------------------


@pytest.mark.usefixtures("loose_umask")
def test_prepare_creates_private_tree(tmp_path: Path) -> None:
    """The data dir and logs/, runs/, quarantine/ are created 0o700 with the documented names."""
    dd = prepare_data_dir(tmp_path / "a" / "data")
    assert dd.root == tmp_path / "a" / "data"
    for path in (dd.root, dd.logs, dd.runs, dd.quarantine):
        assert path.is_dir(), path
        assert mode(path) == 0o700, path
    assert (dd.logs.name, dd.runs.name, dd.quarantine.name) == ("logs", "runs", "quarantine")
    assert dd.state_file == dd.root / "running-agents.json"
    assert dd.lock_file == dd.root / "supervisor.lock"


def test_prepare_tightens_a_loose_existing_dir(tmp_path: Path) -> None:
    """An existing 0o755 data dir (and subdir) of ours is chmod-ed to 0o700."""
    root = tmp_path / "data"
    (root / "logs").mkdir(parents=True)
    root.chmod(0o755)
    (root / "logs").chmod(0o777)
    dd = prepare_data_dir(root)
    assert mode(dd.root) == 0o700
    assert mode(dd.logs) == 0o700


def test_prepare_names_the_subdir_that_fails(tmp_path: Path) -> None:
    """When a subdir cannot be made (a file named logs), the error names it."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "logs").write_text("x")
    with pytest.raises(ConfigError, match=r"data: .*/data/logs: exists and is not a directory$"):
        prepare_data_dir(tmp_path / "data")


def test_prepare_refuses_a_file(tmp_path: Path) -> None:
    """A data dir path that is a regular file is a ConfigError naming it."""
    path = tmp_path / "data"
    path.write_text("x")
    with pytest.raises(ConfigError, match=r"^cannot use data dir .*/data: exists and is not a directory$"):
        prepare_data_dir(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_prepare_refuses_a_dir_of_another_user(tmp_path: Path) -> None:
    """A data dir owned by another uid is refused rather than used or chmod-ed."""
    root = tmp_path / "data"
    root.mkdir(mode=0o755)
    os.chown(root, 12345, 12345)
    with pytest.raises(ConfigError, match="belongs to uid 12345, not to this user"):
        prepare_data_dir(root)
    assert mode(root) == 0o755


@pytest.mark.usefixtures("loose_umask")
def test_attempt_dir_is_private_and_named_by_job_and_attempt(data_dir: DataDir) -> None:
    """attempt_dir creates runs/<job>-<attempt>/ 0o700; log_path names logs/<job>-<attempt>.log."""
    run = data_dir.attempt_dir(12, 3)
    assert run == data_dir.runs / "12-3"
    assert run.is_dir()
    assert mode(run) == 0o700
    assert data_dir.attempt_dir(12, 3) == run  # again: fine
    assert data_dir.log_path(12, 3) == data_dir.logs / "12-3.log"
    assert not data_dir.log_path(12, 3).exists()


@pytest.mark.parametrize(("job_id", "attempt"), [(-1, 1), (1, -2), (True, 1), ("1", 1)])
def test_attempt_paths_refuse_non_ints(data_dir: DataDir, job_id: object, attempt: object) -> None:
    """Only plain non-negative ints become path components."""
    with pytest.raises(ValueError, match="non-negative ints"):
        data_dir.log_path(job_id, attempt)  # type: ignore[arg-type]


@pytest.mark.usefixtures("loose_umask")
def test_write_private_makes_0600_files_atomically(tmp_path: Path) -> None:
    """write_private creates a 0o600 file, tightens an existing 0o644 one, and leaves no temp file."""
    target = tmp_path / "payload.json"
    write_private(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert mode(target) == 0o600
    target.chmod(0o644)
    write_private(target, b'{"a": 1}', durable=True)
    assert target.read_bytes() == b'{"a": 1}'
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payload.json"]


@pytest.mark.usefixtures("loose_umask")
def test_private_file_is_0600_and_refuses_symlinks(tmp_path: Path) -> None:
    """private_file opens 0o600 and will not follow a symlink planted at the path."""
    fd = private_file(tmp_path / "out.log")
    os.close(fd)
    assert mode(tmp_path / "out.log") == 0o600
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match=r"symbolic links|Too many levels"):
        private_file(tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


# -- the lock ----------------------------------------------------------------------------


def test_second_lock_in_same_process_conflicts(data_dir: DataDir) -> None:
    """Two DataDirLock objects on one dir in one process: the second gets DataDirLockedError."""
    with DataDirLock(data_dir) as first:
        assert first.is_locked
        with pytest.raises(DataDirLockedError) as info:
            DataDirLock(data_dir.root).acquire()
        assert str(info.value) == f"another supervisor is running on {data_dir.root} (pid {os.getpid()})"
    assert not first.is_locked


def test_release_is_idempotent_and_lock_reusable(data_dir: DataDir) -> None:
    """release() twice is harmless, acquire() on a held object is a no-op, and the dir can be re-locked."""
    lock = DataDirLock(data_dir)
    assert lock.acquire() is lock
    assert lock.acquire() is lock
    assert data_dir.pid_file.read_text().strip() == str(os.getpid())
    lock.release()
    lock.release()
    assert not lock.is_locked
    assert not data_dir.pid_file.exists()
    with DataDirLock(data_dir) as again:
        assert again.is_locked
    assert mode(data_dir.lock_file) == 0o600


def test_release_from_another_thread(data_dir: DataDir) -> None:
    """A host may acquire on one thread and release on another; the dir is then free."""
    lock = DataDirLock(data_dir)
    lock.acquire()
    releaser = threading.Thread(target=lock.release)
    releaser.start()
    releaser.join()
    assert not lock.is_locked
    with DataDirLock(data_dir):
        pass


def test_unreadable_pid_says_pid_unknown(data_dir: DataDir) -> None:
    """When the holder's pid file is missing or garbage, the message says 'pid unknown'."""
    with DataDirLock(data_dir):
        data_dir.pid_file.write_text("not a pid")
        with pytest.raises(DataDirLockedError, match=r"\(pid unknown\)$"):
            DataDirLock(data_dir).acquire()
        data_dir.pid_file.unlink()
        with pytest.raises(DataDirLockedError, match=r"\(pid unknown\)$"):
            DataDirLock(data_dir).acquire()


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from supervisor.datadir import DataDirLock
    lock = DataDirLock(Path(sys.argv[1])).acquire()
    print("ready", flush=True)
    sys.stdin.read()  # hold until killed or stdin closes
    """
)


@pytest.fixture
def holder(data_dir: DataDir) -> Iterator[subprocess.Popen[str]]:
    """A separate process holding the data dir lock, reaped whatever the test does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_lock_held_by_another_process_names_its_pid(data_dir: DataDir, holder: subprocess.Popen[str]) -> None:
    """A second supervisor process gets DataDirLockedError with the holder's pid."""
    with pytest.raises(DataDirLockedError) as info:
        DataDirLock(data_dir).acquire()
    assert str(info.value) == f"another supervisor is running on {data_dir.root} (pid {holder.pid})"


def test_lock_freed_when_holder_is_sigkilled(data_dir: DataDir, holder: subprocess.Popen[str]) -> None:
    """After kill -9 of the holder the kernel drops the flock: the next acquire succeeds within 1 s."""
    killed_at = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    with DataDirLock(data_dir) as lock:
        assert lock.is_locked
        assert time.monotonic() - killed_at < 1.0
        assert data_dir.pid_file.read_text().strip() == str(os.getpid())  # the dead pid is replaced
