"""The kernel side of per-agent cgroups: detection, one agent's cgroup, its counters.

Detection (``detect_host()``, once per ``Cgroups`` object): cgroup v2 where a cgroup2 mount
(``/sys/fs/cgroup`` or a hybrid's ``unified``) shows our own cgroup with the memory and pids
controllers and lets us enable them for a child (delegation); cgroup v1 where per-controller
hierarchies let us create directories under our own cgroup (memory and pids limit, cpuacct only
counts). Agents' cgroups
are ``<our cgroup>/agent-supervisor/<job>-<attempt>-<worker>``: nothing outside our own subtree
is touched, and nothing is moved except the wrapper process we just started (``join``).

v2's "no internal processes" rule: a non-root cgroup that holds processes (we do) cannot enable
controllers for its children (EBUSY), and we never move ourselves; so v2 works where our cgroup
is a namespace root or already delegates, and otherwise we say why and fall back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "BASE_NAME",
    "AgentCgroup",
    "Cgroups",
    "Counters",
    "Enforcement",
    "Mount",
    "agent_name",
    "cgroup_dir",
    "detect",
    "detect_host",
    "find",
    "nproc_exempt",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "read_back",
]

BASE_NAME: Final = "agent-supervisor"
_CONTROLLERS: Final = ("memory", "pids")  # the limiting ones; v1 also uses cpuacct for stats
_HIERARCHY: Final = {"memory": "memory", "pids": "pids", "cpu": "cpuacct"}
STALE_AFTER_S: Final = 3600.0  # an empty agent cgroup this old is a dead supervisor's leftover
_SWEEP_EVERY_S: Final = 60.0
"""How often a spawn also looks for empty cgroups that dead supervisors left behind."""
_USAGE: Final = {1: "memory.usage_in_bytes", 2: "memory.current"}
_CAP_SYS_ADMIN: Final = 21
_CAP_SYS_RESOURCE: Final = 24
_ASCII_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Mount:
    """One cgroup line of /proc/self/mountinfo."""

    mount_point: str
    root: str
    fstype: str
    options: frozenset[str]  # super options: the v1 controllers (``rw,memory``)


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal (fs/proc_namespace.c)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts of a /proc/<pid>/mountinfo text, in order."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")  # optional fields end at the lone "-"
        parts, tail = left.split(), right.split()
        if not sep or len(parts) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(tail[2].split(","))
        mounts.append(Mount(_unescape(parts[4]), _unescape(parts[3]), tail[0], options))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup as ``{controller: path}``; the v2 line (``0::/path``) is key ``""``.

    v1 lines name one or more comma-separated controllers (``2:cpu,cpuacct:/x``), or a named
    hierarchy (``name=systemd``), which is kept under that name.
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


def cgroup_dir(mount: Mount, path: str) -> str | None:
    """The directory of cgroup ``path`` under ``mount``, None when the mount does not show it.

    A container usually mounts its own cgroup as the root (root ``/docker/x``, path
    ``/docker/x``, or ``/`` and ``/`` with a cgroup namespace); a path outside the mount's
    root (``/../x``) cannot be reached from here.
    """
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    rel = path[len(root) :].strip("/")
    if ".." in rel.split("/"):
        return None
    return os.path.join(mount.mount_point, rel) if rel else mount.mount_point


# ---------------------------------------------------------------- detection


@dataclass(frozen=True)
class Enforcement:
    """Where agents' cgroups go (per controller), and what happens without them."""

    backend: Literal["cgroup-v2", "cgroup-v1", "rlimit"]
    memory_base: str | None = None
    pids_base: str | None = None
    cpu_base: str | None = None  # v1 cpuacct (statistics only); v2: the same as the others
    nproc_exempt: bool = False
    reason: str = ""
    """Why cgroups are not (or only partly) in use; empty when they are."""

    def describe(self) -> str:
        """One line for health: ``cgroup-v1 (memory, pids)``, ``rlimit; memory: sampled; ...``."""
        used = [c for c, b in (("memory", self.memory_base), ("pids", self.pids_base)) if b]
        head = f"{self.backend} ({', '.join(used)})" if used else self.backend
        notes = []
        if self.memory_base is None:
            notes.append("memory: sampled by the supervisor")
        if self.pids_base is None:
            notes.append(
                "processes: not enforced for root, sampled by the supervisor"
                if self.nproc_exempt
                else "processes: RLIMIT_NPROC (per user, approximate)"
            )
        return "; ".join([head, *notes])

    @property
    def version(self) -> int:
        """2 for cgroup-v2, else 1 (also for rlimit, where no cgroup is ever made)."""
        return 2 if self.backend == "cgroup-v2" else 1

    def bases(self) -> dict[str, set[str]]:
        """``{base dir: controllers}``; one dir in v2, one per hierarchy in v1."""
        out: dict[str, set[str]] = {}
        for name, base in (("memory", self.memory_base), ("pids", self.pids_base), ("cpu", self.cpu_base)):
            if base is not None:
                out.setdefault(base, set()).add(name)
        return out


def nproc_exempt() -> bool:
    """True when RLIMIT_NPROC does not bind us: root, or CAP_SYS_RESOURCE / CAP_SYS_ADMIN."""
    if os.getuid() == 0 or os.geteuid() == 0:
        return True
    if sys.platform != "linux":
        return False
    try:
        found = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", _read("/proc/self/status"), re.MULTILINE)
    except OSError:
        return False
    caps = int(found.group(1), 16) if found else 0
    return bool(caps & (1 << _CAP_SYS_ADMIN | 1 << _CAP_SYS_RESOURCE))


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    # one write(2) of the whole value: cgroup files take one value per write
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _int(path: str) -> int | None:
    try:
        return int(_read(path))
    except (OSError, ValueError):
        return None


def _make_base(own: str, enable: str | None) -> str:
    """Create ``own/agent-supervisor`` (v2: with ``enable`` in its subtree_control) and prove
    that we may create and remove a child in it; OSError otherwise."""
    base = os.path.join(own, BASE_NAME)
    with contextlib.suppress(FileExistsError):
        os.mkdir(base, 0o755)
    if enable is not None and not set(enable.replace("+", "").split()) <= set(
        _read(os.path.join(base, "cgroup.subtree_control")).split()
    ):
        _write(os.path.join(base, "cgroup.subtree_control"), enable)
    probe = os.path.join(base, f".probe-{os.getpid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(probe)
    os.rmdir(probe)
    return base


def _detect_v2(mounts: list[Mount], paths: Mapping[str, str]) -> tuple[str | None, str]:
    if "" not in paths:
        return None, "no cgroup v2 membership"
    for mount in (m for m in mounts if m.fstype == "cgroup2"):
        own = cgroup_dir(mount, paths[""])
        if own is None:
            continue
        try:
            available = set(_read(os.path.join(own, "cgroup.controllers")).split())
            missing = [c for c in _CONTROLLERS if c not in available]
            if missing:
                return None, f"cgroup v2 {own} lacks controllers: {', '.join(missing)} (not delegated)"
            enabled = set(_read(os.path.join(own, "cgroup.subtree_control")).split())
            if not set(_CONTROLLERS) <= enabled:
                # EBUSY here is the "no internal processes" rule: our cgroup holds processes
                # (us) and is not a root; we never move ourselves, so v2 is then unusable.
                _write(os.path.join(own, "cgroup.subtree_control"), "+memory +pids")
            return _make_base(own, "+memory +pids"), ""
        except OSError as exc:
            return None, f"cgroup v2 {own}: {exc.strerror or exc}"
    return None, "no cgroup2 mount shows our cgroup"


def _detect_v1(mounts: list[Mount], paths: Mapping[str, str]) -> tuple[dict[str, str], str]:
    bases: dict[str, str] = {}
    reasons = []
    for controller in (*_CONTROLLERS, "cpuacct"):
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        own = None if mount is None or controller not in paths else cgroup_dir(mount, paths[controller])
        if own is None:
            reasons.append(f"no cgroup v1 {controller} hierarchy")
            continue
        try:
            bases[controller] = _make_base(own, None)
        except OSError as exc:
            reasons.append(f"cgroup v1 {own}: {exc.strerror or exc}")
    return bases, "; ".join(reasons)


def detect(cgroup_text: str, mountinfo_text: str, *, exempt: bool) -> Enforcement:
    """Decide (and prepare: create our ``agent-supervisor`` dirs) from the two /proc texts."""
    mounts, paths = parse_mountinfo(mountinfo_text), parse_proc_cgroup(cgroup_text)
    v2, why_v2 = _detect_v2(mounts, paths)
    if v2 is not None:
        return Enforcement("cgroup-v2", v2, v2, v2, exempt)
    v1, why_v1 = _detect_v1(mounts, paths)
    memory, pids = v1.get("memory"), v1.get("pids")
    if memory is None and pids is None:
        return Enforcement("rlimit", nproc_exempt=exempt, reason=f"{why_v2}; {why_v1}")
    return Enforcement("cgroup-v1", memory, pids, v1.get("cpuacct"), exempt, why_v1)


def detect_host() -> Enforcement:
    """Detect what this process may do with cgroups (reads /proc/self; never raises)."""
    exempt = nproc_exempt()
    if sys.platform != "linux":
        return Enforcement("rlimit", nproc_exempt=exempt, reason="cgroups exist only on Linux")
    try:
        return detect(_read("/proc/self/cgroup"), _read("/proc/self/mountinfo"), exempt=exempt)
    except OSError as exc:  # never crash on an odd /proc: degrade to rlimits
        return Enforcement("rlimit", nproc_exempt=exempt, reason=f"cannot read /proc: {exc}")


# ---------------------------------------------------------------- one agent's cgroup


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


def _rmdir(path: str) -> bool:
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
                if _rmdir(path):
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
                            _rmdir(entry.path)
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
        """The agent cgroup ``pid`` lives in, if it is one of ours (see ``find``)."""
        return find(pid, self.enforcement)


@dataclass
class AgentCgroup:
    """One agent's cgroup directories (one in v2; one per hierarchy in v1)."""

    version: int
    dirs: dict[str, set[str]]  # dir -> controllers ("memory", "pids", "cpu")
    joined: set[str] = field(default_factory=set)
    memory_max: int | None = None
    pids_max: int | None = None

    def _dir(self, controller: str) -> str | None:
        if controller not in self.joined:
            return None
        return next((d for d, cs in self.dirs.items() if controller in cs), None)

    @classmethod
    def create(
        cls, enf: Enforcement, name: str, memory_max: int | None, pids_max: int | None
    ) -> tuple[AgentCgroup | None, str]:
        """mkdir the agent's cgroups (``name`` from ``agent_name``) and write the limits;
        (None, reason) when none could be made."""
        dirs: dict[str, set[str]] = {}
        reasons = []
        for base, controllers in enf.bases().items():
            try:
                path = _mkdir_unique(base, name)
            except OSError as exc:
                reasons.append(f"{base}: {exc.strerror or exc}")
                continue
            try:
                _write_limits(path, controllers, memory_max, pids_max, enf.version)
            except OSError as exc:
                reasons.append(f"{path}: {exc.strerror or exc}")
                _rmdir(path)
                continue
            dirs[path] = controllers
        if not dirs:
            return None, "; ".join(reasons) or "no cgroup"
        return cls(enf.version, dirs, set(), memory_max, pids_max), "; ".join(reasons)

    def join(self, pid: int) -> set[str]:
        """Move ``pid`` (the waiting wrapper, nothing else) into every dir; the controllers joined."""
        for path, controllers in self.dirs.items():
            try:
                _write(os.path.join(path, "cgroup.procs"), str(pid))
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
                stat = _keyed(_read(os.path.join(mem, "memory.stat")))
                cache = stat.get("inactive_file", stat.get("total_inactive_file", 0))
                rss = None if usage is None else max(0, usage - cache)
        if (pids := self._dir("pids")) is not None:
            tasks = _int(os.path.join(pids, "pids.current"))
        if (acct := self._dir("cpu")) is not None:
            if self.version == 1:
                cpu = _int(os.path.join(acct, "cpuacct.usage"))
            else:
                with contextlib.suppress(OSError, KeyError):
                    cpu = _keyed(_read(os.path.join(acct, "cpu.stat")))["usage_usec"] * 1000
        return Counters(rss, cpu, tasks)

    def events(self) -> dict[str, int]:
        """``oom_kill``, ``failcnt`` (v1) and ``pids_max`` (refused forks) as far as readable."""
        out: dict[str, int] = {}
        if (mem := self._dir("memory")) is not None:
            with contextlib.suppress(OSError):
                # v1 memory.oom_control has carried an oom_kill count since Linux 4.13
                name = "memory.events" if self.version == 2 else "memory.oom_control"
                events = _keyed(_read(os.path.join(mem, name)))
                if "oom_kill" in events:
                    out["oom_kill"] = events["oom_kill"]
            if self.version == 1:
                with contextlib.suppress(OSError, ValueError):
                    out["failcnt"] = int(_read(os.path.join(mem, "memory.failcnt")))
        if (pids := self._dir("pids")) is not None:
            with contextlib.suppress(OSError):
                out["pids_max"] = _keyed(_read(os.path.join(pids, "pids.events"))).get("max", 0)
        return out

    def members(self) -> set[int]:
        """Pids in any of the agent's cgroups (v1 lists may repeat: a set)."""
        found: set[int] = set()
        for path in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in _read(os.path.join(path, "cgroup.procs")).split())
        return found

    def kill(self) -> bool:
        """v2 ``cgroup.kill`` (Linux 5.14+): SIGKILL every member atomically; False if unavailable."""
        if self.version != 2:
            return False
        try:
            _write(os.path.join(next(iter(self.dirs)), "cgroup.kill"), "1")
        except OSError:
            return False
        return True

    def remove(self) -> list[str]:
        """rmdir every dir (never moving anything); the dirs still busy (``Cgroups.remove``
        retries them later)."""
        return [path for path in self.dirs if not _rmdir(path)]


def _mkdir_unique(base: str, name: str) -> str:
    for n in range(1, 10):
        path = os.path.join(base, name if n == 1 else f"{name}.{n}")
        try:
            os.mkdir(path, 0o755)
            return path
        except FileExistsError:
            if _rmdir(path):  # a stale empty one (a supervisor died before removing it)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o755)
                    return path
    raise OSError(errno.EEXIST, f"{name} and 8 alternatives exist")


def _write_limits(path: str, controllers: set[str], mem: int | None, pids: int | None, version: int) -> None:
    if "memory" in controllers and mem is not None:
        _write(os.path.join(path, "memory.max" if version == 2 else "memory.limit_in_bytes"), str(mem))
        # Without this, the limit would only push the tree into swap. Absent (no swap
        # accounting) or refused: the memory limit alone stands.
        with contextlib.suppress(OSError):
            if version == 2:
                _write(os.path.join(path, "memory.swap.max"), "0")
            else:
                _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(mem))
    if "pids" in controllers and pids is not None:
        _write(os.path.join(path, "pids.max"), str(pids))


def read_back(dirs: Iterable[str], version: int) -> tuple[int | None, int | None]:
    """(memory max, pids max) as an existing agent cgroup holds them (re-adoption)."""
    mem = pids = None
    for path in dirs:
        with contextlib.suppress(OSError, ValueError):
            raw = _read(os.path.join(path, "memory.max" if version == 2 else "memory.limit_in_bytes")).strip()
            mem = None if raw == "max" or int(raw) >= 1 << 62 else int(raw)
        with contextlib.suppress(OSError, ValueError):
            raw = _read(os.path.join(path, "pids.max")).strip()
            pids = None if raw == "max" else int(raw)
    return mem, pids


def find(pid: int, enf: Enforcement) -> AgentCgroup | None:
    """The agent cgroup ``pid`` lives in, if it is one of ours: ``<our cgroup>/agent-supervisor/x``
    in every hierarchy we use (re-adoption after a restart; limits are read back)."""
    try:
        mine = parse_proc_cgroup(_read("/proc/self/cgroup"))
        theirs = parse_proc_cgroup(_read(f"/proc/{pid}/cgroup"))
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
