"""The state file under writer crashes (F10b) and I/O errors (F11): never torn, never lost.

(a) A real writer process is SIGKILLed at 200 random instants while it saves alternating
states; every time, the file loads and equals one of the versions written (0 torn).
Spawning a fresh Python per kill would cost ~0.2 s each, so one helper process imports the
module once and forks a writer per round; the test kills the forked writer and the helper
reaps it.

(b) ENOSPC / EIO injected at the k-th os.open / os.write / os.fsync / os.replace for every k
(SQLite's diskfull.test pattern): save raises StateFileError, the previous file still loads,
no temp file remains, a failed fsync is never retried, and the next save succeeds.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import StateFileError
from supervisor.statefile import FORMAT, VERSION, AgentEntry, State, StateFile

ROOT = Path(__file__).resolve().parents[2]
KILLS = 200


def make_state(job_ids: range, stamp: float) -> State:
    return State(
        format=FORMAT,
        version=VERSION,
        worker_id="host-1a2b3c4d",
        boot_id="0b1c3f5e-8d2a-4c7b-9e1f-2a3b4c5d6e7f",
        updated_at=stamp,
        agents=[
            AgentEntry(
                job_id=j,
                attempt=1,
                worker="host-1a2b3c4d",
                pid=5000 + j,
                pgid=5000 + j,
                start_identity=f"linux:0b1c3f5e-8d2a-4c7b-9e1f-2a3b4c5d6e7f:{200000 + j}",
                command=["agent", "--job", str(j), "x" * 200],  # a few KiB: writes take a while
                started_at=1763820000.0 + j,
                started_mono=100.0 + j,
                timeout_s=60.0,
                idle_timeout_s=None,
                log_path=f"/data/logs/{j}-1.log",
                run_dir=f"/data/runs/{j}-1",
            )
            for j in job_ids
        ],
    )


# Two versions of different sizes, so that a torn mix of them cannot parse by accident.
STATE_A = make_state(range(1, 3), 1.0)
STATE_B = make_state(range(10, 30), 2.0)

HELPER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from supervisor.statefile import State, StateFile

    path, quarantine, states_file = sys.argv[1:4]
    states = [State.model_validate(s) for s in json.loads(Path(states_file).read_text())]
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "go":
            pid = os.fork()
            if pid == 0:  # the writer: announce, then save A, B, A, B, ... until killed
                try:
                    sf = StateFile(Path(path), Path(quarantine))
                    os.write(1, f"ready {os.getpid()}\\n".encode())
                    i = 0
                    while True:
                        sf.save(states[i % 2])
                        i += 1
                finally:
                    os._exit(3)  # only reached if save raised: the test sees a non-kill status
        elif cmd == "reap":
            _, status = os.waitpid(int(arg), 0)
            os.write(1, f"reaped {status}\\n".encode())
    """
)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_sigkill_of_writer_never_tears_the_file(tmp_path: Path) -> None:
    """200 SIGKILLs of a looping writer at random instants: the file always loads as A or B."""
    path, quarantine = tmp_path / "running-agents.json", tmp_path / "quarantine"
    states_file = tmp_path / "states.json"
    states_file.write_text(json.dumps([STATE_A.model_dump(mode="json"), STATE_B.model_dump(mode="json")]))
    sf = StateFile(path, quarantine)
    sf.save(STATE_A)
    rng = random.Random(1122)
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(path), str(quarantine), str(states_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
        cwd=ROOT,
    )
    assert helper.stdin is not None
    assert helper.stdout is not None
    writer = 0
    seen = {"A": 0, "B": 0}
    mid_write = 0
    try:
        for _ in range(KILLS):
            helper.stdin.write("go\n")
            helper.stdin.flush()
            word, pid = helper.stdout.readline().split()
            assert word == "ready"
            writer = int(pid)
            # The fault: a random instant within the next few saves (one save takes ~1 ms).
            time.sleep(rng.uniform(0.0, 0.004))
            os.kill(writer, signal.SIGKILL)
            helper.stdin.write(f"reap {writer}\n")
            helper.stdin.flush()
            word, status = helper.stdout.readline().split()
            writer = 0
            assert word == "reaped"
            assert os.WIFSIGNALED(int(status))
            assert os.WTERMSIG(int(status)) == signal.SIGKILL
            mid_write += bool(temp_files(tmp_path))
            result = sf.load()
            assert result.problem is None, result.problem
            assert result.state in (STATE_A, STATE_B)
            seen["A" if result.state == STATE_A else "B"] += 1
            assert temp_files(tmp_path) == []  # the killed writer's temp file was cleaned up
    finally:
        if writer:
            os.kill(writer, signal.SIGKILL)
        helper.stdin.close()
        helper.wait(timeout=10)
        helper.stdout.close()
    assert not quarantine.exists()  # nothing was ever found torn
    # The kills must have landed both between and inside saves for the test to mean anything.
    assert seen["A"] > 0
    assert seen["B"] > 0
    assert mid_write > 0


# -- (b) ENOSPC / EIO at every k-th call -------------------------------------------------


class Injector:
    """Wraps one ``os`` function: the k-th call raises ``OSError(err)``; records what happened."""

    def __init__(self, name: str, k: int, err: int) -> None:
        self.name, self.k, self.err = name, k, err
        self.real: Callable[..., Any] = getattr(os, name)
        self.calls = 0
        self.fired = False
        self.after_rename = False  # the failure hit the directory's open/fsync, after os.replace

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.k:
            self.fired = True
            # Opening or fsyncing the directory is the last step, after the rename.
            if self.name == "fsync":
                self.after_rename = stat.S_ISDIR(os.fstat(args[0]).st_mode)
            elif self.name == "open":
                self.after_rename = os.path.isdir(args[0])
            raise OSError(self.err, os.strerror(self.err))
        if self.name == "write":  # short writes, so that "every k" covers a partly written file
            return self.real(args[0], bytes(args[1][:512]))
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("name", ["open", "write", "fsync", "replace"])
def test_io_error_at_every_call_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, err: int
) -> None:
    """For every k, an error at the k-th call fails the save cleanly and leaves the old file."""
    sf = StateFile(tmp_path / "running-agents.json", tmp_path / "quarantine")
    sf.save(STATE_A)
    k = 0
    hit_dir = False
    while True:
        k += 1
        injector = Injector(name, k, err)
        monkeypatch.setattr(os, name, injector)
        try:
            sf.save(STATE_B)
        except StateFileError as exc:
            message = str(exc)
        else:
            message = ""
        finally:
            monkeypatch.undo()
        if not injector.fired:  # k is past the last call: the save went through untouched
            assert message == ""
            break
        assert message.startswith(("cannot write", "cannot lock")), message
        assert os.strerror(err) in message
        assert "\n" not in message
        assert injector.calls == k  # nothing retried after the failure (F11: never re-fsync)
        assert temp_files(tmp_path) == []
        result = sf.load()
        assert result.problem is None
        # Only the dir open/fsync comes after the rename: then the new file is in place, and
        # the error still reports that its durability is unknown.
        assert result.state == (STATE_B if injector.after_rename else STATE_A)
        hit_dir |= injector.after_rename
        sf.save(STATE_A)  # the disk "has space again": the next save succeeds
    assert k > 1, "the injection never fired"
    if name in ("open", "fsync"):  # the rename is made durable by an fsync of the directory
        assert hit_dir
    assert sf.load().state == STATE_B
