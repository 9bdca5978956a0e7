"""The one error tree of agent-supervisor.

::

    SupervisorError
     ├── StoreError                      a job store refused or failed an operation
     │    ├── StoreUnavailableError      the store could not be reached (retryable)
     │    ├── UpdateConflictError        optimistic update on a stale ``version``
     │    ├── LeaseLostError             a fenced write whose (worker, attempt) no longer holds the lease
     │    ├── StoreMismatchError         not the store this data dir worked with (replaced, emptied)
     │    └── JobNotFoundError           (also a LookupError)
     ├── IllegalTransitionError          the state machine refuses a transition (also a ValueError)
     ├── InvalidJobError                 a job spec or payload is malformed (also a ValueError)
     ├── StateFileError                  running-agents.json cannot be read or written
     ├── SpawnError                      an agent process could not be started (also an OSError)
     ├── PrepareError                    a job's workspace could not be prepared (git's line; retryable)
     ├── DataDirLockedError              another supervisor holds the data dir
     └── ConfigError                     settings are invalid (also a ValueError)

Adapters translate their library's exceptions into this tree at the boundary
(``raise StoreUnavailableError(...) from exc``); nothing foreign leaks out of a store.
Every message is one line that a person can act on.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataDirLockedError",
    "IllegalTransitionError",
    "InvalidJobError",
    "JobNotFoundError",
    "LeaseLostError",
    "PrepareError",
    "SpawnError",
    "StateFileError",
    "StoreError",
    "StoreMismatchError",
    "StoreUnavailableError",
    "SupervisorError",
    "UpdateConflictError",
]


class SupervisorError(Exception):
    """Base of every error agent-supervisor raises on purpose."""


class StoreError(SupervisorError):
    """A job store refused or failed an operation."""


class StoreUnavailableError(StoreError):
    """The store could not be reached; the same call may succeed later."""


class UpdateConflictError(StoreError):
    """An optimistic update named a ``version`` that the row no longer has."""


class LeaseLostError(StoreError):
    """A fenced write by (worker, attempt) that no longer holds the job's lease."""


class StoreMismatchError(StoreError):
    """The store is not the one this data dir worked with: replaced, emptied, or another one."""


class JobNotFoundError(StoreError, LookupError):
    """No job has this id."""


class IllegalTransitionError(SupervisorError, ValueError):
    """The lifecycle refuses this status change (e.g. cancelling a completed job)."""


class InvalidJobError(SupervisorError, ValueError):
    """A job spec or payload is malformed; the message names the field."""


class StateFileError(SupervisorError):
    """running-agents.json could not be read, validated or written."""


class SpawnError(SupervisorError, OSError):
    """An agent process could not be started."""


class PrepareError(SupervisorError):
    """A job's workspace could not be prepared (a clone, fetch or checkout failed); the
    message is one line, git's own when git said why, and never holds a credential. The
    job is retried (``prepare_failed``): a network or server problem passes."""


class DataDirLockedError(SupervisorError):
    """Another supervisor already runs on this data dir."""


class ConfigError(SupervisorError, ValueError):
    """Settings or the config file are invalid."""
