"""Settings: precedence of the sources, one-line errors, secret files, kind argv templates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import platformdirs
import pytest

from supervisor.errors import ConfigError
from supervisor.settings import CONFIG_ENV, KindConfig, Settings, config_path, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AGENT_SUPERVISOR_* from the developer's shell; the config file is a (missing) tmp file."""
    for name in list(os.environ):
        if name.startswith("AGENT_SUPERVISOR_"):
            monkeypatch.delenv(name)
    config = tmp_path / "config.toml"
    monkeypatch.setenv(CONFIG_ENV, str(config))
    return config


def write_config(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def config_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    message = str(info.value)
    cause: BaseException | None = info.value
    while cause is not None:  # the CLI prints the whole cause chain on one line
        assert "\n" not in str(cause), repr(cause)
        cause = cause.__cause__
    return message


# -- sources and precedence --------------------------------------------------------------


def test_defaults_apply_without_config(isolated_env: Path) -> None:
    """With no file, env or kwargs, every setting has its documented default."""
    settings = load_settings()
    assert settings.concurrency == 2
    assert settings.lease_s == 30
    assert settings.heartbeat_s == 10
    assert settings.log_cap_bytes == 10 * 1024 * 1024
    assert settings.wake_poll_s == 0.05
    assert settings.data_dir == Path(platformdirs.user_data_dir("agent-supervisor"))
    assert settings.kinds == {}
    assert settings.claim_kinds is None
    assert settings.store is None


def test_kwargs_beat_env_beat_toml_beat_defaults(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source overrides the ones below it, field by field."""
    write_config(isolated_env, "concurrency = 3\nstop_grace_s = 7\nbackoff_cap_s = 100\n")
    monkeypatch.setenv("AGENT_SUPERVISOR_CONCURRENCY", "4")
    monkeypatch.setenv("AGENT_SUPERVISOR_STOP_GRACE_S", "8")
    settings = load_settings(concurrency=5)
    assert settings.concurrency == 5  # kwargs over env and toml
    assert settings.stop_grace_s == 8  # env over toml
    assert settings.backoff_cap_s == 100  # toml over default
    assert settings.lease_s == 30  # default


def test_config_path_is_read_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AGENT_SUPERVISOR_CONFIG is consulted when Settings is built, not when the module is imported."""
    first = write_config(tmp_path / "a.toml", "concurrency = 6\n")
    second = write_config(tmp_path / "b.toml", "concurrency = 7\n")
    monkeypatch.setenv(CONFIG_ENV, str(first))
    assert Settings().concurrency == 6
    monkeypatch.setenv(CONFIG_ENV, str(second))
    assert Settings().concurrency == 7


def test_default_config_path_is_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without AGENT_SUPERVISOR_CONFIG the file is config.toml in the platformdirs config dir."""
    monkeypatch.delenv(CONFIG_ENV)
    assert config_path() == Path(platformdirs.user_config_dir("agent-supervisor")) / "config.toml"


def test_explicit_config_file_is_read_and_the_environment_is_untouched(
    isolated_env: Path, tmp_path: Path
) -> None:
    """load_settings(config_file=...) reads that file instead of $AGENT_SUPERVISOR_CONFIG's,
    and os.environ is exactly as before (the CLI's --config no longer writes it)."""
    write_config(isolated_env, "concurrency = 3\n")
    explicit = write_config(tmp_path / "explicit.toml", "concurrency = 9\n")
    before = dict(os.environ)
    assert load_settings(config_file=explicit).concurrency == 9
    assert dict(os.environ) == before
    assert load_settings().concurrency == 3  # the explicit file was for that one call only


def test_explicit_config_file_is_forgotten_after_a_failed_load(isolated_env: Path, tmp_path: Path) -> None:
    """A load that fails still drops its explicit file: the next load reads the usual one."""
    write_config(isolated_env, "concurrency = 3\n")
    explicit = write_config(tmp_path / "explicit.toml", "concurrency = 0\n")
    assert config_error(config_file=explicit).startswith("invalid setting concurrency")
    assert load_settings().concurrency == 3


def test_missing_explicit_config_file_is_ignored(isolated_env: Path, tmp_path: Path) -> None:
    """An explicit config file that does not exist is ignored, like a missing default one."""
    write_config(isolated_env, "concurrency = 3\n")
    assert load_settings(config_file=tmp_path / "nope.toml").concurrency == 2


def test_config_path_prefers_the_explicit_file(isolated_env: Path, tmp_path: Path) -> None:
    """config_path(explicit) is that path (home expanded); without it, the environment's."""
    assert config_path(tmp_path / "x.toml") == tmp_path / "x.toml"
    assert config_path(Path("~/x.toml")) == Path.home() / "x.toml"
    assert config_path() == isolated_env


def test_kinds_come_from_toml_tables(isolated_env: Path) -> None:
    """[kinds.<name>] tables become KindConfig entries, and claim_kinds may name them."""
    write_config(
        isolated_env,
        'claim_kinds = ["summarize"]\n'
        "[kinds.summarize]\n"
        'argv = ["summarize-agent", "{payload_file}"]\n'
        "timeout_s = 600\nmax_concurrent = 2\n"
        '[kinds.summarize.env]\nLANG = "C"\n',
    )
    settings = load_settings()
    kind = settings.kinds["summarize"]
    assert kind.argv == ["summarize-agent", "{payload_file}"]
    assert (kind.timeout_s, kind.max_concurrent, kind.env) == (600, 2, {"LANG": "C"})
    assert settings.claim_kinds == ["summarize"]


def test_kinds_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """AGENT_SUPERVISOR_KINDS takes JSON; a value that is not JSON is a one-line ConfigError."""
    monkeypatch.setenv("AGENT_SUPERVISOR_KINDS", json.dumps({"k": {"argv": ["agent"]}}))
    assert load_settings().kinds["k"].argv == ["agent"]
    monkeypatch.setenv("AGENT_SUPERVISOR_KINDS", "not json")
    assert "kinds" in config_error()


def test_store_url_defaults_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    """Without a store, store_url is an absolute sqlite:/// URL that survives odd characters."""
    data_dir = tmp_path / "a b?c#d%e"
    url = load_settings(data_dir=data_dir).store_url
    parts = urlsplit(url)
    assert url.startswith("sqlite:///")
    assert parts.netloc == ""
    assert Path(unquote(parts.path)) == data_dir / "jobs.sqlite3"
    assert load_settings(store="postgresql://db/jobs").store_url == "postgresql://db/jobs"


def test_data_dir_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A data_dir starting with ~ is expanded; a relative one is refused."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings(data_dir="~/data").data_dir == tmp_path / "data"
    assert config_error(data_dir="relative/dir").startswith("invalid setting data_dir:")


# -- errors ------------------------------------------------------------------------------


def test_malformed_toml_is_one_line_naming_the_file(isolated_env: Path) -> None:
    """A TOML syntax error becomes one ConfigError line with the path and the parser's message."""
    write_config(isolated_env, 'concurrency = 3\nkinds = [\n  "unterminated\n')
    message = config_error()
    assert message.startswith(f"malformed config file {isolated_env}: ")
    assert "line" in message


def test_non_utf8_config_is_config_error(isolated_env: Path) -> None:
    """Bytes that are not UTF-8 are reported like a syntax error, not as UnicodeDecodeError."""
    isolated_env.write_bytes(b"concurrency = 3\n# \xff\xfe\n")
    assert config_error().startswith(f"malformed config file {isolated_env}")


def test_unreadable_config_is_config_error(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config file that exists but cannot be opened is a ConfigError with the path and reason."""
    write_config(isolated_env, "concurrency = 3\n")
    real_open = Path.open

    def deny(self: Path, *args: object, **kwargs: object) -> object:
        if self == isolated_env:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", deny)
    assert config_error() == f"cannot read config file {isolated_env}: Permission denied"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 257}, "concurrency"),
        ({"lease_s": -1}, "lease_s"),
        ({"lease_s": float("inf")}, "lease_s"),
        ({"heartbeat_s": 15}, "heartbeat_s"),  # not under lease_s / 2 = 15
        ({"wake_poll_s": float("nan")}, "wake_poll_s"),
        ({"stop_grace_s": -0.1}, "stop_grace_s"),
        ({"log_cap_bytes": 0}, "log_cap_bytes"),
        ({"output_tail_bytes": -1}, "output_tail_bytes"),
        ({"store": "http://example.com"}, "store"),
        ({"claim_kinds": []}, "claim_kinds"),
        ({"claim_kinds": ["nope"]}, "claim_kinds"),
        ({"kinds": {"": {"argv": ["a"]}}}, "kinds"),
        ({"kinds": {"x\n": {"argv": ["a"]}}}, "kinds"),
        ({"kinds": {"k": {"argv": []}}}, "kinds.k.argv"),
        ({"kinds": {"k": {"argv": ["a"], "max_concurrent": 0}}}, "kinds.k.max_concurrent"),
        ({"kinds": {"k": {"argv": ["a"], "bogus": 1}}}, "kinds.k.bogus"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_value_names_the_setting(overrides: dict[str, object], field: str) -> None:
    """Every invalid value is one ConfigError line 'invalid setting <field>: …'."""
    assert config_error(**overrides).startswith(f"invalid setting {field}: ")


def test_invalid_env_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value from the environment names the setting it was meant for."""
    monkeypatch.setenv("AGENT_SUPERVISOR_CONCURRENCY", "many")
    assert config_error().startswith("invalid setting concurrency: ")


def test_unknown_toml_key_is_refused(isolated_env: Path) -> None:
    """A misspelt key in the config file is an error, not silently ignored."""
    write_config(isolated_env, "concurency = 3\n")
    assert config_error().startswith("invalid setting concurency: ")


def test_several_errors_report_the_first_and_a_count() -> None:
    """With several invalid values the message names the first and says how many more."""
    message = config_error(concurrency=0, lease_s=-1, wake_poll_s=0)
    assert message.startswith("invalid setting concurrency: ")
    assert message.endswith("(and 2 more)")


def test_store_password_never_echoed() -> None:
    """Neither a refused store URL nor the repr of valid settings shows the URL's password."""
    assert "hunter2" not in config_error(store="ftp://user:hunter2@host/x")
    assert "hunter2" not in repr(load_settings(store="postgresql://user:hunter2@db/jobs"))


# -- secret-bearing config files ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'supabase_key = "eyJhbGciOi"\n',
        'db_password = "pw"\n',
        'client_secret = "s"\n',
        '[kinds.a]\nargv = ["a"]\n[kinds.a.env]\nOPENAI_API_KEY = "sk-1"\n',
        '[kinds.a]\nargv = ["a"]\n[kinds.a.env]\nGITHUB_TOKEN = "ghp"\n',
        'store = "postgresql://user:pw@db/jobs"\n',
    ],
)
def test_secret_config_readable_by_others_is_refused(isolated_env: Path, text: str) -> None:
    """A config file holding a secret with group/other permission bits is refused with chmod advice."""
    write_config(isolated_env, text, mode=0o644)
    message = config_error()
    assert f"chmod 600 {isolated_env}" in message


def test_private_secret_config_is_accepted(isolated_env: Path) -> None:
    """The same secret in a 0o600 file loads."""
    write_config(isolated_env, 'store = "postgresql://user:pw@db/jobs"\n', mode=0o600)
    assert load_settings().store == "postgresql://user:pw@db/jobs"


def test_public_config_without_secrets_is_accepted(isolated_env: Path) -> None:
    """A world-readable config file with no secret in it is fine (and a URL without password too)."""
    write_config(isolated_env, 'concurrency = 3\nstore = "postgresql://user@db/jobs"\n', mode=0o644)
    assert load_settings().concurrency == 3


# -- kind argv templates -----------------------------------------------------------------


def test_render_fills_every_placeholder() -> None:
    """{payload_file}, {result_file}, {job_id} and {attempt} are replaced in any argv element."""
    kind = KindConfig(argv=["agent", "--job={job_id}.{attempt}", "{payload_file}", "-o", "{result_file}"])
    assert kind.render(7, 2, "/p/payload.json", "/p/result.json") == [
        "agent",
        "--job=7.2",
        "/p/payload.json",
        "-o",
        "/p/result.json",
    ]


def test_render_passes_values_verbatim() -> None:
    """Values with spaces, quotes and braces (even placeholder-like ones) are inserted unchanged."""
    kind = KindConfig(argv=["agent", "{payload_file}", "x{result_file}y"])
    weird = "/tmp/my dir/{job_id} '{0.__class__}' \"$HOME\""
    assert kind.render(1, 1, weird, "{attempt}") == ["agent", weird, "x{attempt}y"]


def test_doubled_braces_are_literal() -> None:
    """{{ and }} stand for literal braces, e.g. a JSON argument."""
    kind = KindConfig(argv=["agent", '--opts={{"id": {job_id}}}'])
    assert kind.render(5, 1, "p", "r") == ["agent", '--opts={"id": 5}']


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["agent", "{payload}"], "unknown placeholder {payload}"),
        (["agent", "{0.__class__}"], "lone '{'"),
        (["agent", "{job_id!r}"], "lone '{'"),
        (["agent", '{"a": 1}'], "lone '{'"),
        (["agent", "tail}"], "lone '}'"),
        (["", "x"], "argv[0]"),
        (["agent", "a\0b"], "NUL"),
    ],
)
def test_bad_argv_template_is_refused(argv: list[str], needle: str) -> None:
    """Unknown placeholders, stray braces, format specs, an empty program and NULs are refused."""
    message = config_error(kinds={"k": {"argv": argv}})
    assert message.startswith("invalid setting kinds.k.argv: ")
    assert needle in message


def test_settings_import_stays_light() -> None:
    """Importing supervisor.settings loads neither filelock, psutil nor the engine's heavier parts."""
    code = "import sys, supervisor.settings; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert not {"filelock", "psutil", "supervisor.runner", "supervisor.statefile", "tomllib"} & set(out)
