"""Repository sources: what a job names as its repository, read once into a ``RepoSource``.

A source is any git URL (``https://``, ``http://``, ``ssh://``, ``git://``, scp-style
``git@host:owner/repo``, ``file://``), an absolute local path, or a GitHub shorthand
(``owner/repo``, ``github.com/owner/repo``, owner and repository apart, or a bare name that
the ``default_owner`` setting completes). Its ``key`` is the concurrency key (one running
job per repository, whatever form the submitter used) and the identity of the repository's
shared mirror (``supervisor.workspaces``). Its ``url`` is what git fetches; parsing that
URL again gives the same source, so it is the form to store with a job.

Credentials never sit in a source: an http(s) URL carrying user information is refused
(a token goes in the environment, see ``Settings.git_token_env``), so the URL can be shown,
logged and given to an agent.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

from supervisor.errors import InvalidJobError

__all__ = ["GITHUB", "RepoSource", "parse_ref", "parse_repo", "repo_key"]

GITHUB: Final = "github.com"
_NAME: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,99})$")
_HOST: Final = re.compile(r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")  # a scheme-less form needs a dotted host
_ANY_HOST: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
_SCP: Final = re.compile(r"^(?P<user>[\w.-]+)@(?P<host>[^:/]+):(?P<path>.+)$")  # git@github.com:o/r.git
_SCHEMES: Final = frozenset({"https", "http", "ssh", "git", "git+ssh", "ssh+git"})
_HTTP: Final = frozenset({"https", "http"})
# Links into a repository that people paste: https://github.com/o/r/tree/main/src, …/pull/3.
_GITHUB_LINKS: Final = frozenset({"tree", "blob", "pull", "issues", "commit", "commits", "releases"})
# A ref as ``git check-ref-format`` would take it, narrowed: no leading '-' (it would read as an
# option on git's command line), no '..', '@{', '//', control characters, space, ~^:?*[\.
_REF: Final = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9._/@+=,-]{1,200}$")


@dataclass(frozen=True, slots=True)
class RepoSource:
    """A repository as git reaches it, and the key it is known by.

    ``host``/``owner`` are None for a local repository (``owner`` also for a one-part path
    on a server); ``owner`` is ``group/subgroup`` on hosts that nest groups.
    """

    url: str
    """What git fetches: the URL or absolute path as submitted, links and GitHub shorthands
    made canonical (``https://github.com/Owner/Repo.git``). Never holds a password."""
    key: str
    """``github.com/owner/repo`` (lower-case, no ``.git``) for GitHub, ``host/…/repo`` for
    other hosts (``host:port/…`` when a port is given), ``file:///abs/path`` when local."""
    host: str | None
    owner: str | None
    name: str

    @property
    def local(self) -> bool:
        """Whether the repository is a directory on this machine (a path or ``file://``)."""
        return self.host is None


def parse_repo(source: str, owner: str | None = None, *, default_owner: str | None = None) -> RepoSource:
    """Read a repository source (see the module docstring for the forms).

    ``owner`` is the separate ``--owner``: ``source`` must then be a bare name.
    ``default_owner`` completes a bare name given without one. Raises ``InvalidJobError``
    naming the source for anything that names no repository, so a typo is caught at submit
    time rather than silently serialising nothing.
    """
    text = source.strip()
    source = _redact(source)  # what error messages may show
    if not text or not text.isprintable():
        raise InvalidJobError(f"cannot read a repository from {source!r}: use a URL or owner/repo")
    if owner is not None:
        if "/" in text or ":" in text:
            raise InvalidJobError(f"with --owner, --repo must be a bare repository name, not {source!r}")
        return _github(owner.strip(), text, source)
    if text.startswith("/") or text.lower().startswith("file:"):
        return _local(text, source)
    if "://" in text:
        return _url(text, source)
    scp = _SCP.match(text)
    if scp is not None:
        return _hosted(scp.group("host"), scp.group("path"), source, url=text.rstrip("/"), port=None)
    if "/" not in text and ":" not in text:  # a bare name
        if not default_owner:
            raise InvalidJobError(
                f"cannot read a repository from {source!r}: use a URL or owner/repo (or set default_owner)"
            )
        return _github(default_owner.strip(), text, source)
    first = text.split("/", 1)[0]
    if text.count("/") == 1 and ":" not in text and "." not in first:  # owner/repo
        owner_part, repo_part = text.split("/")
        return _github(owner_part, repo_part, source)
    if ":" in first or not _HOST.match(first):
        raise InvalidJobError(f"cannot read a repository from {source!r}: use a URL or owner/repo")
    return _hosted(first, text.split("/", 1)[1], source, url=None, port=None, scheme="https")


def repo_key(source: str, owner: str | None = None, *, default_owner: str | None = None) -> str:
    """The concurrency key of a repository source (``parse_repo(...).key``):
    ``github.com/owner/repo`` (lower-case, no ``.git``) for any of
    ``https://github.com/Owner/Repo(.git)``, ``git@github.com:Owner/Repo.git``,
    ``github.com/owner/repo``, ``owner/repo``, or ``source="repo"`` with ``owner="owner"``."""
    return parse_repo(source, owner, default_owner=default_owner).key


def parse_ref(ref: str) -> str:
    """A branch, tag or commit to check out, stripped; ``InvalidJobError`` for anything git
    would refuse as a ref name or could read as an option (a leading ``-``)."""
    text = ref.strip()
    last = text.rsplit("/", 1)[-1]
    if (
        not _REF.match(text)
        or text.endswith(("/", ".", ".lock"))
        or last.startswith(".")
        or any(part.startswith(".") for part in text.split("/"))
    ):
        raise InvalidJobError(f"invalid ref {ref!r:.80}: use a branch, tag or commit name")
    return text


def _github(owner: str, repo: str, source: str) -> RepoSource:
    name = repo.removesuffix(".git")
    if not _NAME.match(owner) or not _NAME.match(name):
        raise InvalidJobError(f"cannot read a repository from {source!r}")
    return RepoSource(
        url=f"https://{GITHUB}/{owner}/{name}.git",
        key=f"{GITHUB}/{owner.lower()}/{name.lower()}",
        host=GITHUB,
        owner=owner,
        name=name,
    )


def _url(text: str, source: str) -> RepoSource:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # a port that is not a number, an unbalanced IPv6 bracket
        raise InvalidJobError(f"cannot read a repository from {source!r}: malformed URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidJobError(f"cannot read a repository from {source!r}: unsupported scheme {scheme!r}")
    if scheme in _HTTP and (parts.username is not None or parts.password is not None):
        raise InvalidJobError(
            f"a repository URL must not carry credentials ({scheme}://…@{parts.hostname}): "
            "put the token in the environment (git_token_env)"
        )
    if parts.password is not None:
        raise InvalidJobError(f"a repository URL must not carry a password ({scheme}://…@{parts.hostname})")
    if parts.query or parts.fragment or not parts.hostname:
        raise InvalidJobError(f"cannot read a repository from {source!r}")
    # GitHub over http(s) gets the canonical https form (an http:// link, a link into the tree).
    url = None if scheme in _HTTP and parts.hostname == GITHUB else text.rstrip("/")
    return _hosted(parts.hostname, parts.path, source, url=url, port=port, scheme=scheme)


def _hosted(
    host: str, path: str, source: str, *, url: str | None, port: int | None, scheme: str = "ssh"
) -> RepoSource:
    host = host.lower()
    if not _ANY_HOST.match(host):
        raise InvalidJobError(f"cannot read a repository from {source!r}: bad host {host!r}")
    parts = [p for p in path.split("/") if p]
    if host == GITHUB:
        if parts[2:3] and parts[2] in _GITHUB_LINKS:  # a link into the repository
            parts, url = parts[:2], None
        if len(parts) != 2:
            raise InvalidJobError(f"cannot read owner/repo from {source!r}")
        github = _github(parts[0], parts[1], source)
        return github if url is None else RepoSource(url, github.key, github.host, github.owner, github.name)
    if "-" in parts:  # GitLab's links: https://gitlab.com/group/project/-/tree/main
        cut = parts.index("-")
        if cut != len(parts) - 1 and url is not None and scheme in _HTTP:
            url = url.split("/-/", 1)[0]
        parts = parts[:cut]
    if not parts or (url is None and len(parts) < 2):
        raise InvalidJobError(f"cannot read owner/repo from {source!r}")
    name = parts[-1].removesuffix(".git")
    if not all(_NAME.match(p) for p in parts[:-1]) or not _NAME.match(name):
        raise InvalidJobError(f"cannot read a repository from {source!r}")
    where = host if port is None else f"{host}:{port}"
    key = "/".join([where, *(p.lower() for p in parts[:-1]), name.lower()])
    if url is None:
        url = f"{scheme}://{where}/{'/'.join(parts)}"
    owner = "/".join(parts[:-1]) or None
    return RepoSource(url=url, key=key, host=host, owner=owner, name=name)


def _redact(source: str) -> str:
    """``source`` with any user information of a URL hidden (it may be a token)."""
    return re.sub(r"//[^/@\s]*@", "//…@", source)


def _local(text: str, source: str) -> RepoSource:
    if text.lower().startswith("file:"):
        try:
            parts = urlsplit(text)
        except ValueError:
            raise InvalidJobError(f"cannot read a repository from {source!r}: malformed URL") from None
        if not text.lower().startswith("file:///") and parts.netloc not in ("", "localhost"):
            raise InvalidJobError(f"a file:// URL must name a local path, not host {parts.netloc!r}")
        if parts.query or parts.fragment:
            raise InvalidJobError(f"cannot read a repository from {source!r}")
        path = unquote(parts.path)
        url = text.rstrip("/") if len(text.rstrip("/")) > len("file://") else text
    else:
        path, url = text, posixpath.normpath(text)
    if not path.startswith("/") or "\0" in path:
        raise InvalidJobError(f"a local repository must be an absolute path, not {source!r}")
    path = posixpath.normpath(path)
    if path == "/":
        raise InvalidJobError(f"cannot read a repository from {source!r}")
    name = posixpath.basename(path).removesuffix(".git") or posixpath.basename(path)
    return RepoSource(url=url, key=f"file://{path}", host=None, owner=None, name=name)
