"""Repository workspaces: one shared mirror per repository, one git worktree per attempt.

``Workspaces.prepare`` is the ``preparing`` state's work (DESIGN.md, "Preparing does real
work"): make sure the repository's mirror (``supervisor.mirror``) exists and is recent, then
check the requested ref out into a new worktree on a new branch ``<prefix><job>-<attempt>``.
``release`` removes an attempt's worktree when the job settles (or keeps a failed one for
inspection), ``prune`` applies the retention policy, ``mirrors`` lists what is held. The
files are described in ``supervisor.workspace_layout``; git is run by ``supervisor.gitcmd``.

Crash safety: a first clone is made in ``tmp/`` and renamed into place in one ``rename(2)``,
so a mirror is either absent or complete; whoever next holds the repository's lock deletes
the clones a crashed process left in ``tmp/``, and git lock files that a killed git left.
A worktree's directory is published the same way, with its record in it.

Concurrency: every change to a repository happens under its lock (``supervisor.repolock``),
so concurrent jobs never fetch into one mirror at once, while jobs on different repositories
prepare in parallel. The object holds no mutable state: a host may run several ``prepare``
calls in worker threads at once, and other processes may share the directory.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from supervisor.clock import SYSTEM_CLOCK, Clock
from supervisor.datadir import DataDir, fsync_dir
from supervisor.errors import PrepareError
from supervisor.gitcmd import Credential, Git
from supervisor.job import LIVE
from supervisor.keys import RepoSource, parse_ref
from supervisor.mirror import Mirror
from supervisor.repolock import RepoLock
from supervisor.settings import Settings
from supervisor.store import JobStore
from supervisor.workspace_layout import (
    MIRROR_META,
    TREE_META,
    Layout,
    MirrorRecord,
    disk_usage,
    read_json,
    slug,
)

__all__ = [
    "YOUNG_TREE_S",
    "MirrorInfo",
    "PruneReport",
    "Workspace",
    "WorkspaceSettings",
    "Workspaces",
    "live_attempts",
    "workspaces_summary",
]

log = logging.getLogger("agent_supervisor.workspaces")

YOUNG_TREE_S: Final = 60.0
"""A worktree made this recently is never pruned: the caller's list of live jobs may be
older than it (the CLI reads the store, then prunes, while a supervisor prepares)."""
_STALE_STAGING_S: Final = 3600.0
_FULL_SHA: Final = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class WorkspaceSettings:
    """The workspace settings (``Settings.workspace_*``, ``git_token_*``) as one value."""

    fresh_s: float = 60.0
    max_age_s: float = 14 * 86400.0
    max_bytes: int = 20 << 30
    keep_failed_s: float = 86400.0
    branch_prefix: str = "agent/"
    git_timeout_s: float = 900.0
    token_env: str = "GITHUB_TOKEN"  # noqa: S105 - the variable's name
    token_hosts: tuple[str, ...] = ("github.com",)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkspaceSettings:
        return cls(
            fresh_s=settings.workspace_fresh_s,
            max_age_s=settings.workspace_max_age_s,
            max_bytes=settings.workspace_max_bytes,
            keep_failed_s=settings.workspace_keep_failed_s,
            branch_prefix=settings.workspace_branch_prefix,
            git_timeout_s=settings.workspace_git_timeout_s,
            token_env=settings.git_token_env,
            token_hosts=tuple(settings.git_token_hosts),
        )

    @property
    def lock_timeout_s(self) -> float:
        """How long ``prepare`` waits for another holder of the repository (a clone or a
        fetch, then a checkout: a few git commands, each bounded by ``git_timeout_s``)."""
        return 3 * self.git_timeout_s


@dataclass(frozen=True, slots=True)
class Workspace:
    """An attempt's checked-out worktree."""

    path: Path
    """The worktree: the agent's working directory."""
    source: RepoSource
    branch: str
    """The attempt's own new branch (``agent/<job>-<attempt>``)."""
    base_ref: str
    """What it started from: the requested branch, tag or commit, else the default branch."""
    commit: str
    """The commit ``base_ref`` named when the worktree was made."""
    job_id: int
    attempt: int
    cloned: bool = False
    """The mirror was cloned for this attempt (the first job on the repository)."""
    fetched: bool = False
    """The mirror was fetched for this attempt (False: fresh enough, or just cloned)."""
    prepare_s: float = 0.0

    def env(self) -> dict[str, str]:
        """What the agent's environment gains (the agent contract, README)."""
        return {
            "AGENT_SUPERVISOR_WORKSPACE": str(self.path),
            "AGENT_SUPERVISOR_REPO_URL": self.source.url,
            "AGENT_SUPERVISOR_REPO_OWNER": self.source.owner or "",
            "AGENT_SUPERVISOR_REPO_NAME": self.source.name,
            "AGENT_SUPERVISOR_BRANCH": self.branch,
            "AGENT_SUPERVISOR_BASE_REF": self.base_ref,
            "AGENT_SUPERVISOR_BASE_COMMIT": self.commit,
        }

    def facts(self) -> dict[str, Any]:
        """The event facts of a prepared attempt (JSON-ready, no secret)."""
        return {
            "repo": self.source.key,
            "workspace": str(self.path),
            "branch": self.branch,
            "base_ref": self.base_ref,
            "commit": self.commit,
            "cloned": self.cloned,
            "fetched": self.fetched,
            "prepare_s": round(self.prepare_s, 3),
        }


@dataclass(frozen=True, slots=True)
class MirrorInfo:
    """One repository held in the data dir (``workspaces --json`` prints ``to_json()``)."""

    key: str
    url: str
    path: Path
    size_bytes: int
    fetched_at: float | None
    used_at: float | None
    holders: tuple[tuple[int, int], ...]
    """(job id, attempt) of each worktree made from it, live or kept after a failure."""

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.key,
            "url": self.url,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "fetched_at": self.fetched_at,
            "used_at": self.used_at,
            "jobs": [{"job_id": j, "attempt": a} for j, a in self.holders],
        }


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one ``prune`` did."""

    trees_removed: tuple[tuple[int, int], ...] = ()
    trees_kept: tuple[tuple[int, int], ...] = ()
    """Worktrees of live jobs, recent ones, and failed ones within ``keep_failed_s``."""
    mirrors_removed: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()
    """Repositories skipped because another holder had their lock (a prepare under way)."""
    bytes_freed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "trees_removed": [list(t) for t in self.trees_removed],
            "trees_kept": [list(t) for t in self.trees_kept],
            "mirrors_removed": list(self.mirrors_removed),
            "busy": list(self.busy),
            "bytes_freed": self.bytes_freed,
        }


class Workspaces:
    """The workspaces of one data dir (``root`` is ``DataDir.workspaces``)."""

    def __init__(
        self,
        root: Path,
        *,
        settings: WorkspaceSettings,
        clock: Clock = SYSTEM_CLOCK,
        git: str = "git",
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``git``: the program to run. ``env``: the environment git runs with and the token
        is read from (default: this process's, read at each call). ``sleep``: how waiting
        for a busy repository sleeps. Nothing is created before the first ``prepare``."""
        self.layout = Layout(root)
        self.settings = settings
        self._clock = clock
        self._env = env
        self._sleep = sleep
        self._git = Git(git, env=env, timeout_s=settings.git_timeout_s, askpass=self.layout.askpass)

    # -- preparing -----------------------------------------------------------------------
    def prepare(self, source: RepoSource, ref: str | None, *, job_id: int, attempt: int) -> Workspace:
        """Make the attempt's worktree at ``ref`` (default: the repository's default branch).

        Blocking, for a worker thread: a first clone may take minutes, and another holder of
        the repository (a clone, a fetch) is waited for. Raises ``PrepareError`` (one line:
        git's own, without credentials) when the repository cannot be cloned or fetched, the
        ref is not found or the checkout fails; nothing of the attempt is left behind then.
        ``InvalidJobError`` for a malformed ``ref``; ``OSError`` if the data dir fails.
        """
        started = self._clock.monotonic()
        ref = parse_ref(ref) if ref is not None else None
        self.layout.ensure()
        name = slug(source.key)
        env = os.environ if self._env is None else self._env
        token = env.get(self.settings.token_env, "")
        credential = Credential.for_url(source.url, token, self.settings.token_hosts)
        mirror = Mirror(self.layout.mirror(name), self._git)
        with self._lock(name) as lock:
            if not lock.acquire(self.settings.lock_timeout_s):
                wait = self.settings.lock_timeout_s
                raise PrepareError(f"repository {source.key} stayed busy for {wait:g} s")
            self._clear_tmp(name)
            cloned = fetched = False
            if not mirror.path.is_dir():
                self._clone(source, name, credential)
                cloned = True
            else:
                mirror.clear_stale_locks(self._clock.time(), self.settings.git_timeout_s)
                if not self._fresh(read_json(mirror.path / MIRROR_META)):
                    mirror.fetch(source, credential)
                    fetched = True
            found = mirror.lookup(ref)
            if found is None and not (cloned or fetched):  # fresh, but the ref is newer
                mirror.fetch(source, credential)
                fetched, found = True, mirror.lookup(ref)
            if found is None and ref is None and not cloned:  # the default branch was renamed
                mirror.learn_default_branch(source, credential, what=f"fetch of {source.key}")
                found = mirror.lookup(ref)
            if found is None and ref is not None and _FULL_SHA.match(ref):  # on no branch or tag
                mirror.fetch_commit(source, ref, credential)
                found = mirror.lookup(ref)
            if found is None:
                what = f"ref {ref!r}" if ref else "default branch (is the repository empty?)"
                raise PrepareError(f"{source.key} has no {what}")
            commit, base_ref = found
            path, branch = self._add_tree(mirror, source, job_id, attempt, commit, base_ref)
            now = self._clock.time()
            if fetched:
                size = disk_usage(mirror.path)
                self.layout.update_mirror_meta(mirror.path, used_at=now, fetched_at=now, size_bytes=size)
            else:
                self.layout.update_mirror_meta(mirror.path, used_at=now)
        log.info("job %d attempt %d: worktree of %s at %s", job_id, attempt, source.key, base_ref)
        return Workspace(
            path=path,
            source=source,
            branch=branch,
            base_ref=base_ref,
            commit=commit,
            job_id=job_id,
            attempt=attempt,
            cloned=cloned,
            fetched=fetched,
            prepare_s=self._clock.monotonic() - started,
        )

    def _clone(self, source: RepoSource, name: str, credential: Credential | None) -> None:
        tmp = Mirror(self.layout.new_tmp(name), self._git)
        try:
            tmp.init(source)
            tmp.fetch(source, credential, what=f"clone of {source.key}")
            tmp.learn_default_branch(source, credential, what=f"clone of {source.key}")
            now = self._clock.time()
            meta = {"key": source.key, "url": source.url, "created_at": now, "fetched_at": now}
            meta |= {"used_at": now, "size_bytes": disk_usage(tmp.path)}
            self.layout.write_meta(tmp.path, MIRROR_META, meta)
            # Published in one rename(2): mirrors/<slug> is absent or complete, never half.
            os.rename(tmp.path, self.layout.mirror(name))
            fsync_dir(self.layout.mirrors)
        except BaseException:
            self.layout.discard(tmp.path)
            raise
        log.info("cloned %s", source.key)

    def _add_tree(
        self, mirror: Mirror, source: RepoSource, job_id: int, attempt: int, commit: str, base_ref: str
    ) -> tuple[Path, str]:
        tree = self.layout.tree(job_id, attempt)
        if tree.exists():  # left by an earlier run of this very attempt: stale by definition
            self.layout.discard(tree)
        mirror.tidy(self.settings.branch_prefix, thorough=False, keep=self._tree_branches())
        branch = f"{self.settings.branch_prefix}{job_id}-{attempt}"
        staging = self.layout.staging(job_id, attempt)
        staging.mkdir(mode=0o700)
        meta = {"job_id": job_id, "attempt": attempt, "key": source.key, "mirror": mirror.path.name}
        meta |= {"branch": branch, "base_ref": base_ref, "commit": commit}
        meta |= {"created_at": self._clock.time(), "keep_until": None}
        self.layout.write_meta(staging, TREE_META, meta)
        os.rename(staging, tree)  # trees/<job>-<attempt> appears with its record in it
        path = tree / source.name
        try:
            mirror.add_worktree(path, branch, commit, what=f"checkout of {base_ref}")
        except BaseException:
            self.layout.discard(tree)
            try:
                mirror.tidy(self.settings.branch_prefix, keep=self._tree_branches())
            except PrepareError as exc:
                log.warning("could not tidy %s after a failed checkout: %s", source.key, exc)
            raise
        return path, branch

    # -- releasing and pruning -----------------------------------------------------------
    def release(self, job_id: int, attempt: int, *, failed: bool) -> None:
        """The attempt settled: remove its worktree now, or, when it ``failed`` and
        ``keep_failed_s`` is set, keep it that long for inspection (``prune`` removes it).

        File system work only, no git and no lock (it never waits on a fetch of the same
        repository): its branch and git's record of it go at the repository's next tidy.
        Nothing if the attempt has no worktree.
        """
        tree = self.layout.tree(job_id, attempt)
        if not tree.is_dir():
            return
        if failed and self.settings.keep_failed_s > 0:
            meta = read_json(tree / TREE_META)
            meta["keep_until"] = self._clock.time() + self.settings.keep_failed_s
            self.layout.write_meta(tree, TREE_META, meta)
            return
        self.layout.discard(tree)

    def prune(self, *, live: Collection[tuple[int, int]]) -> PruneReport:
        """Apply the retention policy now. ``live``: (job id, attempt) of every attempt whose
        worktree is in use (preparing, running, adopted). No default: an empty set would
        remove them all.

        Removes worktrees of attempts not live (a failed one once ``keep_failed_s`` is over;
        none made in the last ``YOUNG_TREE_S``), runs ``git worktree prune``, deletes the
        attempts' branches and runs ``git gc --auto``; deletes mirrors unused for
        ``max_age_s``, then the least recently used while all of them exceed ``max_bytes``:
        never a mirror with a worktree, never one whose lock is held (being prepared). Also
        clears crashed clones, stale git lock files and the lock files of deleted mirrors.
        """
        live_set, now = set(live), self._clock.time()
        self.layout.ensure()
        self.layout.empty_trash()
        removed: list[tuple[int, int]] = []
        kept: list[tuple[int, int]] = []
        for tree in self.layout.scan_trees():
            if tree.ident is None:  # .new-…: a tree being published, or one a crash left
                if now - _mtime(tree.path) > _STALE_STAGING_S:
                    self.layout.discard(tree.path)
                continue
            young = now - float(tree.meta.get("created_at") or 0.0) < YOUNG_TREE_S
            keep_until = tree.meta.get("keep_until")
            if tree.ident in live_set or young or (keep_until is not None and float(keep_until) > now):
                kept.append(tree.ident)
            else:
                self.layout.discard(tree.path)
                removed.append(tree.ident)
        for name in sorted({p.name.rsplit(".", 1)[0] for p in self.layout.tmp.iterdir()}):
            with self._lock(name) as lock:
                if lock.acquire(None):  # else that clone is under way
                    self._clear_tmp(name)
        mirrors, busy = self._scan_and_tidy()
        gone: list[str] = []
        freed = 0
        for record in self._doomed(mirrors, now):
            with self._lock(record.slug) as lock:
                # Again under the lock: a prepare may have made a worktree since the scan.
                if not lock.acquire(None) or any(
                    t.meta.get("mirror") == record.slug for t in self.layout.scan_trees() if t.ident
                ):
                    continue
                self.layout.discard(record.path)
                lock.unlink()
            gone.append(record.key)
            freed += record.size
            log.info("deleted the mirror of %s (%d bytes)", record.key, record.size)
        self._clear_orphan_locks()
        return PruneReport(tuple(removed), tuple(kept), tuple(gone), tuple(busy), freed)

    def _scan_and_tidy(self) -> tuple[list[MirrorRecord], list[str]]:
        """The mirrors not being prepared, each tidied, gc'd and measured under its lock;
        and the keys of the busy ones."""
        free: list[MirrorRecord] = []
        busy: list[str] = []
        for record in self.layout.scan_mirrors():
            with self._lock(record.slug) as lock:
                if not lock.acquire(None):
                    busy.append(record.key)
                    continue
                mirror = Mirror(record.path, self._git)
                mirror.clear_stale_locks(self._clock.time(), self.settings.git_timeout_s)
                try:
                    mirror.tidy(self.settings.branch_prefix, keep=self._tree_branches())
                    mirror.gc()
                except PrepareError as exc:  # a broken mirror is still measured and listed
                    log.warning("could not tidy the mirror of %s: %s", record.key, exc)
                size = disk_usage(record.path)  # agents' commits land in it too
                self.layout.update_mirror_meta(record.path, size_bytes=size)
                record.meta["size_bytes"] = size
            free.append(record)
        return free, busy

    def _doomed(self, mirrors: list[MirrorRecord], now: float) -> list[MirrorRecord]:
        """Mirrors to delete: those without worktrees unused for ``max_age_s``, then the
        least recently used ones while the total stays above ``max_bytes``."""
        unheld = [m for m in mirrors if not m.holders]
        doomed = [m for m in unheld if now - m.used_at > self.settings.max_age_s]
        total = sum(m.size for m in mirrors) - sum(m.size for m in doomed)
        for record in sorted((m for m in unheld if m not in doomed), key=lambda m: m.used_at):
            if total <= self.settings.max_bytes:
                break
            doomed.append(record)
            total -= record.size
        return doomed

    def mirrors(self) -> list[MirrorInfo]:
        """Every repository held, its size measured now, its times and worktrees. Takes no
        lock and runs no git."""
        return [
            MirrorInfo(
                key=record.key,
                url=str(record.meta.get("url", "")),
                path=record.path,
                size_bytes=disk_usage(record.path),
                fetched_at=record.meta.get("fetched_at"),
                used_at=record.meta.get("used_at"),
                holders=tuple(record.holders),
            )
            for record in self.layout.scan_mirrors()
        ]

    # -- helpers -------------------------------------------------------------------------
    def _tree_branches(self) -> set[str]:
        """The branch refs of every attempt whose worktree directory exists."""
        return {f"refs/heads/{t.meta['branch']}" for t in self.layout.scan_trees() if t.meta.get("branch")}

    def _lock(self, name: str) -> RepoLock:
        return RepoLock(self.layout.lock(name), clock=self._clock, sleep=self._sleep)

    def _clear_tmp(self, name: str) -> None:
        """Delete the clones of a repository a crashed process left (under its lock)."""
        for stale in self.layout.tmp_of(name):
            log.warning("removing an interrupted clone: %s", stale)
            self.layout.discard(stale)

    def _clear_orphan_locks(self) -> None:
        for name in self.layout.lock_slugs():
            if self.layout.mirror(name).exists() or self.layout.tmp_of(name):
                continue
            with self._lock(name) as lock:
                if lock.acquire(None) and not self.layout.mirror(name).exists():
                    lock.unlink()

    def _fresh(self, meta: Mapping[str, Any]) -> bool:
        fetched_at = meta.get("fetched_at")
        if not isinstance(fetched_at, int | float):
            return False
        age = self._clock.time() - fetched_at
        return 0 <= age < self.settings.fresh_s  # a clock stepped back counts as stale


def live_attempts(store: JobStore) -> set[tuple[int, int]]:
    """(job id, attempt) of every job preparing or running in the store, whoever runs it:
    the worktrees a ``prune`` started outside the supervisor (``workspaces prune``) keeps."""
    return {(job.id, job.attempt) for job in store.list(statuses=set(LIVE))}


def workspaces_summary(data_dir: Path) -> dict[str, Any]:
    """For ``health``: how many repositories are held, which have worktrees (and whose),
    their size as last measured. Reads a few small files: no lock, no git."""
    mirrors = Layout(DataDir.at(data_dir).workspaces).scan_mirrors()
    return {
        "repositories": len(mirrors),
        "worktrees": sum(len(m.holders) for m in mirrors),
        "bytes": sum(m.size for m in mirrors),
        "held": [{"repository": m.key, "jobs": [list(h) for h in m.holders]} for m in mirrors if m.holders],
    }


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
