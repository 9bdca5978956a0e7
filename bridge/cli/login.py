"""``agent-supervisor service install|uninstall|status``: run the supervisor at login.

Linux: a systemd user unit, ``$XDG_CONFIG_HOME/systemd/user/agent-supervisor.service``, then
``systemctl --user enable --now``. macOS: a launchd agent,
``~/Library/LaunchAgents/dev.agent-supervisor.plist``, then ``launchctl bootstrap``.

The file runs ``<this python> -P -m bridge --data-dir <the settings' data dir> run`` (plus
``--config`` when one was named) and holds no secret: secrets stay in the config file (mode
600) or, for systemd, in the optional ``EnvironmentFile`` ``<config dir>/service.env``, which
must be mode 600 too. A store URL with a password, or ``AGENT_SUPERVISOR_*`` variables set only
in this shell, are not copied: the command says where to put them. The stop timeout covers the
drain time and the grace period, so a logout stops agents the way SIGTERM to ``run`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import urlsplit

from supervisor.errors import ConfigError

if TYPE_CHECKING:
    from supervisor.settings import Settings

__all__ = ["Plan", "plan", "run_service"]

UNIT_NAME: Final = "agent-supervisor.service"
LABEL: Final = "dev.agent-supervisor"
ENV_FILE: Final = "service.env"
_STOP_MARGIN_S: Final = 10


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``install`` writes and runs: the file, its text, the commands that enable it."""

    platform: str
    path: Path
    text: str
    enable: list[list[str]]
    disable: list[list[str]]
    notes: list[str]


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")


def _argv(args: argparse.Namespace, settings: Settings) -> tuple[list[str], list[str]]:
    """The command the service runs, and notes about what it leaves out."""
    # -P: the home directory (the working directory) must not shadow the package (Python 3.11+)
    argv = [sys.executable, "-P", "-m", "bridge", "--data-dir", str(settings.data_dir)]
    notes = []
    config: Path | None = args.config  # checked to exist by the CLI
    if config is None and os.environ.get("AGENT_SUPERVISOR_CONFIG"):
        named = Path(os.environ["AGENT_SUPERVISOR_CONFIG"]).expanduser()
        config = named if named.is_file() else None  # a missing one means "no config": keep it so
    if config is not None:
        argv += ["--config", str(Path(os.path.abspath(config.expanduser())))]
    if args.store is not None:
        if urlsplit(args.store).password:
            raise ConfigError(
                "the store URL holds a password, which must not go into a service file: put "
                'store = "…" into the config file (mode 600) and install again without --store'
            )
        argv += ["--store", args.store]
    skipped = sorted(
        n
        for n in os.environ
        if n.upper().startswith("AGENT_SUPERVISOR_") and n.upper() != "AGENT_SUPERVISOR_CONFIG"
    )
    if skipped:
        notes.append(
            f"not copied from this shell: {', '.join(skipped)}; put them in the config file, or (systemd) "
            f"in {_config_home() / 'agent-supervisor' / ENV_FILE} with mode 600"
        )
    return [*argv, "run"], notes


def _stop_timeout(settings: Settings) -> int:
    return int(settings.drain_timeout_s + settings.stop_grace_s + _STOP_MARGIN_S)


def _systemd(args: argparse.Namespace, settings: Settings) -> Plan:
    argv, notes = _argv(args, settings)
    env_file = _config_home() / "agent-supervisor" / ENV_FILE
    if env_file.exists() and stat.S_IMODE(env_file.stat().st_mode) & 0o077:
        raise ConfigError(f"{env_file} can be read by others; run: chmod 600 {env_file}")
    path_env = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    text = "\n".join(
        [
            "# Written by `agent-supervisor service install`; `service uninstall` removes it.",
            "# No secrets here: they stay in the config file or the EnvironmentFile (both mode 600).",
            "[Unit]",
            "Description=agent-supervisor: runs AI agent jobs as supervised processes",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            "ExecStart=" + " ".join(_systemd_quote(a) for a in argv),
            "WorkingDirectory=%h",
            f"Environment={_systemd_quote('PATH=' + path_env)}",
            f"EnvironmentFile=-{_systemd_quote(str(env_file))}",
            "# SIGTERM to run only: it drains, then stops its agents (each in its own process group).",
            "KillMode=mixed",
            f"TimeoutStopSec={_stop_timeout(settings)}",
            "Restart=on-failure",
            "RestartSec=5",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )
    path = _config_home() / "systemd" / "user" / UNIT_NAME
    return Plan(
        "linux",
        path,
        text,
        enable=[
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", UNIT_NAME],
        ],
        disable=[["systemctl", "--user", "disable", "--now", UNIT_NAME]],
        notes=notes,
    )


def _systemd_quote(word: str) -> str:
    """A word of ExecStart/Environment: double quotes when it holds a space or a quote;
    ``%`` doubled (systemd's specifier character)."""
    word = word.replace("%", "%%")
    if any(c in word for c in " \t\"'\\"):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def _launchd(args: argparse.Namespace, settings: Settings) -> Plan:
    argv, notes = _argv(args, settings)
    data: dict[str, Any] = {
        "Label": LABEL,
        "ProgramArguments": argv,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "WorkingDirectory": str(_home()),
        "EnvironmentVariables": {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")},
        "ExitTimeOut": _stop_timeout(settings),
        "ProcessType": "Background",
    }
    path = _home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    domain = f"gui/{os.getuid()}"
    return Plan(
        "darwin",
        path,
        plistlib.dumps(data).decode(),
        enable=[["launchctl", "bootstrap", domain, str(path)]],
        disable=[["launchctl", "bootout", f"{domain}/{LABEL}"]],
        notes=notes,
    )


def plan(args: argparse.Namespace, settings: Settings, platform: str | None = None) -> Plan:
    """What ``install`` would write for this platform (``sys.platform`` unless given)."""
    which = platform or sys.platform
    if which.startswith("linux"):
        return _systemd(args, settings)
    if which == "darwin":
        return _launchd(args, settings)
    raise ConfigError(f"service install supports Linux (systemd) and macOS (launchd), not {which}")


def _run(argv: list[str]) -> str | None:
    """Run a service-manager command; None on success, else its one-line complaint."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{shlex.join(argv)}: {exc}"
    if out.returncode != 0:
        why = " ".join((out.stderr or out.stdout).split())[:200]
        return f"{shlex.join(argv)}: {why or f'exit {out.returncode}'}"
    return None


def _install(args: argparse.Namespace, p: Plan, out: TextIO) -> int:
    if args.dry_run:
        out.write(f"# would write {p.path}\n{p.text}")
        if not p.text.endswith("\n"):
            out.write("\n")
        for argv in [] if args.no_enable else p.enable:
            out.write(f"# would run: {shlex.join(argv)}\n")
        for note in p.notes:
            out.write(f"# note: {note}\n")
        return 0
    p.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.path.with_name(p.path.name + ".tmp")
    tmp.write_text(p.text)
    tmp.chmod(0o644)  # no secret inside; the service manager reads it as this user
    tmp.replace(p.path)
    out.write(f"wrote {p.path}\n")
    for note in p.notes:
        out.write(f"note: {note}\n")
    if args.no_enable:
        out.write(f"not enabled (--no-enable); to start it: {' && '.join(shlex.join(a) for a in p.enable)}\n")
        return 0
    for argv in p.enable:
        problem = _run(argv)
        if problem is not None:
            sys.stderr.write(f"agent-supervisor: error: written, but not enabled: {problem}\n")
            return 1
    out.write("enabled and started: it runs now and at every login\n")
    return 0


def _uninstall(p: Plan, out: TextIO) -> int:
    if not p.path.exists():
        out.write(f"not installed ({p.path} does not exist)\n")
        return 0
    for argv in p.disable:
        problem = _run(argv)
        if problem is not None:
            out.write(f"note: {problem}\n")  # not running or not loaded: removing the file is what counts
    p.path.unlink()
    if p.platform == "linux":
        _run(["systemctl", "--user", "daemon-reload"])
    out.write(f"removed {p.path}\n")
    return 0


def _status(args: argparse.Namespace, p: Plan, out: TextIO) -> int:
    installed = p.path.exists()
    state: str | None = None
    if installed and p.platform == "linux":
        try:
            res = subprocess.run(
                ["systemctl", "--user", "is-active", UNIT_NAME], capture_output=True, text=True, timeout=10
            )
            state = res.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            state = None
    current = installed and p.path.read_text() == p.text
    data = {"installed": installed, "path": str(p.path), "up_to_date": current, "state": state}
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
    elif not installed:
        out.write(f"not installed (agent-supervisor service install writes {p.path})\n")
    else:
        stale = "" if current else " — differs from what install would write now (run install again)"
        out.write(f"installed: {p.path}{stale}\nstate: {state or 'unknown'}\n")
    return 0


def run_service(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """``service install|uninstall|status``."""
    p = plan(args, settings, getattr(args, "platform", None))
    if args.service_command == "install":
        return _install(args, p, out)
    if args.service_command == "uninstall":
        return _uninstall(p, out)
    return _status(args, p, out)
