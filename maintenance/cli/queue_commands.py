"""`queues`: what sits in each queue, by task name; `purge`: take a selection out, restorably."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import click
import orjson

from maintenance.cli.base import Command, finish, json_option, state
from maintenance.cli.cleanup_commands import started_by
from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.progress import ProgressLine
from maintenance.cli.render import print_json, table
from maintenance.core.bindings import BindingTable
from maintenance.core.inventory import BandStock, Described, Inventory, PurgeSelection
from maintenance.core.models import FindingKind
from maintenance.core.report import ScanReport, place_name
from maintenance.core.where import WhereError, compile_where
from maintenance.errors import ConfigError
from maintenance.service import Maintenance

HAZARD_KINDS = (
    FindingKind.ETA_BEYOND_VISIBILITY,
    FindingKind.DUPLICATE,
    FindingKind.EXPIRED_WAITING,
)
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Duration(click.ParamType[float, Any]):  # (value type, raw input type)
    """`90`, `90s`, `30m`, `2h`, `7d`: seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        text = str(value).strip().lower()
        scale = UNITS.get(text[-1:])
        number = text[:-1] if scale is not None else text
        try:
            seconds = float(number) * (scale or 1.0)
        except ValueError:
            self.fail(f"{value!r} is not a duration such as 90s, 30m, 2h or 7d", param, ctx)
        if seconds < 0:
            self.fail("must not be negative", param, ctx)
        return seconds


@click.command(
    cls=Command,
    short_help="what waits in each queue, by task name (read-only)",
    epilog="Exit 0. Read-only, chunked like check; never blocks Redis.",
)
@click.option(
    "--task-name",
    metavar="GLOB",
    help="list the messages of these task names one by one (shell glob: 'demo.*')",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    metavar="N",
    help="read only the last N messages of each band (the next to be delivered): a quick look",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    metavar="N",
    help="with --task-name: messages listed at most (the rest are counted)",
)
@json_option("print JSON (with --task-name: one object per message, streamed)")
def queues(task_name: str | None, sample: int | None, limit: int, as_json: bool) -> None:
    """Per queue and priority band: the messages waiting grouped by task name (count, share,
    and for bound names how many are orphans), ETA/countdown messages and how far out, the
    next message to be delivered; the unacked entries by age and by task name.

    \b
    Examples:
      task-cleanup queues
      task-cleanup queues --sample 1000            a quick look at a huge queue
      task-cleanup queues --task-name 'demo.render*' --limit 20
      task-cleanup queues --task-name '*' --json | jq -r .task_id
    """
    settings = state().settings()
    with Maintenance.open(settings) as maintenance:
        if task_name is not None:
            _list(maintenance.browse(task_name, sample=sample), limit, as_json)
            finish(ExitCode.OK)
        if sample is not None:
            inventory = Inventory(maintenance.clock())
            for described in maintenance.browse(None, sample=sample):
                inventory.message(described.msg)
            report = None
        else:
            progress = ProgressLine()
            try:
                inventory, report = maintenance.queues(progress=progress)
            finally:
                progress.done()
    bound = BindingTable(settings.bindings)
    if as_json:
        print_json(_as_dict(inventory, report, bound, sample))
    else:
        click.echo(render_inventory(inventory, report, bound, sample))
    finish(ExitCode.OK)


def _list(listed: Any, limit: int, as_json: bool) -> None:
    shown, more = 0, 0
    out = sys.stdout
    for described in listed:
        if shown >= limit:
            more += 1
            continue
        shown += 1
        if as_json:
            out.write(orjson.dumps(described.as_dict(), default=str).decode() + "\n")
        else:
            out.write(listing_line(described) + "\n")
    if not as_json:
        out.write(f"{shown:,} listed" + (f", {more:,} more not shown (--limit)" if more else ""))
        out.write("\n")


def listing_line(described: Described) -> str:
    msg, loc = described.msg, described.msg.location
    where = place_name(loc.where, loc.queue, loc.priority)
    at = f" #{loc.index}" if loc.index >= 0 else ""
    parts = [f"{where}{at}", msg.task_id or "-", msg.task_name or "-"]
    if msg.db_id:
        parts.append(f"row={msg.db_id}")
    if msg.eta:
        parts.append(f"eta={msg.eta}")
    if described.retries:
        parts.append(f"retries={described.retries}")
    parts.append(f"args: {described.preview}")
    return "  ".join(parts)


def _hazards(report: ScanReport | None) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for f in report.findings if report is not None else ():
        if f.kind in HAZARD_KINDS:
            counts[(f.location.key or f.location.where.value, f.kind.value)] += 1
    return counts


def render_inventory(
    inventory: Inventory, report: ScanReport | None, bound: BindingTable, sample: int | None
) -> str:
    out: list[str] = []
    hazards = _hazards(report)
    if sample is not None:
        out.append(f"A sample: the last {sample:,} messages of each band (orphans not judged).")
        out.append("")
    for stock in inventory.bands.values():
        out.extend(_band_lines(stock, bound, sample is None, hazards))
    unacked = inventory.unacked
    oldest = (
        "" if unacked.oldest_age_s is None else f"; oldest taken {_ago(unacked.oldest_age_s)} ago"
    )
    out.append(f"unacked: {unacked.entries:,} entries{oldest}")
    if unacked.entries:
        ages = unacked.as_dict()["by_age"]
        out.append(table(["age", "entries"], [(k, f"{v:,}") for k, v in ages.items() if v]))
        out.append(
            table(
                ["task name", "entries"], [(n, f"{c:,}") for n, c in unacked.by_name.most_common()]
            )
        )
    for (key, kind), count in sorted(hazards.items()):
        if key == "unacked":
            out.append(f"hazard: {count:,} {kind} among the unacked entries")
    return "\n".join(out).rstrip()


def _band_lines(
    stock: BandStock, bound: BindingTable, judged: bool, hazards: Counter[tuple[str, str]]
) -> list[str]:
    if not stock.messages and not stock.length:
        return []
    name = place_name_of(stock)
    lines = [f"queue {name}: {stock.length:,} messages (LLEN), {stock.messages:,} read"]
    rows = []
    for task, count in stock.by_name.most_common():
        share = f"{100 * count / stock.messages:.1f}%" if stock.messages else "-"
        orphans = (
            f"{stock.orphans_by_name.get(task, 0):,}" if judged and bound.lookup(task) else "-"
        )
        rows.append((task, f"{count:,}", share, orphans))
    if rows:
        lines.append(table(["task name", "messages", "share", "orphans"], rows))
    if stock.eta_messages:
        lines.append(
            f"ETA/countdown: {stock.eta_messages:,} messages, nearest "
            f"{_when(stock.eta_nearest_s)}, furthest {_when(stock.eta_furthest_s)}"
        )
    if stock.tail is not None:
        index, task_id, task = stock.tail
        lines.append(f"next to be delivered: #{index:,} {task} {task_id}")
    for (key, kind), count in sorted(hazards.items()):
        if key == stock.key:
            lines.append(f"hazard: {count:,} {kind} (task-cleanup check -v lists them)")
    lines.append("")
    return lines


def place_name_of(stock: BandStock) -> str:
    return f"{stock.queue}" if not stock.band else f"{stock.queue}[priority {stock.band}]"


def _as_dict(
    inventory: Inventory, report: ScanReport | None, bound: BindingTable, sample: int | None
) -> dict[str, Any]:
    hazards = _hazards(report)
    bands = []
    for stock in inventory.bands.values():
        doc = stock.as_dict()
        for entry in doc["by_task_name"]:
            entry["bound"] = bound.lookup(entry["name"]) is not None
            if sample is not None or not entry["bound"]:
                entry["orphans"] = None  # not judged
        doc["hazards"] = {k: c for (key, k), c in hazards.items() if key == stock.key}
        bands.append(doc)
    return {
        "sample": sample,
        "queues": bands,
        "unacked": inventory.unacked.as_dict(),
        "hazards_unacked": {k: c for (key, k), c in hazards.items() if key == "unacked"},
    }


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"due {_ago(-seconds)} ago" if seconds < 0 else f"in {_ago(seconds)}"


@click.command(
    cls=Command,
    short_help="take matching queued messages into the quarantine (restorable)",
    epilog="Exit 0 done (or a dry run), 1 some matching message not taken (a worker holds it, "
    "or took it meanwhile), 2 usage error (a bad --where; no terminal to confirm on: use "
    "--force), 3 Redis or the database unavailable, 4 another run holds the lock.",
)
@click.option("--task-name", required=True, metavar="GLOB", help="task names (shell glob)")
@click.option(
    "--queue", "queue_names", multiple=True, metavar="Q", help="only this queue (repeatable)"
)
@click.option(
    "--where",
    "where_text",
    metavar="EXPR",
    help="only messages whose row id or arguments match: kwargs.tenant_id == 42, "
    "args[0] in ('a', 'b'), row_id == '7' (comparisons, and/or/not; never evaluated)",
)
@click.option(
    "--older-than",
    type=Duration(),
    metavar="D",
    help="only messages whose bound row was last updated D ago (tasks.updated_at_column), "
    "or unacked ones a worker took D ago (90s, 30m, 2h, 7d)",
)
@click.option("--dry-run", is_flag=True, help="show what would be taken, change nothing")
@click.option("--force", is_flag=True, help="do not ask (for scripts)")
@json_option()
def purge(
    task_name: str,
    queue_names: tuple[str, ...],
    where_text: str | None,
    older_than: float | None,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Take every matching message into the quarantine: queued ones, and unacked ones no worker
    can still hold. Marked REVOKED, recorded in the history, under the run lock, restorable with
    `task-cleanup restore`. Shows the counts per queue and a sample first, then asks.

    \b
    Examples:
      task-cleanup purge --task-name 'reports.*' --dry-run
      task-cleanup purge --task-name demo.render --where 'kwargs.tenant_id == 42'
      task-cleanup purge --task-name '*' --queue video_processing --older-than 7d --force
      task-cleanup restore --all                    puts them back
    """
    try:
        where = compile_where(where_text) if where_text else None
    except WhereError as exc:
        raise click.BadParameter(str(exc), param_hint="'--where'") from None
    if not force and not dry_run and not sys.stdin.isatty():
        raise ConfigError(
            "purge asks for confirmation, but stdin is not a terminal: use --force in scripts, "
            "or --dry-run to see the selection",
            key="--force",
            source="command line",
        )
    with Maintenance.open(state().settings()) as maintenance:
        selection = maintenance.purge_selection(
            task_name, queues=queue_names, where=where, older_than_s=older_than
        )
        if as_json and (dry_run or not selection.findings):
            print_json({"dry_run": dry_run, "selection": selection.as_dict(), "done": {}})
            finish(ExitCode.OK)
        if not as_json:
            click.echo(render_selection(selection))
        if dry_run or not selection.findings:
            finish(ExitCode.OK)
        if not force and input("Purge them? [y/N] ").strip().lower() not in ("y", "yes"):
            click.echo("declined: nothing was changed")
            finish(ExitCode.OK)
        result = maintenance.purge(selection, started_by=started_by())
    if as_json:
        print_json(
            {
                "dry_run": False,
                "run_id": result.run_id,
                "selection": selection.as_dict(),
                "done": result.done,
                "details": result.details,
            }
        )
    else:
        for line in result.details:
            click.echo(line)
        done = ", ".join(f"{k}={v:,}" for k, v in result.done.items()) or "nothing done"
        click.echo(f"run {result.run_id}: {done}")
    left = result.done.get("held_by_worker") or result.done.get("not_removed")
    finish(ExitCode.FINDINGS if left else ExitCode.OK)


def render_selection(selection: PurgeSelection) -> str:
    if not selection.findings:
        return "Nothing matches."
    out = [f"{len(selection.findings):,} matching messages:"]
    out.append(
        table(["place", "messages"], sorted((k, f"{v:,}") for k, v in selection.by_place.items()))
    )
    if selection.skipped_unknown_age:
        out.append(
            f"{selection.skipped_unknown_age:,} matching messages left out: their age is not "
            "known (no bound task row)"
        )
    if selection.sample:
        out.append("")
        out.append("A sample:")
        out.extend(listing_line(d) for d in selection.sample)
    return "\n".join(out)
