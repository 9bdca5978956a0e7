"""Every way of naming a repository gives one concurrency key."""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidJobError
from supervisor.keys import repo_key
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
