"""The settings cache (supervisor/settings_cache.py): what it reads back is what pydantic
validated, any change of an input is a miss, no secret is ever stored, and a file that is
damaged or that someone else could have written is not believed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from supervisor import settings_cache
from supervisor.settings import Settings, cacheable_values, load_settings
from supervisor.settings_cache import KEEP_FILES, CachedRecord, SettingsCache

KINDS_TOML = """
concurrency = 3
lease_s = 40
default_owner = "octo"
claim_kinds = ["summarize", "code"]
git_token_hosts = ["GitHub.com", "git.example.org:8443"]
max_load_per_cpu = 1.5

[kinds.summarize]
argv = ["summarize-agent", "--in", "{payload_file}", "{{literal}}"]
timeout_s = 600
env = { MODE = "fast", LANG = "C" }
cwd = "/tmp"
memory_max_bytes = 1073741824
cpu_max = 0.5
orphan_policy = "kill"

[kinds.code]
argv = ["code-agent"]
repo = "notes"
ref = "main"
pass_token = true

[schedules.nightly]
cron = "0 3 * * *"
kind = "summarize"
payload = { topic = "news", depth = [1, 2.5, "x"] }
timezone = "Europe/Berlin"
missed = "skip"
"""


@pytest.fixture
def cache(tmp_path: Path) -> SettingsCache:
    return SettingsCache(tmp_path / "cache" / "settings")


def write_config(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def assert_same(full: Any, cached: Any, where: str) -> None:
    """The cached value stands in for the validated one: equal, of the same type, and a
    model's every field the same attribute of the record."""
    if isinstance(full, BaseModel):
        assert isinstance(cached, CachedRecord), where
        for name in type(full).model_fields:
            assert_same(getattr(full, name), getattr(cached, name), f"{where}.{name}")
    elif isinstance(full, dict):
        assert isinstance(cached, dict) and full.keys() == cached.keys(), where
        for key in full:
            assert_same(full[key], cached[key], f"{where}[{key!r}]")
    elif isinstance(full, list):
        assert isinstance(cached, list) and len(full) == len(cached), where
        for index, (a, b) in enumerate(zip(full, cached, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert type(full) is type(cached) and full == cached, f"{where}: {full!r} != {cached!r}"


def round_trip(
    cache: SettingsCache, config: Path | None = None, **overrides: Any
) -> tuple[Settings, Settings]:
    full = load_settings(config, **overrides)
    values = cacheable_values(full)
    assert values is not None
    key = cache.fingerprint(config, overrides)
    cache.put(key, values)
    cached = cache.get(key)
    assert cached is not None
    return full, cached


@pytest.mark.parametrize("case", ["defaults", "config file", "environment", "overrides"])
def test_read_back_equals_what_pydantic_validated(
    cache: SettingsCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Every field of Settings (and of each kind and schedule) is the same value of the same
    type when read back; so is store_url."""
    config: Path | None = None
    overrides: dict[str, Any] = {}
    if case == "config file":
        config = write_config(tmp_path / "c.toml", KINDS_TOML)
    elif case == "environment":
        monkeypatch.setenv("AGENT_SUPERVISOR_CONCURRENCY", "7")
        monkeypatch.setenv("AGENT_SUPERVISOR_DATA_DIR", str(tmp_path / "odd ?#% dir"))
        monkeypatch.setenv(
            "AGENT_SUPERVISOR_KINDS", json.dumps({"k": {"argv": ["x", "{job_id}"], "pids_max": 9}})
        )
        monkeypatch.setenv("AGENT_SUPERVISOR_RETAIN_JOBS_S", "86400")
    elif case == "overrides":
        overrides = {"data_dir": tmp_path / "d", "store": f"sqlite://{tmp_path}/s.sqlite3", "new_store": True}
        overrides["concurrency"] = 5
    full, cached = round_trip(cache, config, **overrides)
    for name in Settings.model_fields:
        assert_same(getattr(full, name), getattr(cached, name), name)
    assert cached.store_url == full.store_url
    if case == "config file":  # the case is not vacuous: the file's tables came through
        assert set(cached.kinds) == {"summarize", "code"} and cached.kinds["code"].repo == "notes"
        assert cached.schedules["nightly"].payload == {"topic": "news", "depth": [1, 2.5, "x"]}


def test_cached_settings_are_read_only(cache: SettingsCache, tmp_path: Path) -> None:
    _, cached = round_trip(cache, write_config(tmp_path / "c.toml", KINDS_TOML))
    with pytest.raises(AttributeError):
        cached.concurrency = 9  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cached.kinds["code"].repo = "other"  # type: ignore[misc]


def _mutations(tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "c.toml"

    def edit() -> None:
        write_config(config, "concurrency = 4\n")

    def chmod() -> None:
        config.chmod(0o640)

    def remove() -> None:
        config.unlink()

    return {"edit the file": edit, "chmod the file": chmod, "remove the file": remove}


@pytest.mark.parametrize(
    "change",
    [
        "edit the file",
        "chmod the file",
        "remove the file",
        "prefixed variable",
        "lower-case prefixed variable",
        "Supabase alias",
        "home",
        "XDG data dir",
        "override",
        "config env",
        "code",
    ],
)
def test_any_changed_input_is_another_fingerprint(
    cache: SettingsCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Each input of the validation moves the fingerprint (so the full load runs again)."""
    config = write_config(tmp_path / "c.toml", "concurrency = 3\n")
    overrides: dict[str, Any] = {"data_dir": tmp_path / "d"}
    before = cache.fingerprint(config, overrides)
    assert cache.fingerprint(config, dict(overrides)) == before  # stable while nothing changes
    files = _mutations(tmp_path)
    if change in files:
        files[change]()
    elif change == "prefixed variable":
        monkeypatch.setenv("AGENT_SUPERVISOR_LEASE_S", "60")
    elif change == "lower-case prefixed variable":  # pydantic-settings matches names in any case
        monkeypatch.setenv("agent_supervisor_lease_s", "60")
    elif change == "Supabase alias":
        monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")
    elif change == "home":
        monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    elif change == "XDG data dir":
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    elif change == "override":
        overrides["concurrency"] = 4
    elif change == "config env":
        assert cache.fingerprint(None, overrides) != before  # the file named by the environment
        return
    elif change == "code":
        real = settings_cache._stamp
        monkeypatch.setattr(
            settings_cache, "_stamp", lambda path: (1, 1) if path.name == "settings.py" else real(path)
        )
    assert cache.fingerprint(config, overrides) != before


def test_lower_case_variables_really_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the fingerprint folds case: pydantic-settings reads a lower-case name too."""
    monkeypatch.setenv("agent_supervisor_lease_s", "60")
    assert load_settings(data_dir=tmp_path).lease_s == 60


def test_unrelated_environment_is_not_an_input(
    cache: SettingsCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = cache.fingerprint(None, {})
    monkeypatch.setenv("SOME_OTHER_TOKEN", "x")
    monkeypatch.setenv("PATH", os.environ.get("PATH", "") + ":/nowhere")
    assert cache.fingerprint(None, {}) == before


@pytest.mark.parametrize(
    "secret",
    ["Supabase key in the environment", "store password", "kind env key", "config file token"],
)
def test_settings_holding_a_secret_are_never_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    config: Path | None = None
    overrides: dict[str, Any] = {"data_dir": tmp_path / "d"}
    if secret == "Supabase key in the environment":
        monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_abc")
    elif secret == "store password":
        overrides["store"] = "postgresql://u:pw@localhost/db"
    elif secret == "kind env key":
        config = write_config(
            tmp_path / "c.toml", '[kinds.a]\nargv = ["a"]\nenv = { OPENAI_API_KEY = "sk-1" }\n'
        )
    else:
        config = write_config(
            tmp_path / "c.toml", 'supabase_url = "https://x.supabase.co"\nsupabase_key = "k"\n'
        )
    assert cacheable_values(load_settings(config, **overrides)) is None


def test_secret_free_settings_are_stored(tmp_path: Path) -> None:
    """The guard above is not vacuous: ordinary settings, a flag named like a secret
    (``pass_token``) and a password-free store URL are cacheable."""
    config = write_config(tmp_path / "c.toml", KINDS_TOML)
    assert cacheable_values(load_settings(config, store="postgresql://localhost/db")) is not None


def test_files_are_private(cache: SettingsCache, tmp_path: Path) -> None:
    round_trip(cache, data_dir=tmp_path / "d")
    assert cache.directory.stat().st_mode & 0o777 == 0o700
    [snapshot] = cache.directory.iterdir()
    assert snapshot.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "damage", ["not JSON", "another key", "another format", "values missing", "truncated"]
)
def test_a_damaged_snapshot_is_a_miss(cache: SettingsCache, tmp_path: Path, damage: str) -> None:
    round_trip(cache, data_dir=tmp_path / "d")
    key = cache.fingerprint(None, {"data_dir": tmp_path / "d"})
    [path] = cache.directory.iterdir()
    snapshot = json.loads(path.read_text())
    if damage == "not JSON":
        path.write_bytes(b"\xff{")
    elif damage == "another key":
        path.write_text(json.dumps({**snapshot, "key": "0" * 64}))
    elif damage == "another format":
        path.write_text(json.dumps({**snapshot, "format": 0}))
    elif damage == "values missing":
        path.write_text(json.dumps({**snapshot, "values": {"concurrency": 2}}))
    else:
        path.write_text(path.read_text()[:50])
    assert cache.get(key) is None


@pytest.mark.parametrize("loose", ["directory", "file"])
def test_a_snapshot_others_could_write_is_not_believed(
    cache: SettingsCache, tmp_path: Path, loose: str
) -> None:
    """Someone who could plant a snapshot could point our commands at another store."""
    round_trip(cache, data_dir=tmp_path / "d")
    key = cache.fingerprint(None, {"data_dir": tmp_path / "d"})
    assert cache.get(key) is not None
    [path] = cache.directory.iterdir()
    if loose == "directory":
        cache.directory.chmod(0o770)
    else:
        path.chmod(0o622)
    assert cache.get(key) is None


def test_old_snapshots_are_pruned(cache: SettingsCache, tmp_path: Path) -> None:
    values = cacheable_values(load_settings(data_dir=tmp_path / "d"))
    assert values is not None
    keys = [cache.fingerprint(None, {"data_dir": tmp_path / f"d{i}"}) for i in range(KEEP_FILES + 4)]
    for index, key in enumerate(keys):
        cache.put(key, values)
        os.utime(cache.directory / f"{key[:40]}.json", ns=(index * 10**9, index * 10**9))
    names = {p.name for p in cache.directory.iterdir()}
    assert len(names) == KEEP_FILES
    assert f"{keys[-1][:40]}.json" in names and f"{keys[0][:40]}.json" not in names


def test_a_cache_that_cannot_be_written_costs_nothing_but_speed(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    cache = SettingsCache(blocked / "settings")
    values = cacheable_values(load_settings(data_dir=tmp_path / "d"))
    assert values is not None
    key = cache.fingerprint(None, {})
    cache.put(key, values)  # no error
    assert cache.get(key) is None
