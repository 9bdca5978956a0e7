"""Unit tests of supervisor.limits, cgroups and agentcgroup: parsing, detection, wrapper text, causes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from supervisor import agentcgroup, cgroups, limits
from supervisor.cgroups import Enforcement, Mount, cgroup_dir, detect, parse_mountinfo, parse_proc_cgroup
from supervisor.limits import Limits, breach_of, wrapper_script

# /proc/self/cgroup of a Docker-style container on a hybrid host (this project's CI machine)
V1_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/2b8b
2:cpu,cpuacct:/
0::/
"""
V2_CGROUP = "0::/user.slice/user-1000.slice/app.slice/agent.service\n"
MOUNTINFO = r"""22 1 0:21 / / rw,relatime - ext4 /dev/root rw
31 23 0:28 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 master:2 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 /docker/abc /mnt/with\040space rw - cgroup cgroup rw,blkio
"""


# ---------------------------------------------------------------- parsing


def test_proc_cgroup_v1_lines_map_every_controller_and_keep_the_v2_line() -> None:
    """v1 lines give one entry per (comma-separated) controller; ``0::`` is the v2 key ``""``."""
    found = parse_proc_cgroup(V1_CGROUP)
    assert found["memory"] == "/process_api/2b8b"
    assert found["pids"] == found["cpu"] == found["cpuacct"] == "/"
    assert found["name=systemd"] == "/"
    assert found[""] == "/"


def test_proc_cgroup_pure_v2_has_only_the_unified_entry_and_skips_garbage() -> None:
    """A cgroup2-only host lists one ``0::/path`` line; malformed lines are ignored."""
    assert parse_proc_cgroup(V2_CGROUP + "garbage\n\n") == {
        "": "/user.slice/user-1000.slice/app.slice/agent.service"
    }


def test_mountinfo_keeps_cgroup_mounts_with_options_and_unescapes_paths() -> None:
    """Only cgroup/cgroup2 mounts are kept, optional fields are skipped, \\040 becomes a space."""
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == [
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/mnt/with space",
    ]
    assert {"cpu", "cpuacct"} <= mounts[0].options
    assert mounts[3].fstype == "cgroup2"
    assert mounts[4].root == "/docker/abc"


@pytest.mark.parametrize(
    ("root", "path", "expected"),
    [
        ("/", "/", "/m"),
        ("/", "/a/b", "/m/a/b"),
        ("/docker/x", "/docker/x", "/m"),  # a container that sees its own cgroup as the root
        ("/docker/x", "/docker/x/y", "/m/y"),
        ("/docker/x", "/docker/xy", None),  # a sibling, not below the mount's root
        ("/docker/x", "/other", None),
        ("/", "/../escape", None),
    ],
)
def test_cgroup_dir_joins_mount_and_path_relative_to_the_mount_root(
    root: str, path: str, expected: str | None
) -> None:
    """Our cgroup's directory is the mount point plus the path below the mount's root, or None."""
    assert cgroup_dir(Mount("/m", root, "cgroup", frozenset()), path) == expected


# ---------------------------------------------------------------- detection on fake trees


def _fake_v2(tmp_path: Path, controllers: str, subtree: str = "") -> str:
    own = tmp_path / "cg" / "app.slice"
    (own / "agent-supervisor").mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.subtree_control").write_text(subtree)
    (own / "agent-supervisor" / "cgroup.subtree_control").write_text("")
    return f"41 31 0:38 / {tmp_path}/cg rw - cgroup2 cgroup2 rw\n"


def _record_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(file, value) of every cgroup write; a plain file cannot show cgroup.subtree_control's
    "+x adds x" semantics, so the writes themselves are checked."""
    writes: list[tuple[str, str]] = []
    monkeypatch.setattr(cgroups, "write_file", lambda path, text: writes.append((path, text)))
    return writes


def test_v2_with_delegated_controllers_enables_them_and_makes_our_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writable v2 cgroup with memory, pids and cpu is chosen; all three are enabled below us."""
    writes = _record_writes(monkeypatch)
    mountinfo = _fake_v2(tmp_path, "cpu io memory pids")
    enf = detect("0::/app.slice\n", mountinfo, exempt=False)
    own = str(tmp_path / "cg" / "app.slice")
    base = f"{own}/agent-supervisor"
    assert (enf.backend, enf.memory_base, enf.pids_base, enf.cpu_base) == ("cgroup-v2", base, base, base)
    assert enf.cpu_max_base == base
    assert writes == [
        (f"{own}/cgroup.subtree_control", "+memory +pids"),
        (f"{base}/cgroup.subtree_control", "+memory +pids"),
        (f"{own}/cgroup.subtree_control", "+cpu"),
        (f"{base}/cgroup.subtree_control", "+cpu"),
    ]
    assert enf.describe() == "cgroup-v2 (memory, pids, cpu)"
    assert enf.bases() == {base: {"memory", "pids", "cpuacct", "cpu"}}


def test_v2_without_the_cpu_controller_keeps_memory_and_pids_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An undelegated cpu controller costs only the rate cap, and the host line says why."""
    _record_writes(monkeypatch)
    enf = detect("0::/app.slice\n", _fake_v2(tmp_path, "io memory pids"), exempt=False)
    assert (enf.backend, enf.cpu_max_base) == ("cgroup-v2", None)
    assert enf.describe() == (
        f"cgroup-v2 (memory, pids); CPU rate: not enforced (cgroup v2 {tmp_path}/cg/app.slice "
        "lacks the cpu controller (not delegated))"
    )


def test_v2_without_the_pids_controller_falls_back_and_says_why(tmp_path: Path) -> None:
    """Undelegated controllers mean no v2; with no v1 either, rlimit, and the reason names them."""
    enf = detect("0::/app.slice\n", _fake_v2(tmp_path, "cpu memory"), exempt=True)
    assert enf.backend == "rlimit"
    assert "lacks controllers: pids" in enf.reason
    assert enf.describe() == (
        "rlimit; memory: sampled by the supervisor; "
        "processes: not enforced for root, sampled by the supervisor; "
        "CPU rate: not enforced (no memory or pids cgroup)"
    )


def test_v1_hierarchies_under_our_own_cgroup_are_used_per_controller(tmp_path: Path) -> None:
    """v1: memory, pids, cpuacct and cpu each get a base below our cgroup in their hierarchy."""
    for name in ("memory/process_api/2b8b", "pids", "cpu,cpuacct"):
        (tmp_path / name).mkdir(parents=True)
    mountinfo = "".join(
        f"3{i} 31 0:3{i} / {tmp_path}/{name} rw - cgroup cgroup rw,{opts}\n"
        for i, (name, opts) in enumerate(
            [("cpu,cpuacct", "cpu,cpuacct"), ("memory", "memory"), ("pids", "pids")]
        )
    )
    enf = detect(V1_CGROUP, mountinfo, exempt=False)
    assert enf.backend == "cgroup-v1"
    assert enf.memory_base == f"{tmp_path}/memory/process_api/2b8b/agent-supervisor"
    assert enf.pids_base == f"{tmp_path}/pids/agent-supervisor"
    assert enf.cpu_base == enf.cpu_max_base == f"{tmp_path}/cpu,cpuacct/agent-supervisor"
    assert os.path.isdir(enf.pids_base)
    assert not list(Path(enf.pids_base).iterdir())  # the write probe was removed again
    assert enf.describe() == "cgroup-v1 (memory, pids, cpu)"
    assert enf.bases()[enf.cpu_base] == {"cpuacct", "cpu"}


def test_v1_with_only_memory_uses_rlimit_nproc_for_processes(tmp_path: Path) -> None:
    """A missing pids hierarchy leaves memory in a cgroup and processes to RLIMIT_NPROC."""
    (tmp_path / "memory").mkdir()
    enf = detect(
        "4:memory:/\n", f"35 31 0:32 / {tmp_path}/memory rw - cgroup cgroup rw,memory\n", exempt=False
    )
    assert (enf.backend, enf.pids_base) == ("cgroup-v1", None)
    assert enf.describe() == (
        "cgroup-v1 (memory); processes: RLIMIT_NPROC (per user, approximate); "
        "CPU rate: not enforced (no cgroup v1 cpu hierarchy)"
    )
    assert "no cgroup v1 pids hierarchy" in enf.reason


def test_no_cgroup_mount_at_all_is_rlimit() -> None:
    """Without any cgroup mount (a minimal container) detection degrades to rlimit, never raises."""
    enf = detect("", "22 1 0:21 / / rw - ext4 /dev/root rw\n", exempt=False)
    assert enf.backend == "rlimit"
    assert enf.bases() == {}


# ---------------------------------------------------------------- the wrapper text


def test_wrapper_sets_cpu_soft_limit_rounded_up_with_the_hard_limit_one_second_above() -> None:
    """RLIMIT_CPU: soft = ceil(cpu_time_s), hard = soft + 1, soft first (dash needs that order)."""
    script = wrapper_script(Limits(cpu_time_s=1.5), handshake=False, flag="p")
    assert script.index("ulimit -S -t 2") < script.index("ulimit -H -t 3")
    assert "read -r n" not in script


def test_wrapper_address_space_is_in_kib_and_nproc_uses_the_shells_letter() -> None:
    """``-v`` takes KiB; RLIMIT_NPROC is ``-p`` for dash and ``-u`` for bash."""
    dash = wrapper_script(Limits(address_space_bytes=1 << 30), handshake=False, nproc=77, flag="p")
    bash = wrapper_script(Limits(), handshake=False, nproc=77, flag="u")
    assert "ulimit -v 1048576" in dash
    assert "ulimit -p 77" in dash
    assert "ulimit -u 77" in bash
    assert "-p" not in bash


def test_wrapper_with_handshake_reads_its_line_then_gives_the_agent_dev_null() -> None:
    """With a cgroup the wrapper waits for one line, then restores /dev/null, before anything else."""
    script = wrapper_script(Limits(pids_max=5), handshake=True, flag="p")
    assert script.startswith(
        "trap : TERM INT HUP; read -r n; exec </dev/null; case $n in [1-9]*) ulimit -p $n"
    )
    assert script.endswith(
        '"$@"; rc=$?; umask 077; printf %s "$rc" > "$AGENT_SUPERVISOR_EXIT_FILE"; exit "$rc"'
    )


def test_wrapper_without_limits_is_just_the_exit_status_wrapper() -> None:
    """No limits and no cgroup: nothing runs before the agent but the trap."""
    assert wrapper_script(Limits(), handshake=False, flag="p").startswith('trap : TERM INT HUP; "$@"')


@pytest.mark.parametrize(
    ("target", "letter"),
    [("/usr/bin/dash", "p"), ("/bin/busybox", "p"), ("/usr/bin/bash", "u"), ("/bin/zsh", "u")],
)
def test_nproc_flag_follows_the_shell_behind_bin_sh(
    monkeypatch: pytest.MonkeyPatch, target: str, letter: str
) -> None:
    """The RLIMIT_NPROC letter is chosen from what /bin/sh really is (bash's -p is the pipe size)."""
    monkeypatch.setattr(limits.sys, "platform", "linux")
    monkeypatch.setattr(limits.os.path, "realpath", lambda _: target)
    limits.nproc_flag.cache_clear()
    try:
        assert limits.nproc_flag() == letter
    finally:
        limits.nproc_flag.cache_clear()


# ---------------------------------------------------------------- causes and facts


@pytest.mark.parametrize(
    ("lim", "events", "sig", "expected"),
    [
        (
            Limits(memory_max_bytes=256 << 20),
            {"oom_kill": 1},
            9,
            "memory limit 256 MiB exceeded (cgroup OOM kill)",
        ),
        (Limits(memory_max_bytes=256 << 20), {"oom_kill": 0, "failcnt": 9}, 9, None),
        (
            Limits(memory_max_bytes=256 << 20),
            {"failcnt": 3},  # an old v1 kernel without the oom_kill count
            9,
            "memory limit 256 MiB exceeded (cgroup limit hit, then SIGKILL)",
        ),
        (
            Limits(pids_max=50),
            {"pids_max": 12},
            None,
            "process limit 50 reached (pids.max, 12 forks refused)",
        ),
        (Limits(pids_max=50), {"pids_max": 1}, 1, "process limit 50 reached (pids.max, 1 fork refused)"),
        (Limits(cpu_time_s=2), {}, signal.SIGXCPU, "CPU time limit 2 s exceeded (SIGXCPU)"),
        (Limits(cpu_time_s=2), {}, signal.SIGKILL, None),  # the hard limit's SIGKILL is not claimed
        (Limits(), {"oom_kill": 1, "pids_max": 3}, signal.SIGXCPU, None),  # no limit, no breach
        (
            Limits(memory_max_bytes=3 << 19, pids_max=5),
            {"oom_kill": 2, "pids_max": 4},
            9,
            "memory limit 1.5 MiB exceeded (cgroup OOM kills: 2); "
            "process limit 5 reached (pids.max, 4 forks refused)",
        ),
    ],
)
def test_breach_of_names_the_limit_that_was_hit(
    lim: Limits, events: dict[str, int], sig: int | None, expected: str | None
) -> None:
    """Counters and the agent's death signal map to one line naming the limit, or None."""
    assert breach_of(lim, events, sig) == expected


AS = Limits(address_space_bytes=64 << 20)
HIT = "address space limit 64 MiB per process exceeded (output: {!r})"


@pytest.mark.parametrize(
    ("lim", "code", "sig", "tail", "expected"),
    [
        (AS, 1, None, "Traceback ...\nMemoryError\n", HIT.format("MemoryError")),
        (AS, 1, None, "cp: fork: Cannot allocate memory\n", HIT.format("Cannot allocate memory")),
        (AS, None, signal.SIGABRT, "throwing an instance of 'std::bad_alloc'", HIT.format("std::bad_alloc")),
        (AS, 2, None, "fatal error: runtime: out of memory", HIT.format("out of memory")),
        (AS, 0, None, "caught a MemoryError and carried on", None),  # it succeeded: no breach
        (AS, 1, None, "KeyError: 'x'", None),  # failed, but not for memory
        (AS, None, signal.SIGSEGV, "", None),  # an unchecked NULL: nothing to tell it by
        (Limits(), 1, None, "MemoryError", None),  # no address-space limit, so not its breach
    ],
)  # fmt: skip
def test_address_space_breach_is_inferred_from_a_failed_agents_last_output(
    lim: Limits, code: int | None, sig: int | None, tail: str, expected: str | None
) -> None:
    """RLIMIT_AS has no counter: a failed agent whose output ends in an allocation failure broke it."""
    assert breach_of(lim, {}, sig, code, tail) == expected


def test_describe_says_what_enforces_each_limit() -> None:
    """Per-agent facts name the cgroup file or rlimit behind each limit, and sampled ones plainly."""
    lim = Limits(
        memory_max_bytes=200 << 20, pids_max=30, cpu_time_s=1, address_space_bytes=1 << 30, cpu_max=0.5
    )
    enf = Enforcement("cgroup-v1", "/m", "/p", None, nproc_exempt=True, cpu_max_base="/c")
    dirs = {"/m/x": {"memory"}, "/p/x": {"pids"}, "/c/x": {"cpu"}}
    joined = agentcgroup.AgentCgroup(1, dirs, {"memory", "pids", "cpu"}, cpu_max=0.5)
    assert limits.describe(lim, joined, enf) == (
        "memory 200 MiB: cgroup-v1 memory.limit_in_bytes; processes 30: cgroup-v1 pids.max; "
        "CPU time 1 s per process: RLIMIT_CPU; address space 1024 MiB per process: RLIMIT_AS; "
        "CPU rate 0.5 CPUs: cgroup-v1 cpu.cfs_quota_us"
    )
    refused = agentcgroup.AgentCgroup(1, {"/m/x": {"memory"}}, {"memory"})
    assert limits.describe(Limits(cpu_max=0.5), refused, enf) == (
        "CPU rate 0.5 CPUs: not enforced (the kernel refused the agent's cpu cgroup or the rate)"
    )
    no_cpu = Enforcement("cgroup-v1", "/m", "/p", None, cpu_reason="no cgroup v1 cpu hierarchy")
    assert limits.describe(Limits(cpu_max=2), refused, no_cpu) == (
        "CPU rate 2 CPUs: not enforced (no cgroup v1 cpu hierarchy)"
    )
    assert limits.describe(Limits(memory_max_bytes=1 << 20, pids_max=3), None, enf) == (
        "memory 1 MiB: sampled by the supervisor; processes 3: not enforced for root, sampled"
    )
    assert limits.describe(Limits(), joined, enf) == "no limits (cgroup-v1 accounting)"


def test_limits_any_is_false_only_when_nothing_is_set() -> None:
    """``Limits.any`` tells an empty limit set from one with any field."""
    assert not Limits().any()
    assert Limits(cpu_time_s=0.5).any()
    assert Limits(cpu_max=0.5).any()


@pytest.mark.parametrize("version", [1, 2])
def test_cpu_max_is_written_as_quota_per_100ms_period_and_read_back(tmp_path: Path, version: int) -> None:
    """0.2 CPUs is 20 ms per 100 ms (v2 ``cpu.max``, v1 cfs files); a tiny rate gets the 1 ms floor."""
    for name in ("cpu.max", "cpu.cfs_quota_us", "cpu.cfs_period_us"):
        (tmp_path / name).write_text("")
    agentcgroup._write_cpu_max(str(tmp_path), 0.2, version)
    if version == 2:
        assert (tmp_path / "cpu.max").read_text() == "20000 100000"
    else:
        assert (
            (tmp_path / "cpu.cfs_quota_us").read_text(),
            (tmp_path / "cpu.cfs_period_us").read_text(),
        ) == (
            "20000",
            "100000",
        )
    assert agentcgroup.read_cpu_max(str(tmp_path), version) == 0.2
    for name in ("cpu.max", "cpu.cfs_quota_us"):  # a cgroup file takes each write whole
        (tmp_path / name).write_text("")
    agentcgroup._write_cpu_max(str(tmp_path), 0.001, version)
    assert agentcgroup.read_cpu_max(str(tmp_path), version) == 0.01


def test_a_refused_cpu_rate_keeps_the_agents_other_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v2: when cpu.max refuses the rate, the one cgroup stays with memory and pids, cpu left out."""
    base = tmp_path / "agent-supervisor"
    base.mkdir()
    enf = Enforcement("cgroup-v2", str(base), str(base), str(base), cpu_max_base=str(base))
    real = agentcgroup.write_file

    def refuse_cpu(path: str, text: str) -> None:
        if path.endswith("cpu.max"):
            raise OSError(22, "Invalid argument", path)
        real(path, text)

    monkeypatch.setattr(agentcgroup, "write_file", refuse_cpu)
    monkeypatch.setattr(agentcgroup, "_write_limits", lambda *a: None)
    cgroup, why = agentcgroup.AgentCgroup.create(enf, "1-1-w", 100 << 20, 10, 0.5)
    assert cgroup is not None
    assert cgroup.dirs == {str(base / "1-1-w"): {"memory", "pids", "cpuacct"}}
    assert cgroup.cpu_max is None
    assert "cpu: Invalid argument" in why
    assert "not enforced" in limits.describe(Limits(cpu_max=0.5), cgroup, enf)
