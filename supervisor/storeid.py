"""Which store a data dir works with: its identity, remembered, and checked on every start.

A store keeps a random id made with its schema (``JobStore.identity``); the data dir keeps the
id of the store it last worked with in ``store-id``. A different id, or a brand-new (missing or
empty) SQLite file in a data dir that has run jobs before, means the queue this data dir knew
is gone — replaced, emptied, or the settings point elsewhere — and that is an error that says
so, never a silent empty queue (state-file corruption is handled the same way: said, not
hidden). Starting fresh is an explicit choice (``new_store``).
"""

from __future__ import annotations

import contextlib
import logging

from supervisor.datadir import DataDir, write_private
from supervisor.errors import StoreError, StoreMismatchError
from supervisor.store import JobStore

__all__ = ["check_store_identity", "remembered_identity"]

log = logging.getLogger("agent_supervisor")


def remembered_identity(datadir: DataDir) -> str | None:
    """The identity of the store this data dir last worked with, if it recorded one."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return datadir.store_id_file.read_text(encoding="ascii").strip() or None
    return None


def check_store_identity(datadir: DataDir, store: JobStore, *, accept_new: bool = False) -> str | None:
    """The store's identity after checking it against the data dir's memory of it.

    Raises ``StoreMismatchError`` for a different store, or a new one in a data dir that ran
    jobs before, unless ``accept_new``; then (and the first time) the data dir remembers this
    store. When the store cannot tell its identity now (unreachable), the remembered one is
    returned and the check waits for the next start.
    """
    remembered = remembered_identity(datadir)
    try:
        actual = store.identity()
    except StoreError as exc:
        log.warning("cannot read the store's identity (%s); it is checked at the next start", exc)
        return remembered
    where = getattr(store, "path", None) or repr(store)
    if remembered is None:
        used = datadir.worker_id_file.exists()  # this data dir has run a supervisor before
        if used and getattr(store, "created", False) and not accept_new:
            raise StoreMismatchError(
                f"store {where} is new (it was missing or empty) but data dir {datadir.root} has run "
                "jobs before: their queue is gone; point the settings at the old store, or start "
                "fresh with --new-store (AGENT_SUPERVISOR_NEW_STORE=1)"
            )
    elif remembered != actual and not accept_new:
        raise StoreMismatchError(
            f"store {where} is not the one data dir {datadir.root} worked with (store id "
            f"{actual[:12]}, expected {remembered[:12]}): it was replaced or emptied, or the settings "
            "point at another store; point them at the old one, or start fresh with --new-store "
            "(AGENT_SUPERVISOR_NEW_STORE=1)"
        )
    if remembered != actual:
        try:
            write_private(datadir.store_id_file, actual.encode("ascii"), durable=True)
        except OSError as exc:
            log.warning("cannot remember the store's identity in %s: %s", datadir.root, exc.strerror or exc)
        if remembered is not None:
            log.warning("data dir %s now works with store %s (id %s)", datadir.root, where, actual[:12])
    return actual
