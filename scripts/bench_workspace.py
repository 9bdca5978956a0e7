"""Preparing a job's workspace on a ~50 MB repository: the first time (clone the mirror, then
a worktree) against the second time (fetch into the mirror, then a worktree), issue 12.

The repository is generated locally with ``git fast-import``: ``--commits`` commits, each
rewriting one of ``--files`` files with random (incompressible) bytes, so that its history
is ``--size-mb`` MB while its checked-out tree is ``size / commits * files`` (~3.4 MB by
default), like a real project whose history outweighs its tree. It is reached over
``file://``: no network, so the first prepare is bounded by git's own pack work and the
disk, and a real remote only makes the first slower and the ratio smaller.

Each run uses a fresh data dir and times three prepares: ``first`` (clone + worktree),
``second`` (fetch + worktree, ``workspace_fresh_s = 0``: the case the goal is about) and
``fresh`` (within the freshness window: worktree only). Goal: second <= 10 % of first.

    python scripts/bench_workspace.py [--size-mb 50] [--commits 300] [--files 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import bench_common as bc  # puts the repo root on sys.path

from supervisor.keys import parse_repo
from supervisor.workspaces import Workspaces, WorkspaceSettings


def make_repository(path: Path, *, size_mb: float, commits: int, files: int) -> tuple[int, int]:
    """A repository of ``commits`` commits (random blobs) at ``path``; (pack bytes, tree bytes)."""
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(path)], check=True)
    blob_size = int(size_mb * 1e6 / commits)
    proc = subprocess.Popen(["git", "--git-dir", str(path), "fast-import", "--quiet"], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    write = proc.stdin.write
    when = 1_700_000_000
    for n in range(commits):
        data = os.urandom(blob_size)
        message = f"commit {n}".encode()
        write(b"commit refs/heads/main\n")
        write(f"committer Bench <bench@example.invalid> {when + n} +0000\n".encode())
        write(b"data %d\n%s\n" % (len(message), message))
        write(b"M 644 inline file-%03d.bin\ndata %d\n" % (n % files, len(data)))
        write(data + b"\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("git fast-import failed")
    pack = sum(p.stat().st_size for p in (path / "objects" / "pack").glob("*.pack"))
    return pack, blob_size * min(files, commits)


def one_run(source_path: Path, root: Path) -> dict[str, float]:
    source = parse_repo(f"file://{source_path}")
    fetching = Workspaces(root, settings=WorkspaceSettings(fresh_s=0))
    fresh = Workspaces(root, settings=WorkspaceSettings(fresh_s=3600))
    times = {}
    for name, spaces, job in (("first", fetching, 1), ("second", fetching, 2), ("fresh", fresh, 3)):
        started = time.perf_counter()
        workspace = spaces.prepare(source, None, job_id=job, attempt=1)
        times[name] = time.perf_counter() - started
        assert workspace.cloned == (name == "first") and workspace.fetched == (name == "second")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-workspace-"))
    try:
        source = scratch / "source.git"
        pack, tree = make_repository(source, size_mb=args.size_mb, commits=args.commits, files=args.files)
        print(f"repository: {pack / 1e6:.1f} MB packed, {args.commits} commits, tree {tree / 1e6:.1f} MB")
        print(bc.machine_line())
        runs = []
        for n in range(args.runs):
            root = scratch / f"data-{n}" / "workspaces"
            runs.append(one_run(source, root))
            shutil.rmtree(root.parent)
        medians = {name: bc.median([r[name] for r in runs]) for name in ("first", "second", "fresh")}
        rows = [
            (name, medians[name], min(r[name] for r in runs), max(r[name] for r in runs),
             f"{100 * medians[name] / medians['first']:.1f} %")
            for name in ("first", "second", "fresh")
        ]  # fmt: skip
        print(bc.table(["prepare", "median s", "min s", "max s", "of first"], rows))
        ratio = medians["second"] / medians["first"]
        print(f"second / first = {100 * ratio:.1f} % (goal <= 10 %): {'ok' if ratio <= 0.10 else 'MISSED'}")
        bc.emit_json(
            {
                "benchmark": "workspace_prepare",
                "repo_pack_bytes": pack,
                "repo_tree_bytes": tree,
                "commits": args.commits,
                "runs": args.runs,
                "first_s": bc.rnd(medians["first"]),
                "second_s": bc.rnd(medians["second"]),
                "fresh_s": bc.rnd(medians["fresh"]),
                "second_over_first": bc.rnd(ratio, 4),
            }
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
