"""The monitor's text screen: one snapshot as lines, the way `htop` shows a machine at a glance."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from maintenance.cli.render import table
from maintenance.core.summary import ScanSummary, trend
from maintenance.monitor.snapshot import Snapshot

RUN_ACTION_KEYS_SHOWN = 4  # per run line; the rest is in `history`


def render_snapshot(
    snap: Snapshot,
    *,
    verbose: bool = False,
    interval_s: float | None = None,
    scanning: bool = False,
) -> str:
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.taken_at))
    every = f", every {interval_s:g}s, q to quit" if interval_s else ""
    out = [f"task-cleanup monitor   {clock}{every}{'   scanning...' if scanning else ''}"]
    out.extend(f"!! {error}" for error in snap.errors)
    out.append("")
    out.extend(_queues(snap))
    out.append("")
    out.extend(_scan(snap.latest, snap.previous, snap.taken_at))
    if verbose and snap.latest is not None:
        out.extend(_findings(snap.latest))
    out.append("")
    out.append(_lock(snap))
    out.extend(_runs(snap))
    return "\n".join(out)


def _lock(snap: Snapshot) -> str:
    if snap.lock_holder is None:
        return "run lock: free" if snap.redis_ok else "run lock: not known"
    return f"run lock: held by {snap.lock_holder.describe(snap.taken_at)}"


def _queues(snap: Snapshot) -> list[str]:
    rows = [
        (q.queue if not q.band else f"{q.queue}[priority {q.band}]", f"{q.messages:,}")
        for q in snap.queues
    ]
    lines = table(["queue", "waiting"], rows).splitlines()
    oldest = (
        f", oldest taken {human_age(snap.unacked_oldest_age_s)} ago"
        if snap.unacked_oldest_age_s is not None
        else ""
    )
    lines.append(f"unacked: {snap.unacked:,} held by workers{oldest}")
    if snap.workers is None:
        lines.append("workers: not known yet")
    else:
        names = ", ".join(snap.workers[:4]) + (" ..." if len(snap.workers) > 4 else "")
        lines.append(f"workers: {len(snap.workers)} online{f' ({names})' if names else ''}")
    return lines


def _scan(latest: ScanSummary | None, previous: ScanSummary | None, now: float) -> list[str]:
    if latest is None:
        return ["latest scan: none yet (run `task-cleanup check`, or `monitor --scan`)"]
    verdict = "consistent" if latest.consistent else f"{latest.findings_total:,} findings"
    head = (
        f"latest scan: {verdict}, {human_age(now - latest.at)} ago by "
        f"{latest.source or '?'} ({latest.duration_s:.1f}s, "
        f"{latest.managed_messages:,} managed messages)"
    )
    if previous is not None:
        head += f"; previous {human_age(now - previous.at)} ago"
    changes = trend(latest, previous)
    rows = [
        (kind, f"{count:,}", _signed(changes.get(kind))) for kind, count in latest.counts.items()
    ]
    return [head, *table(["finding", "count", "trend"], rows).splitlines()]


def _findings(latest: ScanSummary) -> list[str]:
    shown = latest.top_findings
    lines = ["", f"findings ({len(shown)} of {latest.findings_total:,}):"]
    lines.extend(finding_line(f) for f in shown)
    return lines


def finding_line(doc: Mapping[str, Any]) -> str:
    """The same shape as `check -v`'s lines, from a finding's JSON form."""
    loc = doc.get("location") or {}
    where = loc.get("where") or "?"
    if where == "queue":
        band = f" priority {loc['priority']}" if loc.get("priority") else ""
        where = f"queue {loc.get('queue')}{band}"
    elif where == "worker":
        where = f"worker {loc.get('worker')} ({loc.get('state')})"
    age = f" age={human_age(doc['age_s'])}" if doc.get("age_s") is not None else ""
    row = f" row={doc['db_id']}" if doc.get("db_id") else ""
    return (
        f"  {doc.get('kind', '?'):<12} {doc.get('reason', '?'):<16} "
        f"{doc.get('task_id') or '-'} {doc.get('task_name') or ''}{row} at {where}{age}"
    )


def _runs(snap: Snapshot) -> list[str]:
    runs = snap.history.recent
    if not runs:
        return ["maintenance runs: none recorded"]
    rows = []
    for run in runs:
        started = time.strftime("%m-%d %H:%M", time.localtime(run.get("started_at") or 0))
        finished = run.get("finished_at")
        took = f"{finished - run['started_at']:.1f}s" if finished else "-"
        rows.append(
            (
                started,
                run.get("mode", ""),
                run.get("outcome", ""),
                took,
                _counts_text(run.get("counts") or {}),
            )
        )
    return [
        "maintenance runs:",
        *table(["started", "mode", "outcome", "took", "did"], rows).splitlines(),
    ]


def _counts_text(counts: Mapping[str, Any]) -> str:
    items = [(k, v) for k, v in counts.items() if isinstance(v, int | float) and v]
    text = ", ".join(f"{k} {v:g}" for k, v in items[:RUN_ACTION_KEYS_SHOWN])
    return text + (" ..." if len(items) > RUN_ACTION_KEYS_SHOWN else "") or "nothing"


def _signed(value: int | None) -> str:
    if value is None:
        return "new"
    return f"{value:+,}" if value else "="


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
