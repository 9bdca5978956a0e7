"""agent-supervisor's engine: runs agent processes for jobs taken from a ``JobStore``.

The engine imports no adapter (``bridge`` builds the stores). Heavier parts (settings, the
supervisor loop) are imported on first use so that ``import supervisor`` stays cheap for the
plugin hosts that embed it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from supervisor.errors import (
    ConfigError,
    DataDirLockedError,
    IllegalTransitionError,
    InvalidJobError,
    JobNotFoundError,
    LeaseLostError,
    SpawnError,
    StateFileError,
    StoreError,
    StoreMismatchError,
    StoreUnavailableError,
    SupervisorError,
    UpdateConflictError,
)
from supervisor.lifecycle import CancelMode, ErrorKind, Event, Job, JobSpec, Outcome, Status
from supervisor.store import JobStore

if TYPE_CHECKING:
    from supervisor.runner import Supervisor
    from supervisor.settings import KindConfig, Settings

__all__ = [
    "CancelMode",
    "ConfigError",
    "DataDirLockedError",
    "ErrorKind",
    "Event",
    "IllegalTransitionError",
    "InvalidJobError",
    "Job",
    "JobNotFoundError",
    "JobSpec",
    "JobStore",
    "KindConfig",
    "LeaseLostError",
    "Outcome",
    "Settings",
    "SpawnError",
    "StateFileError",
    "Status",
    "StoreError",
    "StoreMismatchError",
    "StoreUnavailableError",
    "Supervisor",
    "SupervisorError",
    "UpdateConflictError",
]

_LAZY = {
    "Supervisor": "supervisor.runner",
    "Settings": "supervisor.settings",
    "KindConfig": "supervisor.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
