"""Per-agent limits: what each limit means, how it is enforced, and what an agent broke.

- **memory** (``memory_max_bytes``, the whole tree): cgroup ``memory.max`` (v2) or
  ``memory.limit_in_bytes`` (v1), swap capped too so that the limit is not a swap quota; the
  kernel OOM-kills inside the cgroup. Without a memory cgroup the supervisor's loop samples the
  tree (``TreeStats.rss_bytes``) and kills it.
- **processes** (``pids_max``, the whole tree, the wrapper shell included, threads counted):
  cgroup ``pids.max``; a refused fork fails with EAGAIN and is counted in ``pids.events``.
  Without a pids cgroup, RLIMIT_NPROC, which is per *user*: it is set to the user's current
  task count plus ``pids_max``, an approximation; the kernel does not enforce it at all for
  root or CAP_SYS_RESOURCE/CAP_SYS_ADMIN (kernel/fork.c), so there the loop samples instead.
- **CPU time** (``cpu_time_s``, per process): RLIMIT_CPU, soft limit rounded up to whole
  seconds and the hard limit one second above it: with soft == hard the kernel sends SIGKILL
  straight away (posix-cpu-timers.c checks the hard limit first) and the cause is lost; with
  the gap the agent gets SIGXCPU, which ``limit_breach`` names.
- **address space** (``address_space_bytes``, per process): RLIMIT_AS (``ulimit -v``, KiB).
  The kernel keeps no count of refused allocations: ``breach_of`` can only infer a breach from
  how the agent ended (see ``_ALLOCATION_FAILED``).
- **CPU rate** (``cpu_max``, the whole tree, in CPUs like ``docker --cpus``): the cgroup CPU
  controller's bandwidth limit (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` per 100 ms period); the
  tree is throttled, never killed. Without a writable CPU controller it is not enforced, and
  ``describe`` (the job's facts) and the host's enforcement line say so.

The rlimits are set by the sh wrapper with ``ulimit`` before it runs the agent. A cgroup is
joined before the agent can fork: the wrapper first waits for one line on its stdin (a pipe
only we hold); meanwhile the supervisor writes the wrapper's pid into each ``cgroup.procs`` and
then sends the line, so it knows exactly which cgroups hold the tree, with no race and no
polling. The line carries the RLIMIT_NPROC fallback when the pids cgroup could not be joined;
on EOF (the supervisor died mid-spawn) the agent still runs, with the rlimits only.

Which cgroups the host offers: ``supervisor.cgroups``; one agent's: ``supervisor.agentcgroup``;
the supervisor's bookkeeping of them (detection once, busy removals, sweeps): ``Cgroups`` here.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Final

from supervisor.agentcgroup import AgentCgroup, agent_name, find, named, of_worker, rmdir
from supervisor.cgroups import Enforcement, detect_host
from supervisor.processes import Limits, TreeStats

__all__ = [
    "Cgroups",
    "Limits",
    "Setup",
    "TreeStats",
    "breach_of",
    "describe",
    "nproc_flag",
    "plain_wrapper",
    "size",
    "user_tasks",
    "wrapper_script",
]

MIB: Final = 1 << 20
STALE_AFTER_S: Final = 3600.0  # an empty agent cgroup this old is a dead supervisor's leftover
_SWEEP_EVERY_S: Final = 60.0
"""How often a spawn also looks for empty cgroups that dead supervisors left behind."""
# printf is a builtin (dash, bash, zsh-as-sh); `mv` would need the agent's PATH and a fork.
# The file is read only once the wrapper is gone, so a plain truncating write is enough: a
# wrapper killed mid-write leaves an empty file, read as "unknown" (as a missing one is).
# `umask 077` only after "$@" has run: the agent keeps the umask it inherited, and the exit
# file is created 0600 (README: the run dir's files are private; spawn removed any old one).
_EXIT_TAIL: Final = '"$@"; rc=$?; umask 077; printf %s "$rc" > "$AGENT_SUPERVISOR_EXIT_FILE"; exit "$rc"'


def size(n: int) -> str:
    """``"256 MiB"``, or ``"200.5 MiB"`` when not whole."""
    return f"{n // MIB} MiB" if n % MIB == 0 else f"{n / MIB:.1f} MiB"


# ---------------------------------------------------------------- wrapper


@lru_cache(maxsize=1)
def nproc_flag() -> str:
    """The ``ulimit`` letter for RLIMIT_NPROC of this /bin/sh: dash/ash/busybox ``-p``;
    bash, zsh and ksh ``-u`` (bash's ``-p`` is the pipe size, read-only). macOS's /bin/sh is
    bash unless /private/var/select/sh points elsewhere."""
    target = "/private/var/select/sh" if sys.platform == "darwin" else "/bin/sh"
    name = os.path.basename(os.path.realpath(target))
    if sys.platform == "darwin" and name in ("sh", "select"):
        return "u"
    return "u" if name.startswith(("bash", "zsh", "ksh", "mksh")) else "p"


def _ulimit(args: str) -> str:
    # dash takes one limit per ulimit; a refusal (a hard limit below ours) leaves the
    # stricter inherited limit, and a line in the agent's log says so
    return f'ulimit {args} 2>/dev/null || echo "$0: cannot set ulimit {args}" >&2'


def plain_wrapper() -> str:
    """The wrapper of an agent without limits: run it, record its exit status."""
    return wrapper_script(Limits(), handshake=False)


def wrapper_script(
    limits: Limits, *, handshake: bool, nproc: int | None = None, flag: str | None = None
) -> str:
    """The sh wrapper text: optional cgroup handshake, ulimits, the agent, the exit file.

    ``handshake``: wait for one line on stdin (the supervisor puts us in the cgroups
    meanwhile); the line is the RLIMIT_NPROC to set, 0 for none. ``nproc``: a fixed
    RLIMIT_NPROC (no handshake). Soft/hard order matters to dash: lowering the hard limit
    alone below the soft one fails with EINVAL.
    """
    steps = ["trap : TERM INT HUP"]
    if handshake:
        steps += [
            "read -r n",
            "exec </dev/null",
            # $n: digits from us only
            f"case $n in [1-9]*) {_ulimit(f'-{flag or nproc_flag()} $n')};; esac",
        ]
    elif nproc is not None:
        steps.append(_ulimit(f"-{flag or nproc_flag()} {nproc}"))
    if limits.cpu_time_s is not None:
        soft = max(1, math.ceil(limits.cpu_time_s))
        steps += [_ulimit(f"-S -t {soft}"), _ulimit(f"-H -t {soft + 1}")]
    if limits.address_space_bytes is not None:
        steps.append(_ulimit(f"-v {max(1, limits.address_space_bytes // 1024)}"))
    return "; ".join([*steps, _EXIT_TAIL])


def user_tasks(uid: int) -> int:
    """Tasks (threads) of ``uid`` now: what RLIMIT_NPROC counts on Linux; processes elsewhere."""
    if sys.platform != "linux":
        import psutil

        return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if entry.stat().st_uid == uid:
                    raw = Path(f"/proc/{entry.name}/stat").read_bytes()
                    count += int(raw[raw.rindex(b")") + 2 :].split()[17])  # field 20: num_threads
    return count


# ---------------------------------------------------------------- the supervisor's cgroups


class Cgroups:
    """The cgroup side of one supervisor: the host's detection (done once, when this object
    is made), agent cgroups whose rmdir found them busy (retried by later sweeps), and when the
    last full sweep ran. The supervisor's process layer owns one; nothing here is global."""

    def __init__(self, enforcement: Enforcement | None = None) -> None:
        self.enforcement = enforcement if enforcement is not None else detect_host()
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._last_full_sweep = float("-inf")

    def describe(self) -> str:
        """How limits are enforced here, in one line (health shows it)."""
        return self.enforcement.describe()

    def remove(self, cgroup: AgentCgroup) -> bool:
        """rmdir the agent's cgroup dirs (never moving anything); a busy one is kept and
        retried by later sweeps. True when all are gone."""
        busy = cgroup.remove()
        if busy:
            with self._lock:
                self._pending.update(busy)
        return not busy

    def sweep(self, worker: str | None = None, *, full: bool = False) -> int:
        """Retry removing agent cgroups that were busy when their agent was closed; with
        ``full`` also remove empty ones left by supervisors that died before ``close``: at once
        for this ``worker`` (nobody else uses its names), after ``STALE_AFTER_S`` for any other
        (by then no live supervisor still needs one's counters). rmdir only ever removes an
        empty cgroup. Returns how many of our own busy ones remain pending."""
        with self._lock:
            for path in list(self._pending):
                if rmdir(path):
                    self._pending.discard(path)
            left = len(self._pending)
        if not full:
            return left
        mine = re.compile(r"\d+-\d+-" + re.escape(agent_name(0, 0, worker or "")[4:]) + r"(\.\d)?")
        old = time.time() - STALE_AFTER_S
        for base in self.enforcement.bases():
            with contextlib.suppress(OSError):
                for entry in os.scandir(base):
                    with contextlib.suppress(OSError):
                        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
                            continue
                        if (worker and mine.fullmatch(entry.name)) or entry.stat().st_mtime < old:
                            rmdir(entry.path)
        return left

    def sweep_if_due(self, worker: str) -> None:
        """A full sweep at most every ``_SWEEP_EVERY_S`` (it lists every cgroup: not per spawn)."""
        now = time.monotonic()
        with self._lock:
            due = now - self._last_full_sweep > _SWEEP_EVERY_S
            if due:
                self._last_full_sweep = now
        if due:
            self.sweep(worker, full=True)

    def find(self, pid: int) -> AgentCgroup | None:
        """The agent cgroup ``pid`` lives in, if it is one of ours (``agentcgroup.find``)."""
        return find(pid, self.enforcement)

    def named(self, job_id: int, attempt: int, worker: str) -> AgentCgroup | None:
        """The cgroup of that agent, whether or not its wrapper still lives."""
        return named(self.enforcement, agent_name(job_id, attempt, worker))

    def of_worker(self, worker: str) -> dict[tuple[int, int], AgentCgroup]:
        """Every existing agent cgroup of ``worker``, by (job, attempt)."""
        return of_worker(self.enforcement, worker)


# ---------------------------------------------------------------- spawn-time plan


@dataclass
class Setup:
    """Everything ``procs.spawn`` needs to apply ``limits`` to one agent."""

    limits: Limits
    cgroups: Cgroups
    cgroup: AgentCgroup | None
    script: str

    @property
    def enforcement(self) -> Enforcement:
        return self.cgroups.enforcement

    @classmethod
    def prepare(cls, limits: Limits, job_id: int, attempt: int, worker: str, cgroups: Cgroups) -> Setup:
        """Create the agent's cgroup (if any) and build the wrapper; never raises for limits.

        Also sweeps, now and then: cgroups that were busy at ``close`` and empty ones this
        worker left behind (``Cgroups.sweep_if_due``).
        """
        enf = cgroups.enforcement
        cgroup = None
        if enf.bases():
            cgroups.sweep_if_due(worker)
            name = agent_name(job_id, attempt, worker)
            # a partial failure (one hierarchy refused) shows as that limit's fallback in describe()
            cgroup, _ = AgentCgroup.create(
                enf, name, limits.memory_max_bytes, limits.pids_max, limits.cpu_max
            )
        if cgroup is not None:
            return cls(limits, cgroups, cgroup, wrapper_script(limits, handshake=True))
        nproc = None
        if limits.pids_max is not None and not enf.nproc_exempt:
            nproc = user_tasks(os.getuid()) + limits.pids_max
        return cls(limits, cgroups, None, wrapper_script(limits, handshake=False, nproc=nproc))

    @property
    def handshake(self) -> bool:
        """True when the wrapper waits for a line on stdin."""
        return self.cgroup is not None

    def start(self, pid: int, pipe: IO[bytes] | None) -> None:
        """Join the waiting wrapper to the cgroups and release it with the RLIMIT_NPROC fallback."""
        line = b"0\n"
        if self.cgroup is not None:
            pids_max, exempt = self.limits.pids_max, self.enforcement.nproc_exempt
            if "pids" not in self.cgroup.join(pid) and pids_max is not None and not exempt:
                line = f"{user_tasks(os.getuid()) + pids_max}\n".encode()
        if pipe is not None:
            with contextlib.suppress(OSError):  # EPIPE: the wrapper is already gone
                pipe.write(line)
            with contextlib.suppress(OSError):
                pipe.close()

    def abandon(self) -> None:
        """The spawn failed: remove the cgroup again."""
        if self.cgroup is not None:
            self.cgroups.remove(self.cgroup)

    def describe(self) -> str:
        """What is in force for this agent, e.g. ``memory 200 MiB: cgroup-v1; CPU time 2 s: RLIMIT_CPU``."""
        return describe(self.limits, self.cgroup, self.enforcement)


def describe(limits: Limits, cgroup: AgentCgroup | None, enf: Enforcement) -> str:
    """One line of per-limit facts for one agent."""
    joined = cgroup.joined if cgroup is not None else set()
    where = f"cgroup-v{cgroup.version}" if cgroup is not None else ""
    facts = []
    if limits.memory_max_bytes is not None:
        file = "memory.max" if cgroup is not None and cgroup.version == 2 else "memory.limit_in_bytes"
        how = f"{where} {file}" if "memory" in joined else "sampled by the supervisor"
        facts.append(f"memory {size(limits.memory_max_bytes)}: {how}")
    if limits.pids_max is not None:
        if "pids" in joined:
            how = f"{where} pids.max"
        else:
            how = "not enforced for root, sampled" if enf.nproc_exempt else "RLIMIT_NPROC (per user)"
        facts.append(f"processes {limits.pids_max}: {how}")
    if limits.cpu_time_s is not None:
        facts.append(f"CPU time {limits.cpu_time_s:g} s per process: RLIMIT_CPU")
    if limits.address_space_bytes is not None:
        facts.append(f"address space {size(limits.address_space_bytes)} per process: RLIMIT_AS")
    if limits.cpu_max is not None:
        facts.append(f"CPU rate {limits.cpu_max:g} CPUs: {_cpu_how(cgroup, enf)}")
    if not facts:
        return f"no limits ({where} accounting)" if joined else "no limits"
    return "; ".join(facts)


def _cpu_how(cgroup: AgentCgroup | None, enf: Enforcement) -> str:
    if cgroup is not None and cgroup.cpu_max is not None and "cpu" in cgroup.joined:
        return f"cgroup-v{cgroup.version} " + ("cpu.max" if cgroup.version == 2 else "cpu.cfs_quota_us")
    if enf.cpu_max_base is None:
        return f"not enforced ({enf.cpu_reason or 'no CPU controller'})"
    if cgroup is None or cgroup.cpu_max is None:
        return "not enforced (the kernel refused the agent's cpu cgroup or the rate)"
    return "not enforced (the wrapper could not join its cpu cgroup)"


_ALLOCATION_FAILED: Final = re.compile(
    r"MemoryError|Cannot allocate memory|std::bad_alloc|out of memory|memory allocation of \d+ bytes failed",
    re.IGNORECASE,
)
"""How common runtimes report an allocation the kernel refused: under RLIMIT_AS, mmap/brk fail
with ENOMEM and nothing is counted anywhere (unlike a cgroup's memory.events). Python raises
MemoryError, C reports strerror(ENOMEM) "Cannot allocate memory", C++ throws std::bad_alloc, Go
and V8 say "out of memory", Rust "memory allocation of N bytes failed". A program that checks
nothing dies of SIGSEGV on the NULL it got, or handles the failure quietly: no breach is seen
then, and the outcome is its exit code or signal."""


def breach_of(
    limits: Limits,
    events: Mapping[str, int],
    signal_number: int | None,
    exit_code: int | None = None,
    output_tail: str = "",
) -> str | None:
    """The one-line cause from a cgroup's counters and how the agent ended; None if no limit hit.

    ``events``: ``AgentCgroup.events()`` (oom_kill, failcnt, pids_max); ``signal_number``: how
    the agent (the wrapper's child) died, if by a signal; ``exit_code`` and ``output_tail`` (the
    end of its output): for the address-space limit, which has no kernel counter, a failed
    agent whose last output reports a refused allocation (``_ALLOCATION_FAILED``) broke it.
    """
    causes = []
    mem = limits.memory_max_bytes
    if mem is not None:
        kills = events.get("oom_kill", 0)
        if kills:
            what = "cgroup OOM kill" if kills == 1 else f"cgroup OOM kills: {kills}"
            causes.append(f"memory limit {size(mem)} exceeded ({what})")
        elif "oom_kill" not in events and events.get("failcnt", 0) and signal_number == signal.SIGKILL:
            causes.append(f"memory limit {size(mem)} exceeded (cgroup limit hit, then SIGKILL)")
    refused = events.get("pids_max", 0)
    if limits.pids_max is not None and refused:
        forks = "1 fork refused" if refused == 1 else f"{refused} forks refused"
        causes.append(f"process limit {limits.pids_max} reached (pids.max, {forks})")
    if limits.cpu_time_s is not None and signal_number == signal.SIGXCPU:
        causes.append(f"CPU time limit {limits.cpu_time_s:g} s exceeded (SIGXCPU)")
    failed = signal_number is not None or exit_code not in (0, None)
    space = limits.address_space_bytes
    if space is not None and failed and (found := _ALLOCATION_FAILED.findall(output_tail)):
        causes.append(f"address space limit {size(space)} per process exceeded (output: {found[-1]!r})")
    return "; ".join(causes) or None
