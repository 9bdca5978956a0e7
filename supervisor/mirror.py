"""One repository's shared mirror: the git commands ``supervisor.workspaces`` runs on it.

The mirror is a bare repository that fetches ``+refs/heads/*:refs/remotes/origin/*`` and
``+refs/tags/*:refs/tags/*``, not a ``git clone --mirror``: a mirror's ``+refs/*:refs/*``
refspec with ``--prune`` would delete the agents' own branches in ``refs/heads`` (they are
not on the server), and would fetch every ``refs/pull/*`` of a GitHub repository. Branches
land in ``refs/remotes/origin/`` as in a normal clone, so an agent's ``origin/main`` means
what it expects; ``remote.origin.url`` is set (it never holds a credential:
``supervisor.keys`` refuses such URLs) so that ``git push origin`` and ``gh`` work in a
worktree; ``refs/remotes/origin/HEAD`` names the remote's default branch.

Every method must be called under the repository's lock (``supervisor.repolock``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Collection
from pathlib import Path
from typing import Final

from supervisor.gitcmd import Credential, Git
from supervisor.keys import RepoSource

__all__ = ["FETCH_REFSPECS", "Mirror"]

log = logging.getLogger("agent_supervisor.workspaces")

FETCH_REFSPECS: Final = ("+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
_ORIGIN: Final = "refs/remotes/origin/"
_SHORT_SHA: Final = re.compile(r"^[0-9a-f]{4,64}$")
_SYMREF: Final = re.compile(r"^ref: refs/heads/(\S+)\tHEAD$", re.MULTILINE)  # git-ls-remote(1) --symref


class Mirror:
    """A bare repository at ``path``, driven through ``git``."""

    def __init__(self, path: Path, git: Git) -> None:
        self.path = path
        self._git = git

    def init(self, source: RepoSource) -> None:
        """Create the empty repository (``--template=``: no sample hooks, no description)."""
        self._git.run("init", "--quiet", "--bare", "--template=", "--", str(self.path))
        self._git.run("config", "remote.origin.url", source.url, git_dir=self.path)
        self._git.run("config", "remote.origin.fetch", FETCH_REFSPECS[0], git_dir=self.path)

    def fetch(self, source: RepoSource, credential: Credential | None, *, what: str | None = None) -> None:
        """Fetch every branch and tag, pruning the deleted ones."""
        self._git.run(
            "fetch", "--quiet", "--prune", "--no-tags", "--", source.url, *FETCH_REFSPECS,
            git_dir=self.path, credential=credential, what=what or f"fetch of {source.key}",
        )  # fmt: skip

    def learn_default_branch(self, source: RepoSource, credential: Credential | None, *, what: str) -> None:
        """Point ``origin/HEAD`` at the remote's default branch: one more round trip
        (``git fetch`` does not update ``origin/HEAD`` before git 2.48), so done at the
        clone and again only when the branch it names is gone (renamed upstream)."""
        listed = self._git.run(
            "ls-remote",
            "--symref",
            "--",
            source.url,
            "HEAD",
            git_dir=self.path,
            credential=credential,
            what=what,
        )
        match = _SYMREF.search(listed.stdout)
        if match is not None:
            self._git.run("symbolic-ref", f"{_ORIGIN}HEAD", f"{_ORIGIN}{match.group(1)}", git_dir=self.path)

    def fetch_commit(self, source: RepoSource, sha: str, credential: Credential | None) -> None:
        """Fetch one commit that no branch or tag reaches (servers may refuse: then git's line)."""
        self._git.run(
            "fetch", "--quiet", "--", source.url, sha,
            git_dir=self.path, credential=credential, what=f"fetch of {sha} from {source.key}",
        )  # fmt: skip

    def lookup(self, ref: str | None) -> tuple[str, str] | None:
        """(commit, name) of ``ref``: a branch, then a tag, then a commit id; the default
        branch for None. One ``cat-file --batch-check`` for all the candidates."""
        if ref is None:
            target = self._git.run(
                "symbolic-ref", "--quiet", f"{_ORIGIN}HEAD", git_dir=self.path, check=False
            )
            branch = target.stdout.strip().removeprefix(_ORIGIN)
            if not target.ok or not branch:
                return None
            candidates = [(f"{_ORIGIN}{branch}", branch)]
        elif ref.startswith("refs/heads/"):
            candidates = [(_ORIGIN + ref.removeprefix("refs/heads/"), ref.removeprefix("refs/heads/"))]
        elif ref.startswith("refs/tags/"):
            candidates = [(ref, ref.removeprefix("refs/tags/"))]
        else:
            candidates = [(_ORIGIN + ref, ref), (f"refs/tags/{ref}", ref)]
            if _SHORT_SHA.match(ref):  # never a bare name: it could match an agent's branch
                candidates.append((ref, ref))
        query = "".join(f"{name}^{{commit}}\n" for name, _ in candidates).encode()
        answer = self._git.run("cat-file", "--batch-check", git_dir=self.path, input=query)
        # One line per query: "<sha> commit <size>", or "<name> missing" / "… ambiguous".
        for line, (_, shown) in zip(answer.stdout.splitlines(), candidates, strict=False):
            sha, _, kind = line.partition(" ")
            if kind.startswith("commit ") and _SHORT_SHA.match(sha):
                return sha, shown
        return None

    def add_worktree(self, path: Path, branch: str, commit: str, *, what: str) -> None:
        """A worktree at ``path`` on a new branch at ``commit``. A commit id, not
        ``origin/<branch>``: no upstream tracking is set up, so nothing is written to the
        shared config per attempt (git-branch(1), ``--track``)."""
        self._git.run(
            "worktree", "add", "--quiet", "-b", branch, "--", str(path), commit, git_dir=self.path, what=what
        )

    def tidy(self, branch_prefix: str, *, thorough: bool = True, keep: Collection[str] = ()) -> None:
        """Forget worktrees whose directory is gone (``git worktree prune``) and delete the
        attempts' branches that no worktree has checked out, except the refs in ``keep``
        (attempts whose worktree still exists: an agent may have switched branches). Only
        branches named exactly ``<prefix><job>-<attempt>``: an agent's others are its own.

        Not ``thorough``: nothing at all unless a worktree directory is gone, and then only
        the branches of those worktrees (two git commands instead of four, for ``prepare``;
        ``prune`` is thorough and also finds branches a crash left behind).
        """
        mine = re.compile(rf"refs/heads/{re.escape(branch_prefix)}\d+-\d+")
        gone = self._gone_worktrees()
        if not gone and not thorough:
            return
        self._git.run("worktree", "prune", git_dir=self.path)
        if thorough:
            listed = self._git.run("worktree", "list", "--porcelain", git_dir=self.path)
            checked_out = {line.removeprefix("branch ") for line in listed.stdout.splitlines()}
            refs = self._git.run(
                "for-each-ref", "--format=%(refname)", f"refs/heads/{branch_prefix}*", git_dir=self.path
            )
            kept = checked_out | set(keep)
            orphans = [r for r in refs.stdout.split() if mine.fullmatch(r) and r not in kept]
        else:
            orphans = [r for r in gone if mine.fullmatch(r) and r not in keep]
        if orphans:
            # git branch -D refuses a branch checked out in a worktree: a second safety net.
            names = [r.removeprefix("refs/heads/") for r in orphans]
            result = self._git.run("branch", "-D", "--", *names, git_dir=self.path, check=False)
            if not result.ok:
                log.warning(
                    "could not delete branches in %s: %s", self.path.name, result.stderr.strip()[:200]
                )

    def _gone_worktrees(self) -> list[str]:
        """The branch refs of worktrees git still records whose directory is gone: git's
        ``worktrees/<id>/gitdir`` names the worktree's ``.git`` file, and ``HEAD`` its
        branch (gitrepository-layout(5)); "" for one on a detached HEAD."""
        gone = []
        for gitdir in (self.path / "worktrees").glob("*/gitdir"):
            try:
                if Path(gitdir.read_text().strip()).exists():
                    continue
                head = (gitdir.parent / "HEAD").read_text().strip()
            except OSError:
                head = ""
            gone.append(head.removeprefix("ref: "))
        return gone

    def gc(self) -> None:
        """``git gc --auto`` in the foreground (it is off for every other call, see gitcmd):
        packs the many small packs of fetches, drops objects of deleted attempt branches once
        git's prune expiry passes."""
        self._git.run(
            "-c", "gc.auto=6700", "-c", "gc.autoDetach=false", "gc", "--auto", "--quiet", git_dir=self.path
        )

    def clear_stale_locks(self, now: float, git_timeout_s: float) -> None:
        """Delete lock files git left in the mirror's own ref space when it was killed (a
        ``packed-refs.lock`` makes every later fetch fail with "File exists"). Stale means
        older than this boot, or than any git command of ours may run (``git_timeout_s``);
        agents' locks (``worktrees/``, branch refs) are theirs and left alone."""
        older_than = max(_boot_time(), now - git_timeout_s - 60.0)
        candidates = list(self.path.glob("*.lock"))
        for space in ("refs/remotes", "refs/tags"):
            candidates += (self.path / space).rglob("*.lock")
        for lock in candidates:
            with contextlib.suppress(FileNotFoundError):
                if lock.stat().st_mtime < older_than:
                    lock.unlink()
                    log.warning("removed git's stale lock file %s", lock)


def _boot_time() -> float:
    import psutil  # only to know which lock files predate this boot

    try:
        return float(psutil.boot_time())
    except (OSError, psutil.Error):
        return 0.0
