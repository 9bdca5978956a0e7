"""The command line's text output: the job table, one job with its events, the health view.

``--json`` output is not here: it is bridge/views.py's, shared with the other front ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final

from bridge.service import JobDetail
from bridge.views import iso, job_json
from supervisor.health import HealthReport
from supervisor.lifecycle import Job

__all__ = ["health_text", "job_table", "show_text"]

_SHOW_FIELDS: Final = (
    "id",
    "status",
    "kind",
    "command",
    "attempt",
    "max_attempts",
    "priority",
    "concurrency_key",
    "timeout_s",
    "pid",
    "exit_code",
    "signal",
    "error_kind",
    "error",
    "result",
    "progress",
    "created_at",
    "started_at",
    "finished_at",
    "run_after",
)
_TAIL_LINES: Final = 20
_MIB: Final = 1 << 20


def job_table(jobs: Iterable[Job]) -> str:
    """``list``: a header and one line per job."""
    lines = [f"{'ID':>6}  {'STATUS':<13} {'ATTEMPT':>7}  {'PRI':>4}  {'KIND / COMMAND':<34} ERROR\n"]
    for j in jobs:
        what = j.kind or " ".join(j.command or ())
        lines.append(
            f"{j.id:>6}  {j.status.value:<13} {j.attempts_used:>3}/{j.max_attempts:<3}  "
            f"{j.priority:>4}  {what[:34]:<34} {(j.error or '')[:60]}\n"
        )
    return "".join(lines)


def show_text(detail: JobDetail) -> str:
    """``show``: the job's set fields, its events, and the end of its output."""
    data = job_json(detail.job)
    lines = []
    for key in _SHOW_FIELDS:
        value = data[key]
        if value is not None:
            text = json.dumps(value) if isinstance(value, dict | list) else value
            lines.append(f"{key + ':':<17} {text}\n")
    lines.append("events:\n")
    for e in detail.events:
        src = e.from_status.value if e.from_status else "-"
        lines.append(
            f"  {iso(e.at)}  {src:>13} → {e.to_status.value:<13} {e.decided_by.value:<12} {e.reason}\n"
        )
    if detail.job.output_tail:
        lines.append("output tail:\n")
        lines += [f"  | {line}\n" for line in detail.job.output_tail.splitlines()[-_TAIL_LINES:]]
    return "".join(lines)


def health_text(report: HealthReport) -> str:
    """``health``: counts, the live supervisor's admission, memory and agents, then alerts."""
    lines = [
        f"running {report.running} (here {report.running_here}/{report.max_concurrent}, "
        f"{report.utilization:.0%})  pending {report.pending}  waiting_retry {report.waiting_retry}  "
        f"failed {report.failed}  completed {report.completed}",
    ]
    if report.supervisor_running:
        adm = report.admission
        lines.append(f"admission {adm.get('state')}" + (f": {adm['reason']}" if adm.get("reason") else ""))
        mem = report.memory
        if mem.get("total_bytes"):
            lines.append(
                f"memory {mem['available_bytes'] // _MIB} MiB available of {mem['total_bytes'] // _MIB} MiB, "
                f"{mem['reserve_bytes'] // _MIB} MiB reserved; limits by {report.limits_enforcement}"
            )
        if report.recommended_concurrency:
            lines.append(f"recommended concurrency {report.recommended_concurrency}")
        for agent in report.agents:
            lines.append(
                f"  job {agent['job_id']:>5} {agent.get('kind') or 'command':<12} "
                f"rss {agent.get('rss_bytes', 0) // _MIB:>6} MiB  cpu {agent.get('cpu_percent', 0):>5.1f}%"
                f"  processes {agent.get('processes', 0)}"
            )
    else:
        lines.append("no supervisor is running on this data dir")
    if report.outbox_depth:
        lines.append(f"outbox: {report.outbox_depth} outcomes not yet in the store")
    lines += [f"ALERT {a.kind}: {a.message}" for a in report.alerts] or ["no alerts"]
    return "".join(line + "\n" for line in lines)
