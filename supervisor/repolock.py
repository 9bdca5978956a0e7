"""The per-repository lock of the workspaces: an ``flock`` on ``workspaces/locks/<slug>.lock``.

One holder at a time fetches into, checks out from, tidies or deletes a repository's mirror,
whether the other would-be holder is a thread of this supervisor (each ``RepoLock`` opens its
own file description, and flock locks belong to the description: flock(2)) or another
process. The kernel drops the lock when its holder dies, even by SIGKILL, so a crashed
supervisor never leaves a lock that needs clearing; its lock file stays and is reused.

A lock file may be deleted, but only by its holder (when the mirror is deleted for good). A
waiter that had opened the old file then wins a lock on an unlinked inode, so after every
acquisition the descriptor is checked against the path (the classic flock-and-unlink race)
and the acquisition retried on a fresh open when they differ.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final

from supervisor.clock import Clock
from supervisor.datadir import private_file

__all__ = ["RepoLock"]

_FIRST_DELAY_S: Final = 0.01
_MAX_DELAY_S: Final = 0.2
_BUSY: Final = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


class RepoLock:
    """An exclusive, non-reentrant lock on one repository's lock file."""

    def __init__(self, path: Path, *, clock: Clock, sleep: Callable[[float], None]) -> None:
        self.path = path
        self._clock = clock
        self._sleep = sleep
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout_s: float | None) -> bool:
        """Take the lock: True once held, False if still busy after ``timeout_s`` (``None``:
        one try, no wait). ``OSError`` if the lock file cannot be opened or locked at all."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RepoLock")
        deadline = None if timeout_s is None else self._clock.monotonic() + timeout_s
        delay = _FIRST_DELAY_S
        while True:
            fd = private_file(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in _BUSY:
                    raise
                if deadline is None or self._clock.monotonic() >= deadline:
                    return False
                self._sleep(delay)  # flock(2) has no timeout: poll, backing off to 0.2 s
                delay = min(delay * 2, _MAX_DELAY_S)
                continue
            if _same_file(fd, self.path):
                self._fd = fd
                return True
            os.close(fd)  # we locked a file its holder had just deleted: start again

    def release(self) -> None:
        """Let the lock go; nothing if not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the description drops the flock

    def unlink(self) -> None:
        """Delete the lock file while holding it (its repository is gone), then release."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} must be held to be deleted")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)
