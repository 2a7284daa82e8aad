"""`task-cleanup monitor` and `task-cleanup notify --test`: thin callers of monitor and alerts."""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from maintenance.alerts import send_test
from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.monitor.loop import Monitor, MonitorOptions
from maintenance.cli.monitor.terminal import FullScreen, quiet_console
from maintenance.config import Settings
from maintenance.monitor.metrics import SnapshotCollector, serve_metrics
from maintenance.service import Maintenance

PING_TIMEOUT_S = 1.0  # the live view waits this long for worker replies, every workers_every_s
WORKERS_EVERY_S = 10.0


def add_monitor_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mon = sub.add_parser(
        "monitor",
        help="live view of queues, unacked, workers, findings and runs",
        description="A refreshing view of Celery's Redis state and the latest scan's findings. "
        "Cheap reads only (no scan unless --scan): safe to leave running. When "
        "stdout is not a terminal it prints one snapshot, like --once. Exit codes "
        "as check, judged on the latest scan summary.",
    )
    mon.add_argument("-v", "--verbose", action="store_true", help="also list the findings")
    mon.add_argument(
        "--interval",
        type=_positive,
        default=2.0,
        metavar="S",
        help="seconds between refreshes (default 2)",
    )
    mon.add_argument("--once", action="store_true", help="print one snapshot and exit")
    mon.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="stop after N refreshes (keeps refreshing when stdout is not a tty)",
    )
    mon.add_argument("--json", action="store_true", help="one JSON object per refresh")
    mon.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (keeps refreshing)",
    )
    mon.add_argument(
        "--metrics-addr",
        default="0.0.0.0",
        metavar="ADDR",
        help="address for the metrics endpoint (default 0.0.0.0)",
    )
    mon.add_argument(
        "--scan",
        type=_positive,
        nargs="?",
        const=3600.0,
        metavar="S",
        help="also run a full scan now and every S seconds (default 3600), alerting per [alerts]",
    )
    mon.add_argument("--no-workers", action="store_true", help="do not ping workers")
    mon.set_defaults(handler=run_monitor)

    notify = sub.add_parser(
        "notify",
        help="send a test alert through the configured channels",
        description="Send a test alert by webhook and/or e-mail, as "
        "configured in [alerts]. Exit 0 when every channel "
        "delivered, 3 when one failed, 2 when none is configured.",
    )
    notify.add_argument(
        "--test", action="store_true", required=True, help="send a test alert (the only mode)"
    )
    notify.set_defaults(handler=run_notify)


def run_monitor(args: argparse.Namespace, settings: Settings) -> int:
    maintenance = Maintenance.open(settings)
    server = None
    try:
        collector = (
            SnapshotCollector(maintenance.visibility_timeout_s)
            if args.metrics_port is not None
            else None
        )
        if collector is not None:
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
            scanner=maintenance.monitor_scan if args.scan else None,
        )
        return _run(monitor, args)
    finally:
        if server is not None:
            server.shutdown()
        maintenance.close()


def _run(monitor: Monitor, args: argparse.Namespace) -> int:
    terminal = sys.stdout.isatty()
    keeps_going = args.metrics_port is not None or args.count is not None
    if args.once or (not terminal and not keeps_going):
        return monitor.once(as_json=args.json)
    if args.json:
        return monitor.json_lines()
    if not terminal:
        return monitor.headless()
    with quiet_console():
        return monitor.live(FullScreen())


def _options(args: argparse.Namespace) -> MonitorOptions:
    return MonitorOptions(
        interval_s=args.interval,
        verbose=args.verbose,
        scan_every_s=args.scan,
        max_refreshes=args.count,
    )


def run_notify(args: argparse.Namespace, settings: Settings) -> int:
    alerts = settings.alerts
    if not (alerts.webhook_enabled or alerts.mail_enabled):
        print(
            f"task-cleanup: no alert channel configured: set [alerts] webhook_url and/or "
            f"smtp_host in {settings.source}",
            file=sys.stderr,
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
        print(f"{channel}: {'delivered' if ok else 'FAILED (see the log)'} ({target})")
    return ExitCode.OK if delivered and all(delivered.values()) else ExitCode.UNAVAILABLE


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value
