"""One agent's cgroup: make it, join its wrapper, read its counters, kill and remove it, and
find it again after a restart (by its member, or by its name alone).

An agent's cgroup is ``<our cgroup>/agent-supervisor/<job>-<attempt>-<worker>`` in each
hierarchy ``supervisor.cgroups.detect`` found usable (one dir in v2). Limits are written before
the wrapper joins, so the agent can never run, or fork, outside them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from supervisor.cgroups import BASE_NAME, Enforcement, parse_proc_cgroup, read_file, write_file

__all__ = [
    "CPU_PERIOD_US",
    "AgentCgroup",
    "Counters",
    "agent_name",
    "find",
    "named",
    "of_worker",
    "read_back",
    "read_cpu_max",
    "rmdir",
]

_USAGE: Final = {1: "memory.usage_in_bytes", 2: "memory.current"}
CPU_PERIOD_US: Final = 100_000  # the CFS default period (Documentation/scheduler/sched-bwc.rst)
_MIN_QUOTA_US: Final = 1_000  # the kernel refuses a quota below 1 ms (EINVAL)
_ASCII_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")
_SUFFIX: Final = re.compile(r"\.\d$")  # name.2 .. name.9: see _mkdir_unique
_JOB_ATTEMPT: Final = re.compile(r"(\d+)-(\d+)-.+")
_HIERARCHY: Final = {"memory": "memory", "pids": "pids", "cpuacct": "cpuacct", "cpu": "cpu"}
"""Controller key -> its name in a v1 /proc/<pid>/cgroup line."""


def _int(path: str) -> int | None:
    try:
        return int(read_file(path))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Counters:
    """Raw counters of an agent's cgroup; None where no joined cgroup has them."""

    rss_bytes: int | None
    cpu_ns: int | None
    tasks: int | None


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.events, pids.events, memory.stat, cpu.stat) as ints."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def rmdir(path: str) -> bool:
    """Remove an (empty) cgroup dir; False while it is busy. rmdir never moves anything."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:  # EBUSY: still populated (remnants dying); retried by a later sweep
        return False
    return True


def agent_name(job_id: int, attempt: int, worker: str) -> str:
    """``<job>-<attempt>-<worker>``, reduced to characters safe in a cgroup name."""
    return _ASCII_SAFE.sub("_", f"{job_id}-{attempt}-{worker}")[:120]


@dataclass
class AgentCgroup:
    """One agent's cgroup directories (one in v2; one per hierarchy in v1)."""

    version: int
    dirs: dict[str, set[str]]  # dir -> controllers ("memory", "pids", "cpuacct", "cpu")
    joined: set[str] = field(default_factory=set)
    memory_max: int | None = None
    pids_max: int | None = None
    cpu_max: float | None = None
    """The CPU rate cap written (in CPUs); None when none was asked for or it was refused."""

    def _dir(self, controller: str) -> str | None:
        if controller not in self.joined:
            return None
        return next((d for d, cs in self.dirs.items() if controller in cs), None)

    @classmethod
    def create(
        cls, enf: Enforcement, name: str, memory_max: int | None, pids_max: int | None,
        cpu_max: float | None = None,
    ) -> tuple[AgentCgroup | None, str]:  # fmt: skip
        """mkdir the agent's cgroups (``name`` from ``agent_name``) and write the limits;
        (None, reason) when none could be made. A CPU rate the kernel refuses (e.g. EINVAL:
        above a v1 parent's own quota) is left out and named in the reason, never fatal."""
        dirs: dict[str, set[str]] = {}
        reasons = []
        written = None
        for base, controllers in enf.bases().items():
            if controllers == {"cpu"} and cpu_max is None:
                continue  # v1's cpu hierarchy only serves a rate cap: no dir without one
            try:
                path = _mkdir_unique(base, name)
            except OSError as exc:
                reasons.append(f"{base}: {exc.strerror or exc}")
                continue
            try:
                _write_limits(path, controllers, memory_max, pids_max, enf.version)
            except OSError as exc:
                reasons.append(f"{path}: {exc.strerror or exc}")
                rmdir(path)
                continue
            if "cpu" in controllers and cpu_max is not None:
                try:
                    _write_cpu_max(path, cpu_max, enf.version)
                    written = cpu_max
                except OSError as exc:
                    reasons.append(f"{path}: cpu: {exc.strerror or exc}")
                    controllers = controllers - {"cpu"}
                    if not controllers:
                        rmdir(path)
                        continue
            dirs[path] = set(controllers)
        if not dirs:
            return None, "; ".join(reasons) or "no cgroup"
        return cls(enf.version, dirs, set(), memory_max, pids_max, written), "; ".join(reasons)

    def join(self, pid: int) -> set[str]:
        """Move ``pid`` (the waiting wrapper, nothing else) into every dir; the controllers joined."""
        for path, controllers in self.dirs.items():
            try:
                write_file(os.path.join(path, "cgroup.procs"), str(pid))
            except OSError:
                continue
            self.joined |= controllers
        return set(self.joined)

    def counters(self) -> Counters:
        """memory usage (minus inactive file cache), CPU ns, tasks; one or two small reads each."""
        rss = cpu = tasks = None
        if (mem := self._dir("memory")) is not None:
            usage = _int(os.path.join(mem, _USAGE[self.version]))
            with contextlib.suppress(OSError):
                stat = _keyed(read_file(os.path.join(mem, "memory.stat")))
                cache = stat.get("inactive_file", stat.get("total_inactive_file", 0))
                rss = None if usage is None else max(0, usage - cache)
        if (pids := self._dir("pids")) is not None:
            tasks = _int(os.path.join(pids, "pids.current"))
        if (acct := self._dir("cpuacct")) is not None:
            if self.version == 1:
                cpu = _int(os.path.join(acct, "cpuacct.usage"))
            else:
                with contextlib.suppress(OSError, KeyError):
                    cpu = _keyed(read_file(os.path.join(acct, "cpu.stat")))["usage_usec"] * 1000
        return Counters(rss, cpu, tasks)

    def events(self) -> dict[str, int]:
        """``oom_kill``, ``failcnt`` (v1) and ``pids_max`` (refused forks) as far as readable."""
        out: dict[str, int] = {}
        if (mem := self._dir("memory")) is not None:
            with contextlib.suppress(OSError):
                # v1 memory.oom_control has carried an oom_kill count since Linux 4.13
                name = "memory.events" if self.version == 2 else "memory.oom_control"
                events = _keyed(read_file(os.path.join(mem, name)))
                if "oom_kill" in events:
                    out["oom_kill"] = events["oom_kill"]
            if self.version == 1:
                with contextlib.suppress(OSError, ValueError):
                    out["failcnt"] = int(read_file(os.path.join(mem, "memory.failcnt")))
        if (pids := self._dir("pids")) is not None:
            with contextlib.suppress(OSError):
                out["pids_max"] = _keyed(read_file(os.path.join(pids, "pids.events"))).get("max", 0)
        return out

    def members(self) -> set[int]:
        """Pids in any of the agent's cgroups (v1 lists may repeat: a set)."""
        found: set[int] = set()
        for path in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in read_file(os.path.join(path, "cgroup.procs")).split())
        return found

    def kill(self) -> bool:
        """v2 ``cgroup.kill`` (Linux 5.14+): SIGKILL every member atomically; False if unavailable."""
        if self.version != 2:
            return False
        try:
            write_file(os.path.join(next(iter(self.dirs)), "cgroup.kill"), "1")
        except OSError:
            return False
        return True

    def remove(self) -> list[str]:
        """rmdir every dir (never moving anything); the dirs still busy (``Cgroups.remove``
        retries them later)."""
        return [path for path in self.dirs if not rmdir(path)]


def _mkdir_unique(base: str, name: str) -> str:
    for n in range(1, 10):
        path = os.path.join(base, name if n == 1 else f"{name}.{n}")
        try:
            os.mkdir(path, 0o755)
            return path
        except FileExistsError:
            if rmdir(path):  # a stale empty one (a supervisor died before removing it)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o755)
                    return path
    raise OSError(errno.EEXIST, f"{name} and 8 alternatives exist")


def _write_limits(path: str, controllers: set[str], mem: int | None, pids: int | None, version: int) -> None:
    if "memory" in controllers and mem is not None:
        write_file(os.path.join(path, "memory.max" if version == 2 else "memory.limit_in_bytes"), str(mem))
        # Without this, the limit would only push the tree into swap. Absent (no swap
        # accounting) or refused: the memory limit alone stands.
        with contextlib.suppress(OSError):
            if version == 2:
                write_file(os.path.join(path, "memory.swap.max"), "0")
            else:
                write_file(os.path.join(path, "memory.memsw.limit_in_bytes"), str(mem))
    if "pids" in controllers and pids is not None:
        write_file(os.path.join(path, "pids.max"), str(pids))


def _write_cpu_max(path: str, cpu_max: float, version: int) -> None:
    """A CFS bandwidth cap of ``cpu_max`` CPUs: ``quota`` µs of CPU time per 100 ms period
    (``--cpus=0.5`` in docker writes 50000/100000 the same way)."""
    quota = max(_MIN_QUOTA_US, round(cpu_max * CPU_PERIOD_US))
    if version == 2:
        write_file(os.path.join(path, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
    else:
        write_file(os.path.join(path, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
        write_file(os.path.join(path, "cpu.cfs_quota_us"), str(quota))


def read_cpu_max(path: str, version: int) -> float | None:
    """The rate cap a cgroup dir holds, in CPUs; None for none (``max`` / ``-1``) or unreadable."""
    try:
        if version == 2:
            quota, _, period = read_file(os.path.join(path, "cpu.max")).partition(" ")
        else:
            quota = read_file(os.path.join(path, "cpu.cfs_quota_us"))
            period = read_file(os.path.join(path, "cpu.cfs_period_us"))
        if quota.strip() in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def read_back(dirs: Mapping[str, set[str]], version: int) -> tuple[int | None, int | None, float | None]:
    """(memory max, pids max, CPU rate) as an existing agent cgroup holds them (re-adoption)."""
    mem = pids = cpu = None
    for path, controllers in dirs.items():
        if "cpu" in controllers:
            cpu = read_cpu_max(path, version)
        mem_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            raw = read_file(os.path.join(path, mem_file)).strip()
            mem = None if raw == "max" or int(raw) >= 1 << 62 else int(raw)
        with contextlib.suppress(OSError, ValueError):
            raw = read_file(os.path.join(path, "pids.max")).strip()
            pids = None if raw == "max" else int(raw)
    return mem, pids, cpu


def find(pid: int, enf: Enforcement) -> AgentCgroup | None:
    """The agent cgroup ``pid`` lives in, if it is one of ours: ``<our cgroup>/agent-supervisor/x``
    in every hierarchy we use (re-adoption after a restart; limits are read back)."""
    try:
        mine = parse_proc_cgroup(read_file("/proc/self/cgroup"))
        theirs = parse_proc_cgroup(read_file(f"/proc/{pid}/cgroup"))
    except OSError:
        return None
    dirs: dict[str, set[str]] = {}
    for base, controllers in enf.bases().items():
        key = "" if enf.backend == "cgroup-v2" else _HIERARCHY[min(controllers)]
        own, their = mine.get(key), theirs.get(key)
        prefix = f"{own.rstrip('/')}/{BASE_NAME}/" if own is not None else None
        if prefix and their and their.startswith(prefix) and "/" not in their[len(prefix) :]:
            dirs[os.path.join(base, their[len(prefix) :])] = controllers
    if not dirs:
        return None
    return AgentCgroup(enf.version, dirs, set().union(*dirs.values()), *read_back(dirs, enf.version))


def named(enf: Enforcement, name: str) -> AgentCgroup | None:
    """The agent cgroup called ``name`` (or ``name.N``, see ``_mkdir_unique``) in every
    hierarchy, whether or not its wrapper still lives: a restart finds the escapees of an agent
    that ended while no supervisor watched by the name alone (``agent_name``)."""
    dirs: dict[str, set[str]] = {}
    for base, controllers in enf.bases().items():
        for n in range(1, 10):
            path = os.path.join(base, name if n == 1 else f"{name}.{n}")
            if os.path.isdir(path):
                dirs[path] = controllers
    if not dirs:
        return None
    return AgentCgroup(enf.version, dirs, set().union(*dirs.values()), *read_back(dirs, enf.version))


def of_worker(enf: Enforcement, worker: str) -> dict[tuple[int, int], AgentCgroup]:
    """Every agent cgroup of ``worker``'s agents that exists now, by (job, attempt)."""
    found: dict[tuple[int, int], AgentCgroup] = {}
    for base in enf.bases():
        with contextlib.suppress(OSError):
            for entry in os.scandir(base):
                for stem in {entry.name, _SUFFIX.sub("", entry.name)}:
                    match = _JOB_ATTEMPT.fullmatch(stem)
                    key = (int(match.group(1)), int(match.group(2))) if match else None
                    if key and key not in found and agent_name(*key, worker) == stem:
                        cgroup = named(enf, stem)
                        found.update({key: cgroup} if cgroup is not None else {})
    return found
