"""The command line's text output: the job table, one job with its events, the health view,
and the small words they share (``1 job``, ``3 jobs``; how a progress object reads).

``--json`` output is not here: it is bridge/views.py's, shared with the other front ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from bridge.views import iso, job_json
from supervisor.job import LIVE, Job

if TYPE_CHECKING:
    from bridge.service import JobDetail
    from supervisor.health import HealthReport

__all__ = ["count", "health_text", "job_table", "progress_text", "show_text"]

_SHOW_FIELDS: Final = (
    "id",
    "status",
    "kind",
    "command",
    "attempt",
    "max_attempts",
    "priority",
    "concurrency_key",
    "dedup_key",
    "unique_key",
    "repo",
    "ref",
    "timeout_s",
    "idle_timeout_s",
    "pid",
    "exit_code",
    "signal",
    "error_kind",
    "error",
    "result",
    "created_at",
    "run_after",
    "started_at",
    "timeout_at",
    "finished_at",
)
_TAIL_LINES: Final = 20
_MIB: Final = 1 << 20
_IRREGULAR: Final = {"process": "processes", "entry": "entries"}


def count(n: int, noun: str) -> str:
    """``1 job``, ``0 jobs``, ``3 processes``: a number and its noun, in plain English."""
    return f"{n} {noun if n == 1 else _IRREGULAR.get(noun, noun + 's')}"


def progress_text(progress: Any) -> str:
    """An agent's progress in a few words: ``step 3 of 5`` for the common ``{step, of}`` /
    ``{done, total}`` shapes and a ``message`` if any, else the JSON itself."""
    if isinstance(progress, Mapping):
        done = next((progress[k] for k in ("step", "done", "current") if k in progress), None)
        total = next((progress[k] for k in ("of", "total") if k in progress), None)
        words = []
        if isinstance(done, int | float) and isinstance(total, int | float):
            words.append(f"{done:g} of {total:g}")
        elif isinstance(progress.get("percent"), int | float):
            words.append(f"{progress['percent']:g} %")
        if isinstance(progress.get("message"), str):
            words.append(progress["message"])
        if words:
            return ", ".join(words)[:120]
    return json.dumps(progress, separators=(", ", ": "))[:120]


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
    """``show``: the job's set fields, its progress, payload, events with their facts, and the
    end of its output."""
    job = detail.job
    data = job_json(job)
    lines = []
    for key in _SHOW_FIELDS:
        value = data.get(key)
        if value is not None:
            text = json.dumps(value) if isinstance(value, dict | list) else value
            lines.append(f"{key + ':':<17} {text}\n")
    if job.progress is not None:
        final = "" if job.status in LIVE else "  (last reported; the job has ended)"
        lines.append(f"{'progress:':<17} {progress_text(job.progress)}{final}\n")
    payload = json.dumps(job.payload, indent=2, ensure_ascii=False)
    lines.append("payload:" + (f" {payload}\n" if "\n" not in payload else "\n" + _indent(payload)))
    lines.append(f"events ({len(detail.events)}):\n")
    for e in detail.events:
        src = e.from_status.value if e.from_status else "-"
        lines.append(
            f"  {iso(e.at)}  {src:>13} → {e.to_status.value:<13} {e.decided_by.value:<12} {e.reason}\n"
        )
        facts = {k: v for k, v in e.facts.items() if v is not None and v != [] and v is not False}
        if e.worker:
            facts = {"worker": e.worker, **facts}
        if facts:
            lines.append("      " + "  ".join(f"{k}={_fact(v)}" for k, v in facts.items()) + "\n")
    if job.output_tail:
        lines.append("output tail:\n")
        lines += [f"  | {line}\n" for line in job.output_tail.splitlines()[-_TAIL_LINES:]]
    return "".join(lines)


def _fact(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def health_text(report: HealthReport) -> str:
    """``health``: counts, the live supervisor's admission, memory and agents (with their
    progress), then alerts."""
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
            progress = agent.get("progress")
            rss, cpu = (agent.get("rss_bytes") or 0) // _MIB, agent.get("cpu_percent") or 0
            lines.append(
                f"  job {agent['job_id']:>5} {agent.get('kind') or 'command':<12} "
                f"rss {rss:>6} MiB  cpu {cpu:>5.1f}%"
                f"  {count(agent.get('processes') or 0, 'process')}"
                + (f"  progress: {progress_text(progress)}" if progress is not None else "")
            )
    else:
        lines.append("no supervisor is running on this data dir")
    if report.outbox_depth:
        lines.append(f"outbox: {count(report.outbox_depth, 'outcome')} not yet in the store")
    lines += [f"ALERT {a.kind}: {a.message}" for a in report.alerts] or ["no alerts"]
    return "".join(line + "\n" for line in lines)
