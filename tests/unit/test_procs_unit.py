"""Unit tests of supervisor.procs and supervisor.logcap: parsing, identity, status, log capping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from supervisor import procs, proctable
from supervisor.logcap import LogCap
from supervisor.procs import ExitStatus
from tests import support

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the Linux branches are tested here")


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition") -> None:
    """tests.support.wait_until, keeping this file's positional ``what``."""
    support.wait_until(predicate, timeout, interval=0.01, message=what)


def _stat_line(comm: bytes) -> bytes:
    # field n (n >= 4) holds the number n, so the parser's picks are easy to check
    return b"1234 (" + comm + b") S " + b" ".join(str(n).encode() for n in range(4, 53)) + b"\n"


# ---------------------------------------------------------------- /proc parsing and identity


@pytest.mark.parametrize("comm", [b"sleep", b"(a) b)", b"a b c", b") ) (", b"x\nS 9 9", b""])
def test_proc_stat_parsing_survives_weird_comm_names(comm: bytes) -> None:
    """Fields are read after the last ')' so spaces and parens in comm cannot shift them."""
    stat = proctable._parse_proc_stat(_stat_line(comm))
    assert stat == proctable._Stat("S", 5, 22)


def test_read_stat_of_self_matches_the_kernel() -> None:
    """Our own /proc stat gives our process group and a running state."""
    stat = proctable._read_stat(os.getpid())
    assert stat is not None
    assert stat.pgrp == os.getpgrp()
    assert stat.state in ("R", "S")


def test_identity_of_a_process_with_a_weird_comm() -> None:
    """A live process named '(a) b)' still has a well-formed, stable identity."""
    code = (
        "import ctypes, time; ctypes.CDLL(None).prctl(15, b'(a) b) x', 0, 0, 0);"  # PR_SET_NAME
        "print(1, flush=True); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        assert Path(f"/proc/{child.pid}/comm").read_text().strip() == "(a) b) x"
        identity = procs.identity_of(child.pid)
        assert identity is not None
        assert identity == procs.identity_of(child.pid)
        assert procs.same_process(child.pid, identity)
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


def test_identity_of_self_is_stable_and_names_this_boot() -> None:
    """identity_of(our pid) is the same on every call and carries the boot id and start ticks."""
    first = procs.identity_of(os.getpid())
    assert first is not None
    assert first == procs.identity_of(os.getpid())
    kind, boot, ticks = first.split(":")
    assert (kind, boot) == ("linux", procs.boot_id())
    assert int(ticks) > 0
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_identity_ignores_a_stepped_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stepping the clock by an hour changes no identity: only kernel start ticks count (psutil #2526)."""
    before = procs.identity_of(os.getpid())
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    monkeypatch.setattr(psutil, "boot_time", lambda: real_time() - 10)
    assert procs.identity_of(os.getpid()) == before
    assert before is not None
    assert procs.same_process(os.getpid(), before)


def test_identity_of_no_process_is_none() -> None:
    """A pid that cannot exist (0, negative, above pid_max) has no identity."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert procs.identity_of(pid_max + 1) is None
    assert procs.identity_of(0) is None
    assert procs.identity_of(-1) is None
    assert not procs.same_process(pid_max + 1, "linux:x:1")


def test_same_process_rejects_a_wrong_identity() -> None:
    """A live pid with another start identity (simulated PID reuse) is not the same process."""
    me = os.getpid()
    identity = procs.identity_of(me)
    assert identity is not None
    assert procs.same_process(me, identity)
    assert not procs.same_process(me, identity + "0")
    assert not procs.same_process(me, f"linux:{procs.boot_id()}:1")
    assert not procs.same_process(me, identity.replace(procs.boot_id(), "another-boot"))


def test_a_stale_record_never_signals_the_process_that_reused_its_pid(tmp_path: Path) -> None:
    """signal_group and kill_tree on an attached agent whose pid now names an unrelated process do nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SUPERVISOR_")}
    unrelated = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    agent = procs.AgentProcess.attach(
        pid=unrelated.pid,
        pgid=unrelated.pid,
        identity=f"linux:{procs.boot_id()}:1",  # what the stale state file says
        started_mono=time.monotonic(),
        log_path=tmp_path / "log",
        run_dir=tmp_path,
        job_id=1,
        attempt=1,
        worker="w-unit",
    )
    try:
        assert agent.fileno() is None  # attach refuses to watch a process that is not ours
        assert agent.signal_group(signal.SIGKILL) is False
        assert agent.kill_tree() == []
        assert agent.poll() == ExitStatus(None, None, None)  # "ours" is gone, outcome unknown
        time.sleep(0.05)  # a wrongly sent SIGKILL would have landed by now
        assert unrelated.poll() is None
    finally:
        agent.close()
        unrelated.kill()
        unrelated.wait()


def test_the_supervisors_own_group_is_never_signalled(tmp_path: Path) -> None:
    """Even a record naming this very process and its group is refused by signal_group."""
    me = os.getpid()
    identity = procs.identity_of(me)
    assert identity is not None
    agent = procs.AgentProcess.attach(
        pid=me, pgid=os.getpgrp(), identity=identity, started_mono=0.0, log_path=tmp_path / "log",
        run_dir=tmp_path, job_id=1, attempt=1, worker="w-unit",
    )  # fmt: skip
    try:
        assert agent.signal_group(0) is False
        assert procs.signal_process(me, identity, 0) is False
    finally:
        agent.close()


# ---------------------------------------------------------------- exit status


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (ExitStatus(3, None, None), "exit code 3"),
        (ExitStatus(0, None, 1024), "exit code 0"),
        (ExitStatus(None, signal.SIGKILL, None), "killed by SIGKILL"),
        (ExitStatus(None, signal.SIGTERM, None), "killed by SIGTERM"),
        (ExitStatus(None, 40, None), "killed by signal 40"),
        (ExitStatus(None, None, None), "exit status unknown"),
    ],
)
def test_exit_status_describes_itself(status: ExitStatus, text: str) -> None:
    """describe() says 'exit code N', 'killed by SIGNAME' or that the status is unknown."""
    assert status.describe() == text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("0", ExitStatus(0, None, None)),
        ("7\n", ExitStatus(7, None, None)),
        ("143", ExitStatus(None, 15, None)),  # sh's $? for a SIGTERM death
        ("137", ExitStatus(None, 9, None)),
        ("128", ExitStatus(128, None, None)),
        ("255", ExitStatus(255, None, None)),
        ("", ExitStatus(None, None, None)),  # a wrapper killed mid-write
        ("x1", ExitStatus(None, None, None)),
        ("300", ExitStatus(None, None, None)),
    ],
)
def test_exit_file_is_decoded_with_shell_signal_convention(
    tmp_path: Path, content: str, expected: ExitStatus
) -> None:
    """The wrapper's exit file maps 128+N to signal N; garbage or emptiness is 'unknown'."""
    (tmp_path / "exit").write_text(content)
    assert procs._read_exit_file(tmp_path / "exit") == expected


def test_missing_exit_file_is_unknown(tmp_path: Path) -> None:
    """No exit file (the wrapper was SIGKILLed) means the outcome is unknown."""
    assert procs._read_exit_file(tmp_path / "exit") == ExitStatus(None, None, None)


def test_spawn_refuses_env_tags_that_contradict_the_job(tmp_path: Path) -> None:
    """An env whose tags name another job is a programming error, caught before any process starts."""
    with pytest.raises(ValueError, match=procs.TAG_JOB):
        procs.spawn(
            ["true"], env={procs.TAG_JOB: "2"}, run_dir=tmp_path, log_path=tmp_path / "log",
            job_id=1, attempt=1, worker="w",
        )  # fmt: skip


# ---------------------------------------------------------------- LogCap


def _marker(cap: int) -> bytes:
    return f"\n[agent-supervisor: output truncated at {cap} bytes]\n".encode()


def _final_marker(cap: int, dropped: int) -> bytes:
    return (
        f"\n[agent-supervisor: output truncated at {cap} bytes; at least {dropped} bytes dropped]\n".encode()
    )


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_logcap_copes_with_a_missing_file(tmp_path: Path) -> None:
    """Before the agent creates its log, check() reports no growth and finish() an empty tail."""
    cap = LogCap(tmp_path / "log", 100)
    assert cap.check() is False
    assert (cap.size, cap.dropped) == (0, 0)
    assert cap.finish() == ""


def test_logcap_detects_growth(tmp_path: Path) -> None:
    """check() is True exactly when the file grew since the previous check."""
    path = tmp_path / "log"
    cap = LogCap(path, 1000)
    _append(path, b"hello\n")
    assert cap.check() is True
    assert cap.check() is False
    _append(path, b"more\n")
    assert cap.check() is True
    assert cap.size == 11
    assert cap.check() is False


def test_logcap_leaves_a_file_under_the_cap_alone(tmp_path: Path) -> None:
    """Output below the cap is untouched and finish() returns it all."""
    path = tmp_path / "log"
    _append(path, b"line 1\nline 2\n")
    cap = LogCap(path, 100)
    assert cap.finish() == "line 1\nline 2\n"
    assert path.read_bytes() == b"line 1\nline 2\n"
    assert cap.dropped == 0


def test_logcap_truncates_to_cap_plus_marker_and_counts_dropped_bytes(tmp_path: Path) -> None:
    """Past the cap the file keeps its head plus one marker line; later output is dropped and counted."""
    path = tmp_path / "log"
    output = bytes(range(256)) * 2  # 512 distinct-ish bytes
    cap = LogCap(path, 100, tail_bytes=16)
    _append(path, output[:250])
    assert cap.check() is True
    assert path.read_bytes() == output[:100] + _marker(100)
    assert cap.dropped == 150
    assert cap.truncated
    _append(path, output[250:])
    assert cap.check() is True
    assert path.read_bytes() == output[:100] + _marker(100)
    assert cap.dropped == 412
    assert cap.check() is False  # nothing new
    tail = cap.finish()
    assert tail == output[-16:].decode("utf-8", errors="replace")
    assert path.read_bytes() == output[:100] + _final_marker(100, 412)
    assert cap.finish() == tail  # idempotent
    assert path.read_bytes() == output[:100] + _final_marker(100, 412)


def test_logcap_tail_reaches_back_into_the_kept_head(tmp_path: Path) -> None:
    """When less than tail_bytes were dropped, the tail is the end of head + dropped part."""
    path = tmp_path / "log"
    output = b"".join(b"%03d\n" % i for i in range(40))  # 160 bytes
    cap = LogCap(path, 100, tail_bytes=4096)
    _append(path, output)
    assert cap.finish() == output.decode()
    assert cap.dropped == 60


def test_logcap_file_never_exceeds_cap_plus_marker_after_a_check(tmp_path: Path) -> None:
    """Across many appends of random sizes, every check leaves at most cap + marker bytes."""
    path = tmp_path / "log"
    cap = LogCap(path, 1000, tail_bytes=64)
    written = b""
    for i in range(200):
        chunk = (b"%d," % i) * (i % 37)
        written += chunk
        _append(path, chunk)
        cap.check()
        assert path.stat().st_size <= 1000 + len(_marker(1000))
    assert cap.finish() == written[-64:].decode()
    assert cap.dropped == len(written) - 1000


@pytest.mark.parametrize("truncated", [False, True])
def test_logcap_tail_drops_a_split_multibyte_character(tmp_path: Path, truncated: bool) -> None:
    """A tail cut in the middle of a UTF-8 character starts at the next whole character."""
    path = tmp_path / "log"
    text = "é" * 50  # 2 bytes each; an odd tail size cuts one in half
    _append(path, text.encode())
    cap = LogCap(path, 10 if truncated else 1000, tail_bytes=9)
    assert cap.finish() == "é" * 4
    assert cap.truncated is truncated


def test_logcap_tail_replaces_an_unfinished_character(tmp_path: Path) -> None:
    """An agent that died mid-character leaves a replacement char, not an exception."""
    path = tmp_path / "log"
    _append(path, "ok €".encode()[:-1])
    assert LogCap(path, 1000).finish() == "ok \ufffd"


def test_logcap_recovers_when_someone_else_truncates_the_file(tmp_path: Path) -> None:
    """After an outside truncation the marker is gone; capping starts over on the new content."""
    path = tmp_path / "log"
    cap = LogCap(path, 10, tail_bytes=8)
    _append(path, b"a" * 30)
    cap.check()
    assert cap.dropped == 20
    path.write_bytes(b"")  # `: > log`
    assert cap.check() is True  # a change counts as activity
    _append(path, b"fresh")
    cap.check()
    assert cap.finish() == "fresh"
    assert path.read_bytes() == b"fresh"
    _append(path, b"b" * 20)
    cap.check()
    assert path.read_bytes() == b"freshbbbbb" + _marker(10)


def test_logcap_adopts_the_marker_left_by_an_earlier_supervisor(tmp_path: Path) -> None:
    """A new LogCap on an already-truncated log keeps the old marker instead of keeping it as output."""
    path = tmp_path / "log"
    first = LogCap(path, 10)
    _append(path, b"h" * 10 + b"x" * 20)
    first.check()
    _append(path, b"late output")  # written while no supervisor was watching
    second = LogCap(path, 10)
    assert second.finish() == "late output"
    assert path.read_bytes() == b"h" * 10 + _final_marker(10, 11)
    third = LogCap(path, 10)  # a final marker's count is carried on
    _append(path, b"zz")
    third.finish()
    assert path.read_bytes() == b"h" * 10 + _final_marker(10, 13)


def test_memory_reads_what_psutil_reports() -> None:
    """procs.memory() (a direct /proc/meminfo read on Linux) agrees with psutil."""
    available, total = procs.memory()
    vm = psutil.virtual_memory()
    assert total == vm.total
    assert 0 < available <= total
    assert abs(available - vm.available) < total // 20  # both moments of a live machine
