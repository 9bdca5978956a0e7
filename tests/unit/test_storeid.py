"""A data dir knows its store: a different, emptied or missing store is an error that says so,
never a silent empty queue; starting fresh is an explicit choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.stores.sqlite import SQLiteStore
from supervisor.datadir import prepare_data_dir
from supervisor.errors import StoreMismatchError
from supervisor.job import JobSpec
from supervisor.storeid import check_store_identity, remembered_identity
from supervisor.testing import MemoryStore


def used(tmp_path: Path) -> Path:
    """A data dir that has run a supervisor (it has a worker id)."""
    root = tmp_path / "d"
    prepare_data_dir(root).worker_id_file.write_text("host-1234")
    return root


def test_the_first_start_remembers_the_store(tmp_path: Path) -> None:
    """A data dir without a remembered store takes the store's identity."""
    datadir = prepare_data_dir(tmp_path / "d")
    store = MemoryStore()
    assert check_store_identity(datadir, store) == store.identity()
    assert remembered_identity(datadir) == store.identity()


def test_another_store_is_refused_naming_both(tmp_path: Path) -> None:
    """A store with another identity raises StoreMismatchError with both ids and the way out."""
    datadir = prepare_data_dir(tmp_path / "d")
    check_store_identity(datadir, MemoryStore())
    other = MemoryStore()
    with pytest.raises(StoreMismatchError, match="--new-store") as info:
        check_store_identity(datadir, other)
    assert other.identity()[:12] in str(info.value)
    assert "\n" not in str(info.value)


def test_new_store_accepts_it_and_remembers_it(tmp_path: Path) -> None:
    """With accept_new the data dir switches to the new store."""
    datadir = prepare_data_dir(tmp_path / "d")
    check_store_identity(datadir, MemoryStore())
    other = MemoryStore()
    assert check_store_identity(datadir, other, accept_new=True) == other.identity()
    assert remembered_identity(datadir) == other.identity()


def test_a_zero_length_sqlite_file_in_a_used_data_dir_is_refused(tmp_path: Path) -> None:
    """jobs.sqlite3 emptied to zero bytes after 100 jobs: the restart refuses, saying the
    queue is gone, instead of showing an empty queue."""
    root = tmp_path / "d"
    datadir = prepare_data_dir(root)
    db = root / "jobs.sqlite3"
    store = SQLiteStore(db)
    check_store_identity(datadir, store)  # the first start: a new store, a new data dir
    store.enqueue([JobSpec(command=("x",))] * 100)
    store.close()
    db.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    emptied = SQLiteStore(db)
    try:
        with pytest.raises(StoreMismatchError, match="replaced or emptied"):
            check_store_identity(datadir, emptied)
    finally:
        emptied.close()


def test_a_missing_store_in_a_used_data_dir_from_an_older_version_is_refused(tmp_path: Path) -> None:
    """An upgraded data dir (no remembered id) that ran jobs, with its SQLite file gone: refused."""
    root = used(tmp_path)
    store = SQLiteStore(root / "jobs.sqlite3")  # created now: the old file is gone
    try:
        with pytest.raises(StoreMismatchError, match="new"):
            check_store_identity(prepare_data_dir(root), store)
    finally:
        store.close()


def test_an_existing_store_of_an_older_version_is_adopted(tmp_path: Path) -> None:
    """An upgraded data dir whose store already existed takes its identity silently."""
    root = used(tmp_path)
    SQLiteStore(root / "jobs.sqlite3").close()
    store = SQLiteStore(root / "jobs.sqlite3")
    try:
        assert check_store_identity(prepare_data_dir(root), store) == store.identity()
    finally:
        store.close()
