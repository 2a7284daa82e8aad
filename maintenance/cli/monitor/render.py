"""The monitor's screen: one snapshot at a glance, the way `htop` shows a machine.

Two forms from the same pieces: plain text (`--once`, pipes) and rich tables for the live view.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from maintenance.cli.render import table
from maintenance.core.models import FindingKind, Outcome
from maintenance.core.summary import ScanSummary, trend
from maintenance.monitor.snapshot import Snapshot

RUN_ACTION_KEYS_SHOWN = 4  # per run line; the rest is in `history`
RUN_HEADERS = ("started", "mode", "outcome", "took", "did")
NO_SCAN = "latest scan: none yet (run `task-cleanup check`, or `monitor --scan`)"
NO_RUNS = "maintenance runs: none recorded"
OUTCOME_STYLES = {
    Outcome.OK.value: "green",
    Outcome.DRY_RUN.value: "green",
    Outcome.RUNNING.value: "cyan",
    Outcome.FAILED.value: "bold red",
    Outcome.INTERRUPTED.value: "red",
}  # the other outcomes (partial, refused, declined, skipped) in yellow


def render_snapshot(
    snap: Snapshot,
    *,
    verbose: bool = False,
    interval_s: float | None = None,
    scanning: bool = False,
) -> str:
    """Plain text, for `--once` and pipes (scripts and tests read it)."""
    out = [_header(snap, interval_s, scanning)]
    out.extend(f"!! {error}" for error in snap.errors)
    out.append("")
    out.extend(table(["queue", "waiting"], _queue_rows(snap)).splitlines())
    out.append(_unacked(snap))
    out.append(_workers(snap))
    out.append("")
    if snap.latest is None:
        out.append(NO_SCAN)
    else:
        out.append(_scan_head(snap.latest, snap.previous, snap.taken_at))
        rows = [(kind, f"{count:,}", text) for kind, count, text, _ in _finding_rows(snap)]
        out.extend(table(["finding", "count", "trend"], rows).splitlines())
    if verbose and snap.latest is not None:
        out.extend(_findings(snap.latest))
    out.append("")
    out.append(_lock(snap))
    runs = _run_rows(snap)
    if not runs:
        out.append(NO_RUNS)
    else:
        out.append("maintenance runs:")
        out.extend(table(RUN_HEADERS, runs).splitlines())
    return "\n".join(out)


def snapshot_view(
    snap: Snapshot,
    *,
    verbose: bool = False,
    interval_s: float | None = None,
    scanning: bool = False,
) -> RenderableType:
    """The same snapshot as rich tables for the live screen, bad states in colour."""
    head = _line(_header(snap, interval_s, scanning=False), style="bold")
    if scanning:
        head.append("   scanning...", style="yellow")
    parts: list[RenderableType] = [head]
    parts.extend(_line(f"!! {error}", style="bold red") for error in snap.errors)
    parts.append(_backends(snap))
    queues = _table("queue", "waiting")
    for name, waiting in _queue_rows(snap):
        queues.add_row(Text(name), Text(waiting))
    parts += [queues, _line(_unacked(snap)), _workers_view(snap), Text("")]
    if snap.latest is None:
        parts.append(Text(NO_SCAN, style="dim"))
    else:
        parts += _scan_view(snap, snap.latest)
    if verbose and snap.latest is not None:
        parts.extend(_line(line) for line in _findings(snap.latest))
    parts += [Text(""), _lock_view(snap), _runs_view(snap)]
    return Group(*parts)


def _line(text: str, style: str = "") -> Text:
    """One line, cut at the window's edge as the old view did: a wrapped line would push the
    rest of the screen down."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _header(snap: Snapshot, interval_s: float | None, scanning: bool) -> str:
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.taken_at))
    every = f", every {interval_s:g}s, q to quit" if interval_s else ""
    return f"task-cleanup monitor   {clock}{every}{'   scanning...' if scanning else ''}"


def _table(*headers: str) -> Table:
    """Headers over a rule, no frame: columns line up as in the text form."""
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for index, header in enumerate(headers):
        grid.add_column(Text(header), justify="right" if index else "left")
    return grid


def _backends(snap: Snapshot) -> Text:
    return Text("   ").join(
        Text.assemble(f"{name} ", ("up", "green") if ok else ("DOWN", "bold red"))
        for name, ok in (("redis", snap.redis_ok), ("database", snap.database_ok))
    )


def _scan_view(snap: Snapshot, latest: ScanSummary) -> list[RenderableType]:
    head = _line(_scan_head(latest, snap.previous, snap.taken_at))
    verdict = "consistent" if latest.consistent else f"{latest.findings_total:,} findings"
    head.highlight_words([verdict], style="green" if latest.consistent else "bold red")
    grid = _table("finding", "count", "trend")
    for kind, count, change, delta in _finding_rows(snap):
        bad = "red" if kind == FindingKind.ORPHAN.value else "yellow"
        grid.add_row(
            Text(kind),
            Text(f"{count:,}", style=bad if count else "green"),
            Text(change, style=_trend_style(delta)),
        )
    return [head, grid]


def _trend_style(delta: int | None) -> str:
    if delta is None:
        return "yellow"
    return "red" if delta > 0 else "green" if delta < 0 else "dim"


def _workers_view(snap: Snapshot) -> Text:
    style = "dim" if snap.workers is None else "" if snap.workers else "yellow"
    return _line(_workers(snap), style=style)


def _lock_view(snap: Snapshot) -> Text:
    if snap.lock_holder is not None:
        return _line(_lock(snap), style="cyan")
    return _line(_lock(snap), style="" if snap.redis_ok else "red")


def _runs_view(snap: Snapshot) -> RenderableType:
    rows = _run_rows(snap)
    if not rows:
        return Text(NO_RUNS, style="dim")
    grid = _table(*RUN_HEADERS)
    for started, mode, outcome, took, did in rows:
        style = OUTCOME_STYLES.get(outcome, "yellow")
        grid.add_row(Text(started), Text(mode), Text(outcome, style=style), Text(took), Text(did))
    return Group(Text("maintenance runs:"), grid)


def _lock(snap: Snapshot) -> str:
    if snap.lock_holder is None:
        return "run lock: free" if snap.redis_ok else "run lock: not known"
    return f"run lock: held by {snap.lock_holder.describe(snap.taken_at)}"


def _queue_rows(snap: Snapshot) -> list[tuple[str, str]]:
    return [
        (q.queue if not q.band else f"{q.queue}[priority {q.band}]", f"{q.messages:,}")
        for q in snap.queues
    ]


def _unacked(snap: Snapshot) -> str:
    oldest = (
        f", oldest taken {human_age(snap.unacked_oldest_age_s)} ago"
        if snap.unacked_oldest_age_s is not None
        else ""
    )
    return f"unacked: {snap.unacked:,} held by workers{oldest}"


def _workers(snap: Snapshot) -> str:
    if snap.workers is None:
        return "workers: not known yet"
    names = ", ".join(snap.workers[:4]) + (" ..." if len(snap.workers) > 4 else "")
    return f"workers: {len(snap.workers)} online{f' ({names})' if names else ''}"


def _scan_head(latest: ScanSummary, previous: ScanSummary | None, now: float) -> str:
    verdict = "consistent" if latest.consistent else f"{latest.findings_total:,} findings"
    head = (
        f"latest scan: {verdict}, {human_age(now - latest.at)} ago by "
        f"{latest.source or '?'} ({latest.duration_s:.1f}s, "
        f"{latest.managed_messages:,} managed messages)"
    )
    if previous is not None:
        head += f"; previous {human_age(now - previous.at)} ago"
    return head


def _finding_rows(snap: Snapshot) -> list[tuple[str, int, str, int | None]]:
    """Per kind of the latest scan: count, trend as shown, and the change behind it."""
    if snap.latest is None:
        return []
    changes = trend(snap.latest, snap.previous)
    return [
        (kind, count, _signed(changes.get(kind)), changes.get(kind))
        for kind, count in snap.latest.counts.items()
    ]


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


def _run_rows(snap: Snapshot) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for run in snap.history.recent:
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
    return rows


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
