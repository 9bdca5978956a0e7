"""``agent-supervisor doctor``: check everything a supervisor depends on, and say what to fix.

Each check is a small function returning ``Check`` rows (``ok``, ``warn``, ``fail``, with a
``fix`` for the last two); ``run_doctor`` runs them in order and prints them (or ``--json``:
``{"ok": bool, "checks": [{name, status, message, fix}]}``). Exit 1 when a check failed, else
0 (warnings are worth reading, not errors). A check that cannot run (no settings, no store)
says why instead of stopping the others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

from supervisor.errors import SupervisorError

if TYPE_CHECKING:
    import httpx

    from supervisor.settings import Settings
    from supervisor.store import JobStore

__all__ = ["Check", "anon_key_check", "clock_check", "run_doctor"]

Status = Literal["ok", "warn", "fail"]

MIN_FREE_BYTES: Final = 512 << 20
"""Below this the data dir's disk fails the check: logs, the outbox and SQLite need room."""
LOW_FREE_BYTES: Final = 2 << 30
SKEW_WARN_S: Final = 2.0
SKEW_FAIL_S: Final = 60.0
"""Leases and backoffs use the store's clock, but delayed jobs (``--run-after``) and
schedules are computed here: a skew shifts them; past a minute, set the clock (NTP)."""
ANON_KEY_ENV: Final = ("SUPABASE_ANON_KEY", "SUPABASE_PUBLISHABLE_KEY")
MIN_NODE: Final = 18
_MIB: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, how it went, what it found, and how to fix it."""

    name: str
    status: Status
    message: str
    fix: str | None = None


def _config(args: argparse.Namespace) -> list[Check]:
    from supervisor.settings import config_path

    path = config_path(args.config)
    if not path.exists():
        if args.config is not None:
            return [Check("config", "fail", f"{path} does not exist", "correct --config, or create the file")]
        return [Check("config", "ok", f"no config file at {path} (defaults and environment only)")]
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return [
            Check(
                "config",
                "warn",
                f"{path} can be read by others (mode {mode:o}); a secret put there later is refused",
                f"chmod 600 {path}",
            )
        ]
    return [Check("config", "ok", f"{path} (mode {mode:o})")]


def _settings(load: Callable[[], Settings]) -> tuple[Settings | None, list[Check]]:
    try:
        settings = load()
    except SupervisorError as exc:  # ConfigError: one line naming the setting
        return None, [Check("settings", "fail", str(exc), "fix the setting it names (README, Configuration)")]
    kinds = len(settings.kinds)
    extra = f", {len(settings.schedules)} schedules" if settings.schedules else ""
    return settings, [
        Check("settings", "ok", f"parsed: {kinds} kinds{extra}, concurrency {settings.concurrency}")
    ]


def _data_dir(root: Path) -> list[Check]:
    checks = []
    if not root.exists():
        parent = next((p for p in root.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            return [
                Check(
                    "data dir", "fail", f"{root} does not exist and cannot be created", f"mkdir -m 700 {root}"
                )
            ]
        checks.append(
            Check("data dir", "ok", f"{root} does not exist yet; it is created (mode 700) on first use")
        )
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
                pass
        except OSError as exc:
            checks.append(
                Check("data dir", "fail", f"{root} is not writable: {exc.strerror}", f"chmod u+w {root}")
            )
        mode = stat.S_IMODE(root.stat().st_mode)
        if mode & 0o077:
            checks.append(
                Check(
                    "data dir", "warn", f"{root} can be read by others (mode {mode:o})", f"chmod 700 {root}"
                )
            )
        elif not checks:
            checks.append(Check("data dir", "ok", f"{root}: writable, private (mode {mode:o})"))
    where = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if free < MIN_FREE_BYTES:
        checks.append(Check("disk", "fail", f"{free // _MIB} MiB free under {where}", "free some space"))
    elif free < LOW_FREE_BYTES:
        checks.append(Check("disk", "warn", f"only {free // _MIB} MiB free under {where}", "free some space"))
    else:
        checks.append(Check("disk", "ok", f"{free // _MIB // 1024} GiB free under {where}"))
    return checks


def _store(settings: Settings) -> tuple[JobStore | None, list[Check]]:
    from bridge.compose import build_store, sqlite_path

    url = settings.store_url
    if settings.store is None and not sqlite_path(url).exists():  # checking must not create it
        return None, [
            Check("store", "ok", f"SQLite store {sqlite_path(url)} does not exist yet; made on first use")
        ]

    try:
        store = build_store(settings, quick=True)
        store.now()  # connects; the remote stores check the schema version on connecting
    except SupervisorError as exc:
        fix = "check the store URL and that it is up; for Postgres/Supabase: agent-supervisor db apply"
        return None, [Check("store", "fail", " ".join(str(exc).split()), fix)]
    from supervisor.datadir import DataDir
    from supervisor.storeid import remembered_identity

    try:
        actual = store.identity()
    except SupervisorError as exc:
        store.close()
        return None, [Check("store", "fail", f"no store identity: {exc}", "agent-supervisor db apply")]
    remembered = remembered_identity(DataDir.at(settings.data_dir))
    if remembered is not None and remembered != actual:
        store.close()
        why = (
            f"the store (id {actual[:12]}) is not the one data dir {settings.data_dir} worked with "
            f"(id {remembered[:12]}): replaced, emptied, or the settings point elsewhere"
        )
        return None, [
            Check("store", "fail", why, "point the settings at the old store, or run with --new-store")
        ]
    known = f", identity {actual[:12]}"
    # the remote stores' repr names the host, never a secret
    name = f"SQLite store {sqlite_path(url)}" if url.startswith("sqlite:") else repr(store)
    return store, [Check("store", "ok", f"{name} answers; schema matches{known}")]


def clock_check(store_now: Callable[[], float], wall: Callable[[], float] = time.time) -> Check:
    """The store's clock against this machine's, half the round trip allowed for."""
    before = wall()
    theirs = store_now()
    after = wall()
    skew = theirs - (before + after) / 2
    text = f"{abs(skew):.2f} s {'ahead of' if skew > 0 else 'behind'} this machine"
    if abs(skew) > SKEW_FAIL_S:
        return Check("clock", "fail", f"the store's clock is {text}", "enable time sync (NTP) here or there")
    if abs(skew) > SKEW_WARN_S:
        return Check("clock", "warn", f"the store's clock is {text}", "enable time sync (NTP)")
    return Check("clock", "ok", f"the store's clock is {text}")


def anon_key_check(url: str, anon_key: str, client: httpx.Client | None = None) -> Check:
    """Whether the publishable (anon) key can read jobs or call the job functions: it must
    not (the schema revokes both; DESIGN.md, "Security"). Any HTTP answer other than a 2xx
    counts as refused."""
    import httpx

    owned = client is None
    http = client or httpx.Client(timeout=5.0, follow_redirects=False)
    headers = {"apikey": anon_key, "Authorization": f"Bearer {anon_key}"}
    base = url.rstrip("/")
    try:
        read = http.get(f"{base}/rest/v1/jobs", params={"select": "id", "limit": "1"}, headers=headers)
        call = http.post(f"{base}/rest/v1/rpc/jobs_now", json={}, headers=headers)
    except httpx.HTTPError as exc:
        return Check("privileges", "warn", f"could not ask with the anon key: {type(exc).__name__}")
    finally:
        if owned:
            http.close()
    leaks = [what for what, r in (("read jobs", read), ("call jobs_now", call)) if r.is_success]
    if leaks:
        return Check(
            "privileges",
            "fail",
            f"the anon (publishable) key can {' and '.join(leaks)}: anyone with the app's key sees the queue",
            "agent-supervisor db apply --dsn … (re-applies the revokes), or remove the policies you added",
        )
    return Check("privileges", "ok", "the anon key can neither read jobs nor call the job functions")


def _privileges(settings: Settings, environ: Mapping[str, str]) -> list[Check]:
    if settings.store != "supabase" or not settings.supabase_url:
        return []
    anon = next((environ[n] for n in ANON_KEY_ENV if environ.get(n)), None)
    if anon is None:
        return [
            Check(
                "privileges",
                "warn",
                "not checked: set SUPABASE_ANON_KEY (the publishable key) to check that it cannot read jobs",
            )
        ]
    return [anon_key_check(settings.supabase_url, anon)]


def _cgroups() -> list[Check]:
    from supervisor.cgroups import detect_host

    enforcement = detect_host()
    text = enforcement.describe()
    if enforcement.memory_base is None:
        return [Check("limits", "warn", text, "memory_max_bytes is sampled, not enforced by the kernel")]
    return [Check("limits", "ok", text)]


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip() if out.returncode == 0 else None


def _git() -> list[Check]:
    text = _version(["git", "--version"])
    if text is None:
        return [
            Check(
                "git", "warn", "git not found: jobs with a repository cannot get a workspace", "install git"
            )
        ]
    return [Check("git", "ok", text)]


def _node() -> list[Check]:
    text = _version(["node", "--version"])
    if text is None:
        return [
            Check("node", "warn", "node not found: needed only by the TypeScript client (scripts/ts-client)")
        ]
    match = re.match(r"v?(\d+)", text)
    if match and int(match.group(1)) < MIN_NODE:
        return [Check("node", "warn", f"node {text} is older than {MIN_NODE}", f"install node {MIN_NODE}+")]
    return [Check("node", "ok", f"node {text}")]


def checks(args: argparse.Namespace, load: Callable[[], Settings], environ: Mapping[str, str]) -> list[Check]:
    """Every check, in the order a person would fix things."""
    found = _config(args)
    settings, more = _settings(load)
    found += more
    if settings is not None:
        found += _data_dir(settings.data_dir)
        store, more = _store(settings)
        found += more
        if store is not None:
            try:
                found.append(clock_check(store.now))
            except SupervisorError as exc:
                found.append(Check("clock", "warn", f"not checked: {exc}"))
            finally:
                store.close()
        found += _privileges(settings, environ)
    found += _cgroups() + _git() + _node()
    return found


def run_doctor(args: argparse.Namespace, load: Callable[[], Settings], out: TextIO) -> int:
    """``doctor``: print the checks; 1 if any failed."""
    found = checks(args, load, os.environ)
    failed = [c for c in found if c.status == "fail"]
    if args.json:
        data: dict[str, Any] = {"ok": not failed, "checks": [asdict(c) for c in found]}
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for c in found:
            out.write(f"{marks[c.status]}  {c.name:<11} {c.message}\n")
        to_fix = [c for c in found if c.status != "ok" and c.fix]
        if to_fix:
            out.write("\nto fix:\n" + "".join(f"  - {c.name}: {c.fix}\n" for c in to_fix))
        out.write("\nall is well\n" if not failed else f"\n{len(failed)} to fix\n")
    if failed:
        sys.stderr.write(f"agent-supervisor: doctor: {len(failed)} of {len(found)} checks failed\n")
    return 1 if failed else 0
