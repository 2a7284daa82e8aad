"""`task-cleanup monitor` and `task-cleanup notify --test`: thin callers of monitor and alerts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import click

from maintenance.alerts import send_test
from maintenance.cli.base import Command, finish, json_option, state
from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.monitor.loop import Monitor, MonitorOptions
from maintenance.cli.monitor.terminal import FullScreen, quiet_console
from maintenance.config import Settings
from maintenance.monitor.metrics import DEFAULT_METRICS_PORT, SnapshotCollector, serve_metrics
from maintenance.service import Maintenance

PING_TIMEOUT_S = 1.0  # the live view waits this long for worker replies, every workers_every_s
WORKERS_EVERY_S = 10.0


POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command(
    cls=Command,
    short_help="live view of queues, unacked, workers, findings and runs",
    epilog="Exit codes as check, judged on the latest scan summary: 0 nothing found (or no scan "
    "yet), 1 findings, 3 Redis or the database unavailable.",
)
@click.option("-v", "--verbose", is_flag=True, help="also list the findings")
@click.option(
    "--interval",
    type=POSITIVE,
    default=2.0,
    metavar="S",
    help="seconds between refreshes (default 2)",
)
@click.option("--once", is_flag=True, help="print one snapshot and exit")
@click.option(
    "--count",
    type=int,
    metavar="N",
    help="stop after N refreshes (keeps refreshing when stdout is not a tty)",
)
@json_option("one JSON object per refresh")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    envvar="TASK_CLEANUP_METRICS_PORT",
    show_envvar=True,
    help=f"serve Prometheus metrics on this port (ours: {DEFAULT_METRICS_PORT}); keeps refreshing",
)
@click.option(
    "--metrics-addr",
    default="0.0.0.0",
    metavar="ADDR",
    envvar="TASK_CLEANUP_METRICS_ADDR",
    show_envvar=True,
    help="address for the metrics endpoint (default 0.0.0.0)",
)
@click.option(
    "--scan",
    "scan_every_s",
    type=POSITIVE,
    is_flag=False,
    flag_value=3600.0,
    default=None,
    metavar="[S]",
    help="also run a full scan now and every S seconds (default 3600), alerting per [alerts]",
)
@click.option("--no-workers", is_flag=True, help="do not ping workers")
def monitor(**options: Any) -> None:
    """A refreshing view of Celery's Redis state and the latest scan's findings. Cheap reads
    only (no scan unless --scan): safe to leave running. When stdout is not a terminal it prints
    one snapshot, like --once.

    \b
    Examples:
      task-cleanup monitor                          full screen, q quits
      task-cleanup monitor --once --json
      task-cleanup monitor --metrics-port 8758      a Prometheus exporter
      task-cleanup monitor --scan 3600 --metrics-port 8758
    """
    finish(run_monitor(MonitorArgs(**options)))


@click.command(
    cls=Command,
    short_help="send a test alert through the configured channels",
    epilog="Exit 0 when every channel delivered, 3 when one failed, 2 when none is configured.",
)
@click.option("--test", is_flag=True, required=True, help="send a test alert (the only mode)")
def notify(test: bool) -> None:
    """Send a test alert by webhook and/or e-mail, as configured in [alerts].

    \b
    Example:
      task-cleanup notify --test
    """
    finish(run_notify(state().settings()))


@dataclass(frozen=True)
class MonitorArgs:
    verbose: bool
    interval: float
    once: bool
    count: int | None
    as_json: bool
    metrics_port: int | None
    metrics_addr: str
    scan_every_s: float | None
    no_workers: bool


def run_monitor(args: MonitorArgs) -> int:
    maintenance = Maintenance.open(state().settings())
    server = None
    try:
        collector = None
        if args.metrics_port is not None:
            collector = SnapshotCollector(maintenance.visibility_timeout_s)
            server = serve_metrics(collector, args.metrics_port, args.metrics_addr)
        snapshots = maintenance.snapshots(
            workers=not args.no_workers,
            ping_timeout_s=PING_TIMEOUT_S,
            workers_every_s=max(WORKERS_EVERY_S, args.interval),
        )
        monitor = Monitor(
            snapshots,
            _options(args),
            collector=collector,
            scanner=maintenance.monitor_scan if args.scan_every_s else None,
        )
        return _run(monitor, args)
    finally:
        if server is not None:
            server.shutdown()
        maintenance.close()


def _run(monitor: Monitor, args: MonitorArgs) -> int:
    terminal = sys.stdout.isatty()
    keeps_going = args.metrics_port is not None or args.count is not None
    if args.once or (not terminal and not keeps_going):
        return monitor.once(as_json=args.as_json)
    if args.as_json:
        return monitor.json_lines()
    if not terminal:
        return monitor.headless()
    with quiet_console():
        return monitor.live(FullScreen())


def _options(args: MonitorArgs) -> MonitorOptions:
    return MonitorOptions(
        interval_s=args.interval,
        verbose=args.verbose,
        scan_every_s=args.scan_every_s,
        max_refreshes=args.count,
    )


def run_notify(settings: Settings) -> int:
    alerts = settings.alerts
    if not (alerts.webhook_enabled or alerts.mail_enabled):
        click.echo(
            f"{state().prog}: no alert channel configured: set [alerts] webhook_url and/or "
            f"smtp_host in {settings.source}",
            err=True,
        )
        return ExitCode.USAGE
    delivered = send_test(alerts)
    for channel, ok in delivered.items():
        # the host only: webhook paths often carry a token
        target = (
            urlsplit(alerts.webhook_url).netloc
            if channel == "webhook"
            else ", ".join(alerts.mail_to)
        )
        click.echo(f"{channel}: {'delivered' if ok else 'FAILED (see the log)'} ({target})")
    return ExitCode.OK if delivered and all(delivered.values()) else ExitCode.UNAVAILABLE
