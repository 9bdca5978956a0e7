"""Validated settings, remembered: a one-off command need not load pydantic to learn again
what the last one learned.

``load_settings`` (pydantic-settings) is the one reader of the config, and importing it
costs more than a ``list`` may take (~130 ms of imports here, against a 120 ms goal for the
whole command). So the command line keeps what it validated: after a full load it stores
the settings' values under a *fingerprint* of every input of that validation, and a later
command whose inputs have the same fingerprint reads the values back as ``CachedSettings``
(plain attributes, no pydantic). Anything different — an edited config file, a changed
``AGENT_SUPERVISOR_*`` variable, another ``--data-dir``, an upgrade of this package or of
pydantic — is another fingerprint, so the full load runs and reports any error as before.

What the fingerprint covers (the inputs of ``supervisor.settings.Settings``): the config
file's path, bytes and mode; every environment variable pydantic-settings reads (the
``AGENT_SUPERVISOR_`` prefix and the Supabase aliases, in any case, as it matches them);
the platformdirs defaults and the home directory (``~`` expansion); the command's
overrides; the Python version; the source files of the settings and their validators and
pydantic's own.

The cache never holds a secret: settings with a Supabase key, a store URL with a password
or a secret-looking key anywhere (``supervisor.settings.cacheable_values``) are not stored,
and such users take the full load every time. Files are private (0700 directory, 0600
files) and are not trusted unless they are the user's own and nobody else can write them:
a planted snapshot must not point a command at another store. Reading is best effort: a
damaged or foreign file is a miss, never an error.

Only the one-off verbs on jobs use it (``bridge.cli.QUICK_COMMANDS``); ``run``, the bridge,
``doctor`` and ``health`` load fully. Standard library and platformdirs only.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import quote

import platformdirs

if TYPE_CHECKING:
    from supervisor.settings import Settings

__all__ = [
    "APP_NAME",
    "CONFIG_ENV",
    "CachedRecord",
    "CachedSettings",
    "SettingsCache",
    "config_path",
    "store_url_of",
]

APP_NAME: Final = "agent-supervisor"
CONFIG_ENV: Final = "AGENT_SUPERVISOR_CONFIG"
"""Environment variable naming the TOML config file (overrides the platformdirs location)."""

ENV_PREFIX: Final = "AGENT_SUPERVISOR_"
ENV_ALIASES: Final = frozenset({"SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"})
"""Environment variables the settings read besides the prefixed ones (Supabase's own names)."""

FORMAT: Final = 1
KEEP_FILES: Final = 16
"""Snapshots kept (one per set of inputs: a data dir, a config); the oldest go first."""
_CODE: Final = ("settings.py", "schedules.py", "keys.py", "settings_cache.py")
"""Our source files whose change may change what a validation yields."""
_LIBRARIES: Final = ("pydantic", "pydantic_core", "pydantic_settings", "platformdirs", "cronsim")


def config_path(explicit: Path | None = None) -> Path:
    """The TOML config file to read: ``explicit`` if given, else ``$AGENT_SUPERVISOR_CONFIG``,
    else the platformdirs default."""
    if explicit is not None:
        return explicit.expanduser()
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def store_url_of(store: str | None, data_dir: Path) -> str:
    """The store URL: ``store`` if set, else ``sqlite:///<data_dir>/jobs.sqlite3``.

    The path is absolute and percent-quoted (``sqlite://`` + ``/home/…``, three slashes in
    all), so a data dir containing ``?``, ``#`` or ``%`` survives ``urlsplit`` + ``unquote``.
    """
    if store is not None:
        return store
    return "sqlite://" + quote(str(data_dir / "jobs.sqlite3"), safe="/")


class CachedRecord:
    """A nested model read back (a kind, a schedule): its fields as read-only attributes."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__!r})"


class CachedSettings(CachedRecord):
    """Settings read back from the cache: every field of ``Settings`` as an attribute of the
    same value and type, and ``store_url``. Not a pydantic model: no ``model_*`` methods,
    and the kinds are ``CachedRecord``s without ``KindConfig.render`` (no one-off command
    starts an agent)."""

    def __init__(self, values: dict[str, Any]) -> None:
        values = dict(values)
        values["data_dir"] = Path(values["data_dir"])
        for table in ("kinds", "schedules"):
            values[table] = {name: CachedRecord(record) for name, record in values[table].items()}
        super().__init__(values)

    @property
    def store_url(self) -> str:
        return store_url_of(self.__dict__["store"], self.__dict__["data_dir"])


class SettingsCache:
    """Snapshots of validated settings in one private directory, by fingerprint."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def default(cls) -> SettingsCache:
        """The user's cache directory (``~/.cache/agent-supervisor/settings`` on Linux)."""
        return cls(Path(platformdirs.user_cache_dir(APP_NAME)) / "settings")

    def fingerprint(self, config_file: Path | None, overrides: dict[str, Any]) -> str:
        """A digest of every input of ``load_settings(config_file, **overrides)`` as things
        stand now (see the module's docstring for the list)."""
        digest = hashlib.sha256()

        def add(*parts: object) -> None:
            for part in parts:
                data = part if isinstance(part, bytes) else repr(part).encode("utf-8", "surrogateescape")
                digest.update(len(data).to_bytes(8, "big"))
                digest.update(data)

        add(FORMAT, sys.version, os.getuid())
        here = Path(__file__).parent
        for name in _CODE:
            add(name, _stamp(here / name))
        for library in _LIBRARIES:
            add(library, _library_stamp(library))
        path = config_path(config_file)
        add("config", str(path))
        try:
            with path.open("rb") as handle:
                add(stat.S_IMODE(os.fstat(handle.fileno()).st_mode), handle.read())
        except FileNotFoundError:
            add("absent")
        except OSError as exc:  # a directory, unreadable: the full load says what is wrong
            add("unreadable", exc.errno)
        add("home", os.path.expanduser("~"), platformdirs.user_data_dir(APP_NAME))
        for name, value in sorted(os.environ.items()):
            upper = name.upper()
            if upper.startswith(ENV_PREFIX) or upper in ENV_ALIASES:
                add(name, value)
        add("overrides", sorted((k, repr(v)) for k, v in overrides.items()))
        return digest.hexdigest()

    def get(self, key: str) -> Settings | None:
        """The settings stored under ``key``, or None (none stored, damaged, or not ours)."""
        try:
            if not _private(self.directory, directory=True):
                return None
            fd = os.open(self.directory / f"{key[:40]}.json", os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as handle:
                if not _private(handle.fileno(), directory=False):
                    return None
                snapshot = json.loads(handle.read())
            if snapshot.get("format") != FORMAT or snapshot.get("key") != key:
                return None
            # Typed as the class it stands in for: the same attributes (tests/unit/test_settings_cache.py).
            return cast("Settings", CachedSettings(snapshot["values"]))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def put(self, key: str, values: dict[str, Any]) -> None:
        """Store ``values`` (secret-free; ``cacheable_values``) under ``key``. Best effort:
        a full disk or a read-only home costs the next command its speed, nothing else."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private(self.directory, directory=True):
                return
            data = json.dumps({"format": FORMAT, "key": key, "values": values}).encode()
            final = self.directory / f"{key[:40]}.json"
            temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(temp, final)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            self._prune()
        except OSError:
            return

    def _prune(self) -> None:
        snapshots = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                snapshots.append((entry.stat().st_mtime_ns, entry.path))
        for _, path in sorted(snapshots)[:-KEEP_FILES]:
            Path(path).unlink(missing_ok=True)


def _private(target: Path | int, *, directory: bool) -> bool:
    """Ours, and nobody else may write it (a directory: nobody else may enter it either)."""
    info = os.fstat(target) if isinstance(target, int) else os.lstat(target)
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    mask = 0o077 if directory else 0o022
    return kind_ok and info.st_uid == os.getuid() and not stat.S_IMODE(info.st_mode) & mask


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _library_stamp(name: str) -> tuple[int, int] | None:
    """Where a library is and when it was installed, without importing it."""
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return _stamp(Path(spec.origin))
