"""``agent-supervisor workspaces [--json]`` (the repositories held in the data dir) and
``workspaces prune [--json]`` (the retention policy, now).

``--json`` output (stable: fields are only ever added): ``workspaces`` prints an array of
``{repository, url, path, size_bytes, fetched_at, used_at, jobs: [{job_id, attempt}]}``
(times ISO 8601 UTC); ``workspaces prune`` prints ``{trees_removed, trees_kept,
mirrors_removed, busy, bytes_freed}`` (trees as ``[job_id, attempt]``).

``prune`` keeps the worktree of every job the store has preparing or running (so it needs
the store, and fails rather than guess when the store cannot be reached), of every failed
attempt within ``workspace_keep_failed_s``, and of every attempt begun in the last minute.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, TextIO

from bridge.views import iso, mirror_json, prune_report_json

if TYPE_CHECKING:  # the parser imports this module for every command: the engine loads in run()
    from bridge.service import JobService
    from supervisor.workspaces import MirrorInfo, PruneReport

__all__ = ["add_parser", "run"]

_MIB = 1 << 20


def add_parser(sub: Any) -> None:  # argparse's _SubParsersAction is private: Any at this seam
    """Register ``workspaces`` and ``workspaces prune`` on the CLI's subparsers."""
    ws = sub.add_parser("workspaces", help="repository mirrors and worktrees held in the data dir")
    ws.add_argument("--json", action="store_true")
    actions = ws.add_subparsers(dest="workspaces_action", metavar="ACTION")
    prune = actions.add_parser("prune", help="delete finished worktrees and unused mirrors now")
    # SUPPRESS: without a default here, "workspaces --json prune" keeps the parent's value.
    prune.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def run(args: argparse.Namespace, service: JobService, out: TextIO) -> int:
    """The ``workspaces`` handler (``(args, service, out) -> exit code``, as ``commands``)."""
    if getattr(args, "workspaces_action", None) == "prune":
        report = service.prune_workspaces()
        if args.json:
            _dump(prune_report_json(report), out)
        else:
            out.write(_prune_text(report))
        return 0
    mirrors = service.workspaces()
    if args.json:
        _dump([mirror_json(m) for m in mirrors], out)
    else:
        out.write(_mirrors_text(mirrors))
    return 0


def _mirrors_text(mirrors: list[MirrorInfo]) -> str:
    if not mirrors:
        return "no repositories held\n"
    lines = [f"{'SIZE':>10}  {'FETCHED':<19}  {'USED':<19}  {'JOBS':<12} REPOSITORY\n"]
    for m in mirrors:
        jobs = ", ".join(f"{j}-{a}" for j, a in m.holders) or "-"
        lines.append(
            f"{m.size_bytes / _MIB:>6.1f} MiB  {_when(m.fetched_at):<19}  {_when(m.used_at):<19}  "
            f"{jobs:<12} {m.key}\n"
        )
    return "".join(lines)


def _prune_text(report: PruneReport) -> str:
    lines = [
        f"worktrees removed: {len(report.trees_removed)}, kept: {len(report.trees_kept)}",
        f"mirrors removed: {len(report.mirrors_removed)} ({report.bytes_freed / _MIB:.1f} MiB freed)",
    ]
    lines += [f"  removed {key}" for key in report.mirrors_removed]
    lines += [f"  busy (being prepared), skipped: {key}" for key in report.busy]
    return "".join(line + "\n" for line in lines)


def _when(ts: float | None) -> str:
    text = iso(ts)
    return text[:19].replace("T", " ") if text else "-"


def _dump(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")
