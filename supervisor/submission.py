"""What a local submission becomes before it is written: checked against the kinds registry,
its defaults filled in (the kind's limits, then the settings'), its repository made canonical.

Used by ``submit`` (the service), the supervisor's own enqueues and its schedules. Imports
no pydantic: a one-off ``submit`` may run on ``settings_cache.CachedSettings``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from supervisor.errors import InvalidJobError
from supervisor.job import JobSpec

if TYPE_CHECKING:
    from supervisor.settings import KindConfig, Settings

__all__ = ["kind_config", "resolve_spec"]


def kind_config(settings: Settings, kind: str | None) -> KindConfig | None:
    """The registered kind (None for a raw command); ``InvalidJobError`` if unregistered."""
    if kind is None:
        return None
    try:
        return settings.kinds[kind]
    except KeyError:
        known = ", ".join(sorted(settings.kinds)) or "none"
        raise InvalidJobError(f"unknown kind {kind!r} (registered kinds: {known})") from None


def resolve_spec(spec: JobSpec, settings: Settings) -> JobSpec:
    """Check a local submission against the kinds registry and fill in its defaults, so a
    mistake is reported at submit time and ``show`` displays the limits that will apply.
    The repository, if any, becomes the canonical source git will fetch (a bare name is
    completed by ``default_owner``), and its key the concurrency key unless one was given."""
    kind = kind_config(settings, spec.kind)
    timeout = spec.timeout_s or (kind.timeout_s if kind else None) or settings.default_timeout_s
    idle = spec.idle_timeout_s or (kind.idle_timeout_s if kind else None)
    stuck = spec.stuck_after_s or (kind.stuck_after_s if kind else None)
    spec = replace(spec, timeout_s=timeout, idle_timeout_s=idle, stuck_after_s=stuck)
    if spec.repo is None:
        return spec
    from supervisor.keys import parse_ref, parse_repo, repo_key

    source = parse_repo(spec.repo, default_owner=settings.default_owner)
    derived = _try_key(spec.repo, repo_key)
    key = source.key if spec.concurrency_key in (None, derived) else spec.concurrency_key
    ref = parse_ref(spec.ref) if spec.ref is not None else None
    return replace(spec, repo=source.url, ref=ref, concurrency_key=key)


def _try_key(repo: str, repo_key: Callable[[str], str]) -> str | None:
    try:
        return repo_key(repo)
    except InvalidJobError:
        return None
