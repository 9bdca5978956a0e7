"""The files of the workspaces, under ``<data dir>/workspaces/`` (``DataDir.workspaces``)::

    askpass                     the GIT_ASKPASS helper (no secret in it; see supervisor.gitcmd)
    locks/<slug>.lock           the per-repository flock (supervisor.repolock)
    mirrors/<slug>/             a bare repository (supervisor.mirror), with mirror.json
    tmp/<slug>.<random>/        a first clone under way; renamed into mirrors/ when complete
    trees/<job>-<attempt>/      workspace.json, and <repo name>/: the attempt's worktree
    trees/.new-<job>-…/         a tree directory being published
    trash/                      directories being deleted

This module is the one owner of these names, and of the two small JSON records: a mirror's
(``key``, ``url``, ``created_at``, ``fetched_at``, ``used_at``, ``size_bytes``) and a tree's
(``job_id``, ``attempt``, ``key``, ``mirror`` slug, ``branch``, ``base_ref``, ``commit``,
``created_at``, ``keep_until``). Reading them takes no lock, so ``health`` and ``workspaces``
in another process can look at any time. Times are wall-clock epoch seconds (they must
survive a restart).

Deletions go through ``trash/`` (one rename, then a recursive delete): a directory is gone
from its place at once, and a delete cut short by a crash is finished by the next prune.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from supervisor.datadir import private_file, write_all, write_private
from supervisor.gitcmd import ASKPASS_SCRIPT

__all__ = ["Layout", "MirrorRecord", "TreeRecord", "disk_usage", "read_json", "slug"]

MIRROR_META: Final = "mirror.json"
TREE_META: Final = "workspace.json"
_SUBDIRS: Final = ("locks", "mirrors", "tmp", "trees", "trash")
_TREE_NAME: Final = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True, slots=True)
class TreeRecord:
    """An entry of ``trees/``: ``ident`` is (job id, attempt), None while being published."""

    path: Path
    ident: tuple[int, int] | None
    meta: dict[str, Any]


@dataclass(slots=True)
class MirrorRecord:
    """An entry of ``mirrors/`` and the attempts holding a worktree of it."""

    slug: str
    path: Path
    meta: dict[str, Any]
    holders: list[tuple[int, int]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return str(self.meta.get("key") or self.slug)

    @property
    def used_at(self) -> float:
        return float(self.meta.get("used_at") or self.meta.get("created_at") or 0.0)

    @property
    def size(self) -> int:
        """As last measured (at a fetch or a prune)."""
        return int(self.meta.get("size_bytes") or 0)


@dataclass(frozen=True, slots=True)
class Layout:
    """The paths under ``root`` (see the module docstring)."""

    root: Path

    @property
    def askpass(self) -> Path:
        return self.root / "askpass"

    @property
    def mirrors(self) -> Path:
        return self.root / "mirrors"

    @property
    def trees(self) -> Path:
        return self.root / "trees"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def mirror(self, slug: str) -> Path:
        return self.mirrors / slug

    def lock(self, slug: str) -> Path:
        return self.root / "locks" / f"{slug}.lock"

    def tree(self, job_id: int, attempt: int) -> Path:
        return self.trees / f"{job_id}-{attempt}"

    def new_tmp(self, slug: str) -> Path:
        return self.tmp / f"{slug}.{secrets.token_hex(6)}"

    def tmp_of(self, slug: str) -> list[Path]:
        return sorted(self.tmp.glob(f"{slug}.*"))

    def staging(self, job_id: int, attempt: int) -> Path:
        return self.trees / f".new-{job_id}-{attempt}-{secrets.token_hex(4)}"

    def lock_slugs(self) -> list[str]:
        return sorted(p.name.removesuffix(".lock") for p in (self.root / "locks").glob("*.lock"))

    def ensure(self) -> None:
        """Create the directories (0o700) and the askpass helper (0o700) when missing."""
        for name in _SUBDIRS:
            (self.root / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if self.askpass.read_text() == ASKPASS_SCRIPT and os.access(self.askpass, os.X_OK):
                return
        tmp = self.root / f".askpass.{secrets.token_hex(4)}"
        fd = private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            write_all(fd, ASKPASS_SCRIPT.encode())
            os.fchmod(fd, 0o700)  # git executes it; nobody else may read or change it
        finally:
            os.close(fd)
        os.replace(tmp, self.askpass)

    def scan_trees(self) -> Iterator[TreeRecord]:
        """Every directory in ``trees/``, with its record ({} when unreadable)."""
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.trees.iterdir()):
                if path.is_dir():
                    match = _TREE_NAME.match(path.name)
                    ident = (int(match.group(1)), int(match.group(2))) if match else None
                    yield TreeRecord(path, ident, read_json(path / TREE_META) if ident else {})

    def scan_mirrors(self) -> list[MirrorRecord]:
        """Every mirror, with the attempts whose worktree (live or kept) comes from it."""
        holders: dict[str, list[tuple[int, int]]] = {}
        for tree in self.scan_trees():
            if tree.ident is not None:
                holders.setdefault(str(tree.meta.get("mirror")), []).append(tree.ident)
        found = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.mirrors.iterdir()):
                if path.is_dir():
                    meta = read_json(path / MIRROR_META)
                    found.append(MirrorRecord(path.name, path, meta, holders.get(path.name, [])))
        return found

    def write_meta(self, directory: Path, name: str, meta: dict[str, Any]) -> None:
        write_private(directory / name, json.dumps(meta).encode())

    def update_mirror_meta(self, mirror: Path, **changes: Any) -> None:
        meta = read_json(mirror / MIRROR_META)
        meta.update(changes)
        self.write_meta(mirror, MIRROR_META, meta)

    def discard(self, path: Path) -> None:
        """Delete a directory by way of ``trash/`` (see the module docstring)."""
        trash = self.root / "trash" / f"{path.name}.{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def empty_trash(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for leftover in (self.root / "trash").iterdir():
                shutil.rmtree(leftover, ignore_errors=True)


def slug(key: str) -> str:
    """A directory name for a repository key: readable, and unique by its hash."""
    readable = re.sub(r"[^a-z0-9._-]+", "-", key.lower()).strip("-.")[-48:].lstrip("-.")
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def read_json(path: Path) -> dict[str, Any]:
    """A small record, or {} when it is missing or unreadable (then treated as old)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def disk_usage(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks, so sparse files count as they use)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(root, name))
                total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total
