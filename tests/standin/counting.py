"""A remote store (Supabase or Postgres) that counts the calls it sends, by function: the
idle tests and ``scripts/bench_remote_requests.py`` measure request budgets with it."""

from __future__ import annotations

import collections
import threading
from typing import Any

__all__ = ["counting"]


def counting(base: type[Any]) -> type[Any]:
    """``base`` (a store class with the remote base's ``_send``) whose every call is counted."""

    class Counting(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.sent: collections.Counter[str] = collections.Counter()
            self.sent_lock = threading.Lock()
            super().__init__(*args, **kwargs)

        def _send(self, fn: str, params: dict[str, Any]) -> Any:
            with self.sent_lock:
                self.sent[fn] += 1
            return super()._send(fn, params)

        def snapshot(self) -> collections.Counter[str]:
            with self.sent_lock:
                return collections.Counter(self.sent)

    return Counting
