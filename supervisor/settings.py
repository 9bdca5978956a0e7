"""Settings: keyword arguments > ``AGENT_SUPERVISOR_*`` environment > TOML config file > defaults.

The config file is the one given to ``load_settings(config_file=...)``, else
``$AGENT_SUPERVISOR_CONFIG`` when set, else ``config.toml`` in the platformdirs user config dir
(``~/.config/agent-supervisor/config.toml`` on Linux). A missing file is fine; a malformed one
is a ``ConfigError`` naming the file. Agent kinds are TOML tables::

    concurrency = 4

    [kinds.summarize]
    argv = ["summarize-agent", "--in", "{payload_file}", "--out", "{result_file}"]
    timeout_s = 600

Use ``load_settings()``: it turns every validation error into one ``ConfigError`` line. A config
file that holds a secret (a ``*_key``/``*password``/``*secret``/``*token`` key, or a store URL
with a password) is refused while group or others may read or write it (DESIGN.md, "Settings").

This module is imported by plugin hosts at start-up, so it imports nothing heavier than
pydantic, pydantic-settings and platformdirs.
"""

from __future__ import annotations

import os
import re
import stat
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from supervisor.errors import ConfigError
from supervisor.schedules import MAX_NAME_CHARS as MAX_SCHEDULE_NAME_CHARS
from supervisor.schedules import ScheduleConfig
from supervisor.settings_cache import APP_NAME, CONFIG_ENV, config_path, store_url_of

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "CONFIG_ENV",
    "PLACEHOLDERS",
    "KindConfig",
    "Settings",
    "cacheable_values",
    "config_path",
    "load_settings",
]

PLACEHOLDERS: Final = frozenset({"payload_file", "result_file", "job_id", "attempt"})
"""The only ``{name}`` placeholders an argv template may use; ``{{`` and ``}}`` are literal braces."""

MAX_NAME_CHARS: Final = 200  # the same bound as lifecycle.MAX_KEY_CHARS for job kinds
MIB: Final = 1024 * 1024

# `{{`, `}}`, `{name}`, or a lone brace (an error). One left-to-right pass, so a substituted
# value is never scanned again: a payload path that contains "{job_id}" stays verbatim.
_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")
_SECRET_SUFFIXES: Final = ("_key", "password", "secret", "token")

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Grace = Annotated[float, Field(ge=0, allow_inf_nan=False)]


_CONFIG_FILE: Final[ContextVar[Path | None]] = ContextVar("agent_supervisor_config_file", default=None)
"""The explicit config file of the ``load_settings`` call under way in this thread (or task).
pydantic-settings builds its sources in a classmethod, so the path cannot be an argument;
a ContextVar set for one construction keeps concurrent loads apart and os.environ untouched."""


def _check_name(what: str, name: str) -> str:
    if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"{what} must be 1 to {MAX_NAME_CHARS} printable characters, got {name!r:.60}")
    return name


class KindConfig(BaseModel):
    """A registered agent type: an argv template and its limits. Never run through a shell."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    argv: list[str] = Field(min_length=1)
    """The agent's argv; elements may use {payload_file}, {result_file}, {job_id}, {attempt}."""
    timeout_s: Seconds | None = None
    """Wall-clock limit of one attempt (default: the global default_timeout_s)."""
    idle_timeout_s: Seconds | None = None
    """Kill an attempt that prints nothing for this long."""
    max_concurrent: int | None = Field(default=None, ge=1)
    """At most this many agents of this kind at once on this supervisor."""
    stuck_after_s: Seconds | None = None
    """Report an attempt as stuck after this long (health), without killing it."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the agent."""
    cwd: str | None = None
    """Working directory of the agent (default: the supervisor's)."""
    orphan_policy: Literal["adopt", "kill"] | None = None
    """Overrides the global ``orphan_policy`` for agents of this kind."""
    memory_estimate_bytes: int | None = Field(default=None, gt=0)
    """What one agent of this kind is expected to use; admission starts one only while
    available memory minus the reserve covers it (default: the global estimate)."""
    memory_max_bytes: int | None = Field(default=None, gt=0)
    """Memory limit of the agent's whole process tree (cgroup memory.max where available,
    else enforced by sampling); breaking it ends the attempt as ``resource_limit``."""
    pids_max: int | None = Field(default=None, ge=1)
    """Most processes the agent's tree may have (cgroup pids.max, else RLIMIT_NPROC)."""
    cpu_time_s: Seconds | None = None
    """CPU seconds an agent process may use (RLIMIT_CPU)."""
    address_space_bytes: int | None = Field(default=None, gt=0)
    """Virtual memory limit of each agent process (RLIMIT_AS; mind that runtimes reserve a lot)."""
    cpu_max: float | None = Field(default=None, ge=0.01, allow_inf_nan=False)
    """CPU rate cap of the agent's whole tree, in CPUs like ``docker --cpus`` (cgroup cpu.max /
    cpu.cfs_quota_us; at least 0.01: the kernel's 1 ms quota per 100 ms period). Where the CPU
    controller cannot be written it is not enforced; the job's facts and health say so."""
    # -- repository workspaces (supervisor.workspaces, issue 12) --
    repo: str | None = None
    """Repository of this kind's jobs when a job names none (a URL, owner/repo, or a bare
    name completed by ``default_owner``); the agent then starts in a worktree of it."""
    ref: str | None = None
    """Branch, tag or commit of this kind's jobs when a job names none (default: the
    repository's default branch)."""
    pass_token: bool = False
    """Give agents of this kind the git token variable (``git_token_env``); otherwise it is
    removed from their environment."""

    @field_validator("ref")
    @classmethod
    def _check_ref(cls, ref: str | None) -> str | None:
        from supervisor.keys import parse_ref  # stdlib-only module; lazy like the rest of keys

        return None if ref is None else parse_ref(ref)

    @field_validator("argv")
    @classmethod
    def _check_argv(cls, argv: list[str]) -> list[str]:
        if not argv[0]:
            raise ValueError("argv[0] (the program) must not be empty")
        for index, arg in enumerate(argv):
            if "\0" in arg:
                raise ValueError(f"argv[{index}] contains a NUL character")
            for match in _TOKEN.finditer(arg):
                token, name = match.group(0), match.group(1)
                if token in ("{{", "}}"):
                    continue
                if name is None:
                    raise ValueError(f"argv[{index}] has a lone {token!r}; write {token * 2!r} for a brace")
                if name not in PLACEHOLDERS:
                    known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
                    raise ValueError(f"argv[{index}] uses unknown placeholder {{{name}}}; known: {known}")
        return argv

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise ValueError(f"invalid environment variable name or value for {name!r:.60}")
        return env

    def render(self, job_id: int, attempt: int, payload_file: str, result_file: str) -> list[str]:
        """The argv of one attempt, placeholders filled in.

        Values are inserted verbatim, never re-scanned and never given to ``str.format`` (a
        format spec such as ``{0.__class__}`` in data must not be evaluated); no shell is
        involved, so spaces and quotes need no escaping.
        """
        values = {
            "payload_file": payload_file,
            "result_file": result_file,
            "job_id": str(job_id),
            "attempt": str(attempt),
        }

        def substitute(match: re.Match[str]) -> str:
            piece = match.group(0)
            if piece == "{{":
                return "{"
            if piece == "}}":
                return "}"
            return values[match.group(1)]  # validated at load: only known names get here

        return [_TOKEN.sub(substitute, arg) for arg in self.argv]


class _CheckedTomlSource(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, plus our checks on the same open file: a malformed or
    unreadable file becomes one ConfigError line, a loosely permissioned secret is refused."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        import tomllib  # stdlib, but only needed when a config file exists

        # pydantic-settings 2.16 also accepts package resources; ours is always a file path.
        file_path = Path(str(file_path))
        try:
            with file_path.open("rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode  # fstat: the file we parse, not a swapped one
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file_path}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # TOMLDecodeError, or UnicodeDecodeError for non-UTF-8 bytes
            detail = " ".join(str(exc).split())  # one line, whatever the parser's message
            raise ConfigError(f"malformed config file {file_path}: {detail}") from exc
        secret = _find_secret(data)
        if secret is not None and stat.S_IMODE(mode) & 0o077:
            raise ConfigError(
                f"config file {file_path} holds a secret ({secret}) but others can access it "
                f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {file_path}"
            )
        return data


def _find_secret(data: Any, prefix: str = "") -> str | None:
    """The dotted name of the first secret-looking key, or None. Looks into nested tables
    such as ``[kinds.x.env]`` too, where an agent's API key is most likely to sit."""
    if not isinstance(data, dict):
        return None
    for key, value in data.items():
        name = f"{prefix}{key}"
        lowered = str(key).lower()
        # A flag (a kind's ``pass_token = true``) names a secret but cannot be one; nor can
        # an unset value (``cacheable_values`` looks at every field, set or not).
        if (lowered == "key" or lowered.endswith(_SECRET_SUFFIXES)) and not isinstance(value, bool | None):
            return name
        if key == "store" and isinstance(value, str) and _url_password(value):
            return name
        found = _find_secret(value, f"{name}.")
        if found is not None:
            return found
    return None


def _url_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:  # a malformed URL: the store validator reports it
        return False


class Settings(BaseSettings):
    """Everything a supervisor can be told. Build it with ``load_settings()``."""

    model_config = SettingsConfigDict(
        env_prefix="AGENT_SUPERVISOR_",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        populate_by_name=True,  # supabase_url/supabase_key by name in kwargs and TOML
    )

    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)))
    """State file, SQLite store, logs, outbox and quarantine live here."""
    store: str | None = Field(default=None, repr=False)  # may carry a password: keep it out of repr
    """Job store URL: sqlite:///path, postgresql://…, or supabase (default: SQLite in data_dir)."""
    concurrency: int = Field(default=2, ge=1, le=256)
    """At most this many agents at once."""
    lease_s: Seconds = 30.0
    """How long a claimed job stays ours without a heartbeat."""
    heartbeat_s: Seconds = 10.0
    """Heartbeat period; must be under half the lease so one missed beat does not lose it."""
    reap_grace_s: Grace = 5.0
    """Extra time past an expired lease before another supervisor's job is reaped."""
    stop_grace_s: Grace = 5.0
    """Time between SIGTERM and SIGKILL when stopping an agent."""
    drain_timeout_s: Grace = 10.0
    """On a graceful stop, how long running agents may finish before they are stopped."""
    default_timeout_s: Seconds = 3600.0
    """Wall-clock limit of an attempt when neither the job nor its kind sets one."""
    stuck_after_s: Seconds = 900.0
    """Report an attempt as stuck (health) after this long without progress."""
    log_cap_bytes: int = Field(default=10 * MIB, ge=4096)
    """Per-attempt log size cap; beyond it the log is truncated with a marker."""
    output_tail_bytes: int = Field(default=4096, ge=0, le=MIB)
    """How much of the output's end is kept with the outcome."""
    backoff_cap_s: Seconds = 3600.0
    """Upper bound of the retry backoff."""
    state_save_delay_s: Grace = 0.05
    """How soon after an agent starts or ends the state file is saved: one save covers every
    change in that time. An agent started within it before a supervisor crash is found by
    its env tag on restart and killed and retried, not adopted; 0 saves in the same tick."""
    retention_s: Grace = 7 * 86400.0
    """Finished attempts' files (run dir, log) are deleted this long after their last write
    (0: kept until the size cap or a purge)."""
    files_max_bytes: int = Field(default=1 << 30, ge=0)
    """All attempts' files together stay under this; the oldest go first (0: no cap)."""
    retention_every_s: Seconds = 300.0
    """How often the retention thread sweeps (it never pauses the supervisor's loop)."""
    retain_jobs_s: Seconds | None = None
    """Also purge finished jobs (rows and events) this long after they finished (off)."""
    disk_low_bytes: int = Field(default=1 << 30, ge=0)
    """health warns (``disk_low``) when the data dir's file system has less free space than
    this, and says critical below a quarter of it."""
    near_limit_warning: float = Field(default=0.8, gt=0, le=1)
    """health's ``near_limit`` warns when an agent uses this share of its memory or process
    limit ..."""
    near_limit_critical: float = Field(default=0.95, gt=0, le=1)
    """... and says critical at this share."""
    wake_poll_s: Seconds = 0.05
    """Deprecated and ignored: stores push change hints now (``poll_s`` covers stores that
    cannot). Kept so that an existing config file naming it still loads."""
    poll_s: Seconds = 1.0
    """How often an idle supervisor claims while its store cannot push change hints (a
    Supabase project without Realtime, a Postgres connection being re-established)."""
    reap_s: Grace = 30.0
    """How often this supervisor settles other supervisors' expired leases and promotes due
    retries (0: never, e.g. when pg_cron reaps on the server)."""
    kinds: dict[str, KindConfig] = Field(default_factory=dict)
    """Registered agent kinds, as TOML tables [kinds.<name>]."""
    claim_kinds: list[str] | None = None
    """Take only jobs of these kinds (default: any job)."""
    # -- recurring jobs (supervisor/schedules.py) -------------------------------------------
    schedules: dict[str, ScheduleConfig] = Field(default_factory=dict)
    """Recurring jobs, as TOML tables [schedules.<name>] (cron, kind, payload, timezone, missed)."""

    @field_validator("schedules")
    @classmethod
    def _check_schedules(
        cls, schedules: dict[str, ScheduleConfig], info: ValidationInfo
    ) -> dict[str, ScheduleConfig]:
        kinds = info.data.get("kinds")
        for name, schedule in schedules.items():
            if not 1 <= len(name) <= MAX_SCHEDULE_NAME_CHARS or not name.isprintable() or ":" in name:
                raise ValueError(
                    f"a schedule name must be 1 to {MAX_SCHEDULE_NAME_CHARS} printable characters "
                    f"without ':', got {name!r:.60}"
                )
            if kinds is not None and schedule.kind not in kinds:  # it would fail at every slot
                raise ValueError(f"{name}: kind {schedule.kind!r} is not registered in [kinds]")
        return schedules

    # -- end of recurring jobs --------------------------------------------------------------
    memory_estimate_bytes: int = Field(default=1 << 30, gt=0)
    """Expected memory of one agent when its kind does not say (admission control)."""
    memory_reserve_bytes: int = Field(default=512 << 20, ge=0)
    """Memory left for everything else: no agent starts if it would eat into this."""
    max_load_per_cpu: float | None = Field(default=None, gt=0)
    """Optional CPU gate: start nothing while the 1-minute load average per CPU is above it."""
    start_stagger_s: Grace = 0.0
    """Least time between two agent starts (spreads start-up spikes; 0 = no stagger)."""
    orphan_policy: Literal["adopt", "kill"] = "adopt"
    """What a restarted supervisor does with its own agents that are still running: keep
    supervising them (their deadlines, heartbeats and outcomes carry on), or kill and retry.
    A kind can override it."""
    new_store: bool = False
    """Start fresh: work with a store other than the one this data dir last used (a replaced,
    emptied or new one) instead of refusing to (``--new-store``)."""
    allow_remote_commands: bool = False
    """Run raw ``command`` jobs that come from a shared (remote) store. Off: anyone who can
    insert a row would otherwise run any program on this machine."""
    # Supabase: the project URL and its secret (service-role) key, from our prefixed variable
    # or the one Supabase's own tools use (the prefixed one wins). validation_alias replaces
    # the env prefix; keyword arguments and the TOML file use the field name (populate_by_name).
    # Not the field name as an alias: env lookups ignore case, so it would also read a plain
    # SUPABASE_KEY, which is usually the publishable (anon) key.
    supabase_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENT_SUPERVISOR_SUPABASE_URL", "SUPABASE_URL"),
    )
    """The Supabase project URL (https://<ref>.supabase.co), for ``store = "supabase"``."""
    supabase_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENT_SUPERVISOR_SUPABASE_KEY", "SUPABASE_SERVICE_ROLE_KEY"),
    )
    """The secret (service-role) key. SecretStr: it never shows in a repr or a log line, and
    _find_secret refuses a config file holding it that others can read."""
    # -- repository workspaces (supervisor.workspaces, issue 12) --
    default_owner: str | None = None
    """Completes a bare repository name: ``--repo notes`` is ``<default_owner>/notes`` on GitHub."""
    workspace_fresh_s: Grace = 60.0
    """A mirror fetched this recently is not fetched again before a job (0: fetch every time)."""
    workspace_max_age_s: Seconds = 14 * 86400.0
    """A mirror that no job has used for this long is deleted (``workspaces prune``)."""
    workspace_max_bytes: int = Field(default=20 << 30, gt=0)
    """Mirrors beyond this total size are deleted, least recently used first (never one in use)."""
    workspace_keep_failed_s: Grace = 86400.0
    """A failed attempt's worktree is kept this long for inspection (0: removed at once)."""
    workspace_branch_prefix: str = "agent/"
    """Each attempt's worktree is on a new branch ``<prefix><job id>-<attempt>``."""
    workspace_git_timeout_s: Seconds = 900.0
    """Longest one git command (a clone, a fetch, a checkout) may run before it is killed."""
    git_token_env: str = "GITHUB_TOKEN"  # noqa: S105 - the variable's name, not its value
    """Environment variable holding the token for private https repositories: git gets it
    through an askpass helper, never in a URL, a command line or a file."""
    git_token_hosts: list[str] = Field(default_factory=lambda: ["github.com"])
    """The hosts (``host`` or ``host:port``) the token is offered to, over https only: a job
    naming another server never sees it."""

    @field_validator("default_owner")
    @classmethod
    def _check_default_owner(cls, owner: str | None) -> str | None:
        if owner is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", owner.strip()):
            raise ValueError(f"must be a repository owner name, got {owner!r:.60}")
        return None if owner is None else owner.strip()

    @field_validator("workspace_branch_prefix")
    @classmethod
    def _check_branch_prefix(cls, prefix: str) -> str:
        # A ref name git accepts once "<job>-<attempt>" is appended (git check-ref-format).
        if not re.fullmatch(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}/?){1,4}", prefix) or ".." in prefix:
            raise ValueError(f"must be a branch name prefix such as 'agent/', got {prefix!r:.60}")
        return prefix

    @field_validator("git_token_env")
    @classmethod
    def _check_token_env(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
            raise ValueError(f"must be an environment variable name, got {name!r:.60}")
        return name

    @field_validator("git_token_hosts")
    @classmethod
    def _check_token_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not re.fullmatch(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?", host):
                raise ValueError(f"must be host names (host or host:port), got {host!r:.60}")
        return [host.lower() for host in hosts]

    @model_validator(mode="after")
    def _check_kind_repos(self) -> Settings:
        """A kind's default repository must parse now, not at its first job."""
        from supervisor.keys import parse_repo

        for name, kind in self.kinds.items():
            if kind.repo is not None:
                try:
                    parse_repo(kind.repo, default_owner=self.default_owner)
                except ValueError as exc:
                    raise ValueError(f"kinds.{name}.repo: {exc}") from None
        return self

    @property
    def store_url(self) -> str:
        """The store URL: ``store`` if set, else ``sqlite:///<data_dir>/jobs.sqlite3``
        (``supervisor.settings_cache.store_url_of``)."""
        return store_url_of(self.store, self.data_dir)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.is_absolute():  # a plugin host's cwd is arbitrary: a relative dir would wander
            raise ValueError("must be an absolute path (or start with ~)")
        return value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str | None) -> str | None:
        if value is None or value == "supabase":
            return value
        scheme = value.split(":", 1)[0].lower()
        if ":" not in value or scheme not in ("sqlite", "postgresql", "postgres"):
            # never echo the URL: it may hold a password
            raise ValueError("must be sqlite:///path, postgresql://…, or supabase")
        return value

    @field_validator("heartbeat_s")
    @classmethod
    def _beat_within_lease(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_s")  # absent when lease_s itself failed validation
        if lease is not None and not value < lease / 2:
            raise ValueError(f"must be less than half of lease_s ({lease:g} s), got {value:g}")
        return value

    @field_validator("kinds")
    @classmethod
    def _check_kind_names(cls, kinds: dict[str, KindConfig]) -> dict[str, KindConfig]:
        for name in kinds:
            _check_name("a kind name", name)
        return kinds

    @field_validator("claim_kinds")
    @classmethod
    def _check_claim_kinds(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if names is None:
            return None
        if not names:
            raise ValueError("must not be empty (leave it unset to take every kind)")
        kinds = info.data.get("kinds")
        for name in names:
            _check_name("a kind name", name)
            if kinds is not None and name not in kinds:  # a typo here would silently starve the kind
                raise ValueError(f"names kind {name!r}, which is not registered in [kinds]")
        return names

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """kwargs > env > TOML file; no .env and no secrets dir. Called on every construction,
        so the file path follows ``load_settings(config_file=...)`` or, without one,
        ``$AGENT_SUPERVISOR_CONFIG`` as it is at that moment."""
        toml_file = config_path(_CONFIG_FILE.get())
        return (init_settings, env_settings, _CheckedTomlSource(settings_cls, toml_file=toml_file))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; any problem is a ``ConfigError`` with one line that names the setting.

    ``config_file`` is the TOML file to read instead of ``$AGENT_SUPERVISOR_CONFIG`` or the
    default (the CLI's ``--config``); like those, a missing one is ignored. The environment is
    not changed. ``overrides`` take precedence over the environment and the config file (e.g.
    the CLI's ``--concurrency``).
    """
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        loc = ".".join(str(part) for part in first["loc"]) or "settings"
        msg = " ".join(first["msg"].removeprefix("Value error, ").split())
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        # from None: pydantic's own text spans several lines, and the CLI prints the cause
        # chain on one line; the first error and the count are all a person needs.
        raise ConfigError(f"invalid setting {loc}: {msg}{more}") from None
    except SettingsError as exc:  # e.g. AGENT_SUPERVISOR_KINDS that is not JSON
        raise ConfigError("invalid setting: " + " ".join(str(exc).split())) from exc
    finally:
        _CONFIG_FILE.reset(token)


def cacheable_values(settings: Settings) -> dict[str, Any] | None:
    """The settings' values as ``supervisor.settings_cache`` stores them (JSON), or None when
    they hold a secret: a Supabase key, a store URL with a password, or a secret-looking key
    anywhere (a kind's ``env``, say). A secret is never copied into the cache."""
    if settings.supabase_key is not None or (settings.store is not None and _url_password(settings.store)):
        return None
    values = settings.model_dump(mode="json")
    if _find_secret(values) is not None:
        return None
    return values
