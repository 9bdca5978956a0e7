"""The host side of per-agent cgroups: which hierarchies we may use (``detect``), and the files.

Detection (``detect_host()``, once per ``Cgroups`` object): cgroup v2 where a cgroup2 mount
(``/sys/fs/cgroup`` or a hybrid's ``unified``) shows our own cgroup with the memory and pids
controllers and lets us enable them for a child (delegation); cgroup v1 where per-controller
hierarchies let us create directories under our own cgroup (memory and pids limit, cpuacct only
counts). The CPU controller (a kind's ``cpu_max``: v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) is
optional: where it cannot be enabled or written, the rate is not enforced and ``describe`` says
why. Agents' cgroups are ``<our cgroup>/agent-supervisor/<job>-<attempt>-<worker>``: nothing
outside our own subtree is touched, and nothing is moved except the wrapper process we just
started (``join``). One agent's cgroup is ``supervisor.agentcgroup``; the supervisor-wide
bookkeeping (busy removals, sweeps) is ``supervisor.limits.Cgroups``.

v2's "no internal processes" rule: a non-root cgroup that holds processes (we do) cannot enable
controllers for its children (EBUSY), and we never move ourselves; so v2 works where our cgroup
is a namespace root or already delegates, and otherwise we say why and fall back.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "BASE_NAME",
    "Enforcement",
    "Mount",
    "cgroup_dir",
    "detect",
    "detect_host",
    "nproc_exempt",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "read_file",
    "write_file",
]

BASE_NAME: Final = "agent-supervisor"
_CONTROLLERS: Final = ("memory", "pids")  # required; "cpu" (the rate) is optional, cpuacct counts
_CAP_SYS_ADMIN: Final = 21
_CAP_SYS_RESOURCE: Final = 24


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
    cpu_max_base: str | None = None
    """Where the CPU controller (a rate cap) can be written; None: ``cpu_max`` is not enforced."""
    cpu_reason: str = ""
    """Why the CPU controller cannot be used; empty when it can."""

    def describe(self) -> str:
        """One line for health: ``cgroup-v1 (memory, pids, cpu)``, ``rlimit; memory: sampled; ...``."""
        bases = (("memory", self.memory_base), ("pids", self.pids_base), ("cpu", self.cpu_max_base))
        used = [c for c, b in bases if b]
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
        if self.cpu_max_base is None:
            notes.append(f"CPU rate: not enforced ({self.cpu_reason or 'no cgroup'})")
        return "; ".join([head, *notes])

    @property
    def version(self) -> int:
        """2 for cgroup-v2, else 1 (also for rlimit, where no cgroup is ever made)."""
        return 2 if self.backend == "cgroup-v2" else 1

    def bases(self) -> dict[str, set[str]]:
        """``{base dir: controllers}``; one dir in v2, one per hierarchy in v1. Controller
        keys: ``memory``, ``pids``, ``cpuacct`` (CPU usage counters) and ``cpu`` (the rate cap)."""
        out: dict[str, set[str]] = {}
        named = (
            ("memory", self.memory_base),
            ("pids", self.pids_base),
            ("cpuacct", self.cpu_base),
            ("cpu", self.cpu_max_base),
        )
        for name, base in named:
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
        found = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", read_file("/proc/self/status"), re.MULTILINE)
    except OSError:
        return False
    caps = int(found.group(1), 16) if found else 0
    return bool(caps & (1 << _CAP_SYS_ADMIN | 1 << _CAP_SYS_RESOURCE))


def read_file(path: str) -> str:
    """A cgroup (or /proc) file's text."""
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def write_file(path: str, text: str) -> None:
    """Write one value to a cgroup file."""
    # one write(2) of the whole value: cgroup files take one value per write
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _make_base(own: str, enable: str | None) -> str:
    """Create ``own/agent-supervisor`` (v2: with ``enable`` in its subtree_control) and prove
    that we may create and remove a child in it; OSError otherwise."""
    base = os.path.join(own, BASE_NAME)
    with contextlib.suppress(FileExistsError):
        os.mkdir(base, 0o755)
    if enable is not None and not set(enable.replace("+", "").split()) <= set(
        read_file(os.path.join(base, "cgroup.subtree_control")).split()
    ):
        write_file(os.path.join(base, "cgroup.subtree_control"), enable)
    probe = os.path.join(base, f".probe-{os.getpid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(probe)
    os.rmdir(probe)
    return base


def _enable_v2_cpu(own: str, base: str, available: set[str]) -> str:
    """Enable the cpu controller below ``own`` and in our base; why not ("" when done)."""
    if "cpu" not in available:
        return f"cgroup v2 {own} lacks the cpu controller (not delegated)"
    try:
        for path in (own, base):
            control = os.path.join(path, "cgroup.subtree_control")
            if "cpu" not in read_file(control).split():
                write_file(control, "+cpu")
    except OSError as exc:  # e.g. EINVAL: realtime threads in our cgroup (cgroup-v2.rst, "CPU")
        return f"cgroup v2 {own}: cannot enable cpu: {exc.strerror or exc}"
    return ""


def _detect_v2(mounts: list[Mount], paths: Mapping[str, str]) -> tuple[str | None, str, str]:
    """(our base, why not v2, why no cpu controller)."""
    if "" not in paths:
        return None, "no cgroup v2 membership", ""
    for mount in (m for m in mounts if m.fstype == "cgroup2"):
        own = cgroup_dir(mount, paths[""])
        if own is None:
            continue
        try:
            available = set(read_file(os.path.join(own, "cgroup.controllers")).split())
            missing = [c for c in _CONTROLLERS if c not in available]
            if missing:
                return None, f"cgroup v2 {own} lacks controllers: {', '.join(missing)} (not delegated)", ""
            enabled = set(read_file(os.path.join(own, "cgroup.subtree_control")).split())
            if not set(_CONTROLLERS) <= enabled:
                # EBUSY here is the "no internal processes" rule: our cgroup holds processes
                # (us) and is not a root; we never move ourselves, so v2 is then unusable.
                write_file(os.path.join(own, "cgroup.subtree_control"), "+memory +pids")
            base = _make_base(own, "+memory +pids")
        except OSError as exc:
            return None, f"cgroup v2 {own}: {exc.strerror or exc}", ""
        return base, "", _enable_v2_cpu(own, base, available)
    return None, "no cgroup2 mount shows our cgroup", ""


def _detect_v1(mounts: list[Mount], paths: Mapping[str, str]) -> tuple[dict[str, str], str, str]:
    """({controller: base}, why some of memory/pids/cpuacct are missing, why cpu is)."""
    bases: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for controller in (*_CONTROLLERS, "cpuacct", "cpu"):
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        own = None if mount is None or controller not in paths else cgroup_dir(mount, paths[controller])
        if own is None:
            reasons[controller] = f"no cgroup v1 {controller} hierarchy"
            continue
        try:
            bases[controller] = _make_base(own, None)
        except OSError as exc:
            reasons[controller] = f"cgroup v1 {own}: {exc.strerror or exc}"
    cpu_why = reasons.pop("cpu", "")
    return bases, "; ".join(reasons.values()), cpu_why


def detect(cgroup_text: str, mountinfo_text: str, *, exempt: bool) -> Enforcement:
    """Decide (and prepare: create our ``agent-supervisor`` dirs) from the two /proc texts."""
    mounts, paths = parse_mountinfo(mountinfo_text), parse_proc_cgroup(cgroup_text)
    v2, why_v2, cpu_v2 = _detect_v2(mounts, paths)
    if v2 is not None:
        cpu = None if cpu_v2 else v2
        return Enforcement("cgroup-v2", v2, v2, v2, exempt, cpu_max_base=cpu, cpu_reason=cpu_v2)
    v1, why_v1, cpu_v1 = _detect_v1(mounts, paths)
    memory, pids = v1.get("memory"), v1.get("pids")
    if memory is None and pids is None:
        why = f"{why_v2}; {why_v1}"
        return Enforcement("rlimit", nproc_exempt=exempt, reason=why, cpu_reason="no memory or pids cgroup")
    cpu = v1.get("cpu")
    return Enforcement("cgroup-v1", memory, pids, v1.get("cpuacct"), exempt, why_v1, cpu, cpu_v1)


def detect_host() -> Enforcement:
    """Detect what this process may do with cgroups (reads /proc/self; never raises)."""
    exempt = nproc_exempt()
    if sys.platform != "linux":
        why = "cgroups exist only on Linux"
        return Enforcement("rlimit", nproc_exempt=exempt, reason=why, cpu_reason=why)
    try:
        return detect(read_file("/proc/self/cgroup"), read_file("/proc/self/mountinfo"), exempt=exempt)
    except OSError as exc:  # never crash on an odd /proc: degrade to rlimits
        why = f"cannot read /proc: {exc}"
        return Enforcement("rlimit", nproc_exempt=exempt, reason=why, cpu_reason=why)
