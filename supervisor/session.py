"""One run of a supervisor on its data dir: what is opened on start and closed on stop.

``Session.open`` prepares the data dir, takes its lock (one supervisor per data dir), opens the
state file, the outbox and the loop's ``Waiter``, and loads the worker id; ``close`` releases
them in reverse order. A ``Session`` exists only while the supervisor runs, so nothing in the
loop ever holds a half-opened resource or asks whether one is there yet.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from supervisor.datadir import DataDir, DataDirLock, prepare_data_dir
from supervisor.errors import ConfigError
from supervisor.outbox import Outbox
from supervisor.processes import Processes, Waiter
from supervisor.recovery import load_worker_id
from supervisor.settings import Settings
from supervisor.statefile import State, StateFile
from supervisor.status import StatusWriter
from supervisor.store import JobStore
from supervisor.storeid import check_store_identity

__all__ = ["Session"]

log = logging.getLogger("agent_supervisor")


@dataclass
class Session:
    """The opened resources of one run (see the module docstring)."""

    datadir: DataDir
    lock: DataDirLock
    statefile: StateFile
    state: State | None
    """The state file as found on start (None when missing or quarantined)."""
    worker_id: str
    outbox: Outbox
    status: StatusWriter
    waiter: Waiter
    subreaper: bool
    _processes: Processes

    @classmethod
    def open(cls, settings: Settings, processes: Processes, store: JobStore, *, subreaper: bool) -> Session:
        """Take the data dir (``DataDirLockedError`` if another supervisor has it), check that
        the store is the one it worked with (``StoreMismatchError``), and open everything a
        run needs; on any failure, what was opened is closed again."""
        datadir = prepare_data_dir(settings.data_dir)
        lock = DataDirLock(datadir)
        lock.acquire()
        with contextlib.ExitStack() as undo:
            undo.callback(lock.release)
            identity = check_store_identity(datadir, store, accept_new=settings.new_store)
            if identity:
                datadir = datadir.for_store(identity)
                try:
                    datadir.prepare_store_dirs()
                except OSError as exc:
                    raise ConfigError(f"cannot use data dir {datadir.root}: {exc.strerror or exc}") from exc
            statefile = StateFile(datadir.state_file, datadir.quarantine)
            undo.callback(statefile.close)
            state = statefile.load().state  # a bad file is quarantined and logged by load()
            worker_id = load_worker_id(datadir, state)
            outbox = Outbox(datadir.outbox)
            waiter = processes.waiter()
            undo.callback(waiter.close)
            if subreaper:
                subreaper = processes.set_child_subreaper(True)
            undo.pop_all()
        return cls(
            datadir,
            lock,
            statefile,
            state,
            worker_id,
            outbox,
            StatusWriter(datadir),
            waiter,
            subreaper,
            processes,
        )

    def close(self) -> None:
        """Release everything, the data dir's lock last."""
        self.waiter.close()
        if self.subreaper:
            self._processes.set_child_subreaper(False)
        self.statefile.close()
        self.lock.release()
