"""Every way of naming a repository gives one concurrency key."""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidJobError
from supervisor.keys import parse_ref, parse_repo, repo_key
from supervisor.lifecycle import JobSpec

KEY = "github.com/octo-org/hello.world"


@pytest.mark.parametrize(
    ("source", "owner"),
    [
        ("https://github.com/Octo-Org/Hello.World", None),
        ("https://github.com/octo-org/hello.world.git", None),
        ("http://github.com/octo-org/hello.world/", None),
        ("https://github.com/octo-org/hello.world/tree/main/src", None),
        ("git@github.com:Octo-Org/Hello.World.git", None),
        ("ssh://git@github.com/octo-org/hello.world.git", None),
        ("github.com/octo-org/hello.world", None),
        ("octo-org/hello.world", None),
        ("  Octo-Org/Hello.World  ", None),
        ("hello.world", "Octo-Org"),
        ("Hello.World.git", "octo-org"),
    ],
)
def test_forms_normalise_to_one_key(source: str, owner: str | None) -> None:
    """URL, scp-style, owner/repo and separate owner + repo all give the same key."""
    assert repo_key(source, owner) == KEY


def test_other_hosts_keep_their_name() -> None:
    """A non-GitHub URL keeps its host in the key."""
    assert repo_key("https://gitlab.com/Group/Project.git") == "gitlab.com/group/project"


@pytest.mark.parametrize(
    ("source", "owner"),
    [
        ("", None),
        ("just-a-name", None),
        ("a/b/c", None),
        ("https://github.com/onlyowner", None),
        ("owner/repo", "owner"),
        ("own er/repo", None),
        ("https://github.com/o/r/x/y", None),
        ("../../etc", None),
    ],
)
def test_unparseable_sources_are_refused(source: str, owner: str | None) -> None:
    """A source that names no repository is a clear error."""
    with pytest.raises(InvalidJobError):
        repo_key(source, owner)


def test_job_spec_accepts_repo_fields() -> None:
    """A job spec's repo (and owner) fields become its concurrency key."""
    assert JobSpec.from_dict({"kind": "k", "repo": "Octo-Org/Hello.World"}).concurrency_key == KEY
    assert JobSpec.from_dict({"kind": "k", "repo": "hello.world", "owner": "octo-org"}).concurrency_key == KEY
    with pytest.raises(InvalidJobError, match="not both"):
        JobSpec.from_dict({"kind": "k", "repo": "a/b", "key": "x"})


# -- RepoSource: every form a job may name its repository by --------------------------------
GH = "github.com"
FORMS = [  # source, url git fetches, key, host, owner, name
    ("octo/app", "https://github.com/octo/app.git", "github.com/octo/app", GH, "octo", "app"),
    ("github.com/Octo/App", "https://github.com/Octo/App.git", "github.com/octo/app", GH, "Octo", "App"),
    ("http://github.com/octo/app/pull/3", "https://github.com/octo/app.git", "github.com/octo/app", GH,
     "octo", "app"),
    ("git@github.com:octo/app.git", "git@github.com:octo/app.git", "github.com/octo/app", GH, "octo", "app"),
    ("ssh://git@github.com:22/octo/app.git", "ssh://git@github.com:22/octo/app.git", "github.com/octo/app",
     GH, "octo", "app"),
    ("https://gitlab.com/group/sub/proj.git", "https://gitlab.com/group/sub/proj.git",
     "gitlab.com/group/sub/proj", "gitlab.com", "group/sub", "proj"),
    ("https://gitlab.com/group/proj/-/tree/main", "https://gitlab.com/group/proj", "gitlab.com/group/proj",
     "gitlab.com", "group", "proj"),
    ("gitlab.com/group/proj", "https://gitlab.com/group/proj", "gitlab.com/group/proj", "gitlab.com",
     "group", "proj"),
    ("ssh://git@git.internal:2222/team/tool.git", "ssh://git@git.internal:2222/team/tool.git",
     "git.internal:2222/team/tool", "git.internal", "team", "tool"),
    ("git@git.internal:team/tool", "git@git.internal:team/tool", "git.internal/team/tool", "git.internal",
     "team", "tool"),
    ("http://127.0.0.1:8080/repo.git", "http://127.0.0.1:8080/repo.git", "127.0.0.1:8080/repo",
     "127.0.0.1", None, "repo"),
    ("git://example.org/pub/x.git", "git://example.org/pub/x.git", "example.org/pub/x", "example.org",
     "pub", "x"),
    ("/srv/git/Tool.git", "/srv/git/Tool.git", "file:///srv/git/Tool.git", None, None, "Tool"),
    ("/srv/git/my tool/", "/srv/git/my tool", "file:///srv/git/my tool", None, None, "my tool"),
    ("file:///srv/git/tool", "file:///srv/git/tool", "file:///srv/git/tool", None, None, "tool"),
    ("file://localhost/srv/./git/tool/", "file://localhost/srv/./git/tool", "file:///srv/git/tool", None,
     None, "tool"),
]  # fmt: skip


@pytest.mark.parametrize(("source", "url", "key", "host", "owner", "name"), FORMS)
def test_parse_repo_reads_every_form(
    source: str, url: str, key: str, host: str | None, owner: str | None, name: str
) -> None:
    """Each form gives the URL git fetches, the key, host, owner and name."""
    parsed = parse_repo(source)
    assert (parsed.url, parsed.key, parsed.host, parsed.owner, parsed.name) == (url, key, host, owner, name)
    assert parse_repo(parsed.url) == parsed  # the URL is the form to store: it reads back the same
    assert parsed.local == (host is None)


def test_key_of_github_forms_is_repo_key() -> None:
    """parse_repo's key is exactly repo_key's for the GitHub forms (the concurrency key)."""
    for source in (
        "octo-org/hello.world",
        "https://github.com/Octo-Org/Hello.World",
        "git@github.com:o/r.git",
    ):
        assert parse_repo(source).key == repo_key(source)


def test_default_owner_completes_a_bare_name() -> None:
    """A bare name takes default_owner; an explicit owner wins; without either it is refused."""
    assert parse_repo("notes", default_owner="octo").url == "https://github.com/octo/notes.git"
    assert parse_repo("notes", "other", default_owner="octo").key == "github.com/other/notes"
    assert repo_key("notes", default_owner="Octo") == "github.com/octo/notes"
    with pytest.raises(InvalidJobError, match="default_owner"):
        parse_repo("notes")


@pytest.mark.parametrize(
    "source",
    ["https://x-access-token:ghp_SECRET@github.com/o/r", "https://ghp_SECRET@github.com/o/r.git",
     "http://user:ghp_SECRET@host.example/o/r", "ssh://git:ghp_SECRET@host.example/o/r",
     "https://user:ghp_SECRET@host.example:notaport/o/r"],
)  # fmt: skip
def test_credentials_in_a_url_are_refused_and_not_echoed(source: str) -> None:
    """A URL carrying a password or an https user is refused, and the error does not repeat it."""
    with pytest.raises(InvalidJobError) as refused:
        parse_repo(source)
    assert "ghp_SECRET" not in str(refused.value)


@pytest.mark.parametrize(
    "source",
    ["relative/path/x", "./repo", "file://otherhost/srv/x", "/", "ftp://host.example/o/r", "ext::sh -c id",
     "-oProxyCommand=x", "https://host.example/", "https://github.com/o/r?x=1", "git@host:"],
)  # fmt: skip
def test_sources_that_are_not_repositories_are_refused(source: str) -> None:
    """Relative paths, other hosts' file URLs, foreign schemes and option-like text are refused."""
    with pytest.raises(InvalidJobError):
        parse_repo(source)


@pytest.mark.parametrize(
    "ref", ["main", "feature/x-1", "v1.2.3", "refs/heads/main", "a" * 40, "abc1234", "release@2"]
)
def test_parse_ref_accepts_branch_tag_and_commit_names(ref: str) -> None:
    """Ordinary branch, tag and commit names pass unchanged."""
    assert parse_ref(f" {ref} ") == ref


@pytest.mark.parametrize(
    "ref", ["", "-b", "--upload-pack=x", "a..b", "a b", "x~1", "x^", "a:b", "HEAD@{1}", "x.lock", ".hidden",
            "dir/.x", "x/", "x//y", "new\nline"],
)  # fmt: skip
def test_parse_ref_refuses_what_git_would_misread(ref: str) -> None:
    """Option-like, revision-expression and malformed ref names are refused."""
    with pytest.raises(InvalidJobError):
        parse_ref(ref)
