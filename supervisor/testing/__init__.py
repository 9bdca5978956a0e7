"""Test helpers that ship with the package: an in-memory ``JobStore``, a manual clock, and
fake processes.

``MemoryStore`` moves jobs only through ``supervisor.lifecycle``, the same functions the SQLite
store uses, so a unit test against it can never pass on a transition the real stores refuse.
It is thread-safe (one lock) so that a supervisor thread and a test can share it.

``ManualClock`` moves only when told. ``FakeProcesses`` is the ``Processes`` seam without an
operating system: its agents live on the manual clock, exit when their ``Behaviour`` says (or
when signalled), and its ``FakeWaiter`` advances the clock to the next thing that can happen
instead of sleeping. With the three, a whole ``Supervisor`` runs inside a unit test::

    clock = ManualClock()
    store = MemoryStore(clock=clock)
    fake = FakeProcesses(clock, default=Behaviour(runtime_s=2.0))
    sup = Supervisor(settings, store, clock=clock, processes=fake, install_signal_handlers=False)
    store.enqueue([JobSpec(command=("agent",))])
    sup.run(until_idle=True)   # returns at once; the clock has moved ~2 s
"""

from __future__ import annotations

from supervisor.testing.fakes import Behaviour, FakeAgent, FakeProcesses, FakeWaiter
from supervisor.testing.memory import ManualClock, MemoryStore

__all__ = ["Behaviour", "FakeAgent", "FakeProcesses", "FakeWaiter", "ManualClock", "MemoryStore"]
