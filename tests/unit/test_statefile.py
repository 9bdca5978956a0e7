"""running-agents.json: round trip, checksum, quarantine of every kind of bad file (F10)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import filelock
import pytest

from supervisor.errors import StateFileError
from supervisor.statefile import FORMAT, VERSION, AgentEntry, LoadResult, State, StateFile, checksum_of

ROOT = Path(__file__).resolve().parents[2]
BOOT = "0b1c3f5e-8d2a-4c7b-9e1f-2a3b4c5d6e7f"


def entry(job_id: int, **changes: Any) -> AgentEntry:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "worker": "host-1a2b3c4d",
        "pid": 4000 + job_id,
        "pgid": 4000 + job_id,
        "start_identity": f"linux:{BOOT}:{100000 + job_id}",
        "command": ["agent", "--in", f"/data/runs/{job_id}-1/payload.json", "naïve ✓"],
        "started_at": 1763820000.25 + job_id,
        "started_mono": 1234.5 + job_id,
        "timeout_s": 600.0,
        "idle_timeout_s": None,
        "log_path": f"/data/logs/{job_id}-1.log",
        "run_dir": f"/data/runs/{job_id}-1",
    }
    fields.update(changes)
    return AgentEntry(**fields)


def make_state(*job_ids: int) -> State:
    return State(
        format=FORMAT,
        version=VERSION,
        worker_id="host-1a2b3c4d",
        boot_id=BOOT,
        updated_at=1763820100.5,
        agents=[entry(j) for j in job_ids],
    )


@pytest.fixture
def sf(tmp_path: Path) -> StateFile:
    return StateFile(tmp_path / "running-agents.json", tmp_path / "quarantine")


def quarantined(sf: StateFile) -> list[Path]:
    return sorted(sf.quarantine_dir.glob("*")) if sf.quarantine_dir.exists() else []


def assert_quarantined(sf: StateFile, result: LoadResult, count: int) -> None:
    assert result.state is None
    assert result.problem is not None
    assert "\n" not in result.problem
    assert not sf.path.exists()
    files = quarantined(sf)
    assert len(files) == count
    assert str(files[-1]) in result.problem or any(str(f) in result.problem for f in files)


def write_obj(sf: StateFile, obj: dict[str, Any], *, fix_checksum: bool = True) -> None:
    """Write a JSON object as the state file, with a correct checksum unless told otherwise."""
    if fix_checksum:
        obj = {**obj, "checksum": checksum_of(obj)}
    sf.path.write_text(json.dumps(obj, indent=2))


def valid_obj() -> dict[str, Any]:
    obj: dict[str, Any] = make_state(1, 2).model_dump(mode="json")
    return obj


# -- round trip --------------------------------------------------------------------------


def test_round_trip(sf: StateFile) -> None:
    """A saved state loads back equal, from a 0o600 pretty-printed file with a valid checksum."""
    state = make_state(1, 2, 3)
    sf.save(state)
    assert sf.load() == LoadResult(state, None)
    raw = sf.path.read_bytes()
    assert raw.startswith(b'{\n  "format"')
    assert not raw.endswith(b"\n")
    assert stat.S_IMODE(sf.path.stat().st_mode) == 0o600
    obj = json.loads(raw)
    assert obj["checksum"] == checksum_of(obj)
    assert obj["checksum"].startswith("sha256:")
    assert sorted(p.name for p in sf.path.parent.iterdir()) == [
        "running-agents.json",
        "running-agents.json.lock",
    ]


def test_missing_file_is_no_state_and_no_problem(sf: StateFile) -> None:
    """A missing file is the normal first start: no state, no problem, nothing quarantined."""
    assert sf.load() == LoadResult(None, None)
    assert quarantined(sf) == []


def test_example_file_loads(tmp_path: Path) -> None:
    """state.example.json at the repository root is a valid file with one agent."""
    copy = tmp_path / "running-agents.json"
    shutil.copy(ROOT / "state.example.json", copy)
    result = StateFile(copy, tmp_path / "q").load()
    assert result.problem is None
    assert result.state is not None
    assert len(result.state.agents) == 1
    assert result.state.agents[0].pid == 4242


def test_checksum_ignores_formatting_key_order_and_itself() -> None:
    """checksum_of depends on content only, not on key order or an existing checksum key."""
    obj = valid_obj()
    reordered = dict(reversed(list(obj.items())))
    assert checksum_of(obj) == checksum_of(reordered) == checksum_of({**obj, "checksum": "sha256:x"})
    assert checksum_of(obj) != checksum_of({**obj, "updated_at": obj["updated_at"] + 1})


def test_state_helpers_add_replace_and_remove_agents() -> None:
    """with_agent adds or replaces one job's entry, without_agent drops it, agent() finds it."""
    state = make_state(1)
    bigger = state.with_agent(entry(2), now=5.0)
    assert [a.job_id for a in bigger.agents] == [1, 2]
    assert bigger.updated_at == 5.0
    replaced = bigger.with_agent(entry(1, attempt=2), now=6.0)
    found = replaced.agent(1)
    assert found is not None
    assert found.attempt == 2
    assert [a.job_id for a in replaced.without_agent(1, now=7.0).agents] == [2]
    assert State.empty(worker_id="w", boot_id="b", now=1.0).agents == []


def test_two_agents_for_one_job_are_refused() -> None:
    """A state cannot hold two entries for the same job id."""
    with pytest.raises(ValueError, match="job 1 has two agents"):
        State(**{**make_state(1).model_dump(), "agents": [entry(1), entry(1, attempt=2)]})


def test_update_applies_under_the_lock(sf: StateFile) -> None:
    """update() loads, applies the function and saves; a missing file needs an initial state."""
    with pytest.raises(StateFileError, match="no usable state file"):
        sf.update(lambda s: s)
    saved = sf.update(lambda s: s.with_agent(entry(9), now=2.0), initial=make_state())
    assert sf.load().state == saved
    assert [a.job_id for a in saved.agents] == [9]
    sf.update(lambda s: s.without_agent(9, now=3.0))
    assert sf.load().state == make_state().model_copy(update={"updated_at": 3.0})


def test_short_writes_are_completed(sf: StateFile, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write that writes only a few bytes per call still produces the whole file."""
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    sf.save(make_state(1, 2))
    monkeypatch.undo()
    assert sf.load().state == make_state(1, 2)


def test_stale_temp_files_are_removed(sf: StateFile) -> None:
    """Temp files left by a writer killed mid-save are deleted by the next locked operation."""
    sf.save(make_state(1))
    stale = sf.path.with_name(f".{sf.path.name}.99999.deadbeef.tmp")
    stale.write_bytes(b'{"format": "agent-sup')
    assert sf.load().state == make_state(1)
    assert not stale.exists()


def test_lock_timeout_is_a_clean_error(tmp_path: Path) -> None:
    """When another process holds the state lock past the timeout, save raises StateFileError."""
    sf = StateFile(tmp_path / "running-agents.json", tmp_path / "q", lock_timeout_s=0.05)
    with filelock.FileLock(str(sf.path) + ".lock"):
        started = time.monotonic()
        with pytest.raises(StateFileError, match=r"timed out after 0\.05 s waiting for the lock"):
            sf.save(make_state(1))
        assert time.monotonic() - started < 0.55
    assert not sf.path.exists()


def test_unreadable_path_raises_instead_of_quarantining(sf: StateFile) -> None:
    """A path that cannot be read at all (here a directory) is a StateFileError, not bad content."""
    sf.path.mkdir()
    with pytest.raises(StateFileError, match="cannot read"):
        sf.load()
    assert sf.path.is_dir()


# -- F10: bad content is always quarantined, never raised ----------------------------------


def test_every_truncation_is_quarantined(sf: StateFile) -> None:
    """Every proper prefix of a valid file (offset 0..len-1) is detected and quarantined, each < 1 s."""
    sf.save(make_state(1, 2))
    good = sf.path.read_bytes()
    slowest = 0.0
    for offset in range(len(good)):
        sf.path.write_bytes(good[:offset])
        started = time.perf_counter()
        result = sf.load()
        slowest = max(slowest, time.perf_counter() - started)
        assert result.state is None, offset
        assert result.problem is not None, offset
        assert not sf.path.exists(), offset
    assert len(quarantined(sf)) == len(good)
    assert slowest < 1.0


def test_random_bit_flips_are_all_detected(sf: StateFile) -> None:
    """2,000 seeded single-bit flips anywhere in a valid file: 100 % quarantined, none raises, each < 1 s."""
    sf.save(make_state(1, 2))
    good = sf.path.read_bytes()
    rng = random.Random(20251122)
    slowest, detected = 0.0, 0
    for _ in range(2000):
        corrupt = bytearray(good)
        corrupt[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        sf.path.write_bytes(bytes(corrupt))
        started = time.perf_counter()
        result = sf.load()
        slowest = max(slowest, time.perf_counter() - started)
        detected += result.state is None and result.problem is not None and not sf.path.exists()
    assert detected == 2000
    assert len(quarantined(sf)) == 2000
    assert slowest < 1.0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"[" * 100_000, "not JSON"),
        (b'{"format": "agent-supervisor/running-agents", "version": 1, "n": NaN}', "NaN is not JSON"),
        (b"9" * 100_000, "not JSON"),
    ],
    ids=["empty", "not-utf8", "list", "null", "deep-nesting", "nan", "huge-int"],
)
def test_garbage_is_quarantined(sf: StateFile, content: bytes, reason: str) -> None:
    """Empty, non-UTF-8, non-object, absurdly nested, NaN and huge-int content is quarantined."""
    sf.path.write_bytes(content)
    result = sf.load()
    assert_quarantined(sf, result, 1)
    assert reason in (result.problem or "")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": 2}, "version 2 is not supported"),
        ({"version": True}, "version True is not supported"),
        ({"version": 1.0}, "version 1.0 is not supported"),
        ({"format": "something-else"}, "format is 'something-else'"),
        ({"extra_field": 1}, "invalid field extra_field"),
        ({"worker_id": 5}, "invalid field worker_id"),
        ({"worker_id": ""}, "invalid field worker_id"),
        ({"updated_at": "yesterday"}, "invalid field updated_at"),
    ],
)
def test_wrong_schema_with_valid_checksum_is_quarantined(
    sf: StateFile, change: dict[str, Any], reason: str
) -> None:
    """Wrong format, version, types or unknown fields are caught even when the checksum matches."""
    write_obj(sf, {**valid_obj(), **change})
    result = sf.load()
    assert_quarantined(sf, result, 1)
    assert reason in (result.problem or "")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"job_id": "1"}, "agents.0.job_id"),
        ({"pid": 0}, "agents.0.pid"),
        ({"attempt": 0}, "agents.0.attempt"),
        ({"command": []}, "agents.0.command"),
        ({"timeout_s": -5}, "agents.0.timeout_s"),
        ({"surprise": True}, "agents.0.surprise"),
    ],
)
def test_bad_agent_entry_is_quarantined(sf: StateFile, change: dict[str, Any], field: str) -> None:
    """An agent entry with a wrong type, a bad value or an unknown field is caught by the schema."""
    obj = valid_obj()
    obj["agents"][0] = {**obj["agents"][0], **change}
    write_obj(sf, obj)
    result = sf.load()
    assert_quarantined(sf, result, 1)
    assert f"invalid field {field}" in (result.problem or "")


def test_missing_or_wrong_checksum_is_quarantined(sf: StateFile) -> None:
    """A file without a checksum, or with a checksum of other content, is quarantined."""
    write_obj(sf, valid_obj(), fix_checksum=False)
    assert "checksum is missing" in (sf.load().problem or "")
    write_obj(
        sf, {**valid_obj(), "checksum": checksum_of({**valid_obj(), "updated_at": 0.0})}, fix_checksum=False
    )
    result = sf.load()
    assert "checksum mismatch" in (result.problem or "")
    assert_quarantined(sf, result, 2)


def test_quarantine_names_never_clash_and_problem_is_logged(
    sf: StateFile, caplog: pytest.LogCaptureFixture
) -> None:
    """Each bad file gets its own running-agents.<UTC>.<n>.json, and a warning is logged."""
    caplog.set_level(logging.WARNING, logger="agent_supervisor.statefile")
    for _ in range(5):
        sf.path.write_bytes(b"{")
        sf.load()
    names = [p.name for p in quarantined(sf)]
    assert len(set(names)) == 5
    for name in names:
        assert re.fullmatch(r"running-agents\.\d{8}T\d{6}\.\d{6}Z\.\d+\.json", name), name
    warnings = [r for r in caplog.records if r.name == "agent_supervisor.statefile"]
    assert len(warnings) == 5
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert "moved it to" in warnings[0].getMessage()


def test_quarantine_keeps_the_bad_bytes(sf: StateFile) -> None:
    """The quarantined file holds exactly the bytes that failed, for a post-mortem."""
    sf.path.write_bytes(b'{"format": "agent-supervisor/running-agents", "vers')
    sf.load()
    [moved] = quarantined(sf)
    assert moved.read_bytes() == b'{"format": "agent-supervisor/running-agents", "vers'
