"""Concurrency keys from workspace sources: one running job per repository, whatever form the
submitter used to name it (a URL, ``owner/repo``, or owner and repo apart)."""

from __future__ import annotations

import re
from typing import Final

from supervisor.errors import InvalidJobError

__all__ = ["repo_key"]

_NAME: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,99})$")
_HOST: Final = re.compile(r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_SCP: Final = re.compile(r"^[\w.-]+@(?P<host>[^:/]+):(?P<path>.+)$")  # git@github.com:owner/repo.git
_URL: Final = re.compile(r"^(?:[a-z+]+://)?(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?/(?P<path>.+)$")


def repo_key(source: str, owner: str | None = None) -> str:
    """``github.com/owner/repo`` (lower-case, no ``.git``) for any of:
    ``https://github.com/Owner/Repo(.git)``, ``git@github.com:Owner/Repo.git``,
    ``github.com/owner/repo``, ``owner/repo``, or ``source="repo"`` with ``owner="owner"``.

    Other hosts keep their name (``gitlab.com/group/repo``). Raises ``InvalidJobError`` for
    anything else, so a typo is caught at submit time rather than silently serialising
    nothing.
    """
    text = source.strip()
    if owner is not None:
        if "/" in text or ":" in text:
            raise InvalidJobError(f"with --owner, --repo must be a bare repository name, not {source!r}")
        return _key("github.com", owner.strip(), text, source)
    match = _SCP.match(text) if "://" not in text else None
    if match is None and text.count("/") == 1 and ":" not in text and "." not in text.split("/")[0]:
        owner_part, repo_part = text.split("/")
        return _key("github.com", owner_part, repo_part, source)
    match = match or _URL.match(text)
    if match is None:
        raise InvalidJobError(f"cannot read a repository from {source!r}: use a URL or owner/repo")
    parts = [p for p in match.group("path").split("/") if p]
    if parts[2:3] in (["tree"], ["blob"], ["pull"], ["issues"]):  # a link into the repository
        parts = parts[:2]
    if len(parts) != 2:
        raise InvalidJobError(f"cannot read owner/repo from {source!r}")
    return _key(match.group("host"), parts[0], parts[1], source)


def _key(host: str, owner: str, repo: str, source: str) -> str:
    repo = repo.removesuffix(".git")
    if not _HOST.match(host) or not _NAME.match(owner) or not _NAME.match(repo):
        raise InvalidJobError(f"cannot read a repository from {source!r}")
    return f"{host.lower()}/{owner.lower()}/{repo.lower()}"
