"""The maintenance worker serves the Prometheus metrics itself when `[metrics] port` is set."""

from __future__ import annotations

import urllib.error
from pathlib import Path

from celery import Celery

from tests.cli.monitor.test_commands import scrape
from tests.conftest import wait_for, write_config
from tests.servers import free_port
from tests.service_procs import maintenance_worker


def test_the_worker_serves_metrics_read_when_scraped(
    tmp_path: Path, redis_url: str, database_url: str, producer: Celery
) -> None:
    port = free_port()
    extra = f'[metrics]\nport = {port}\naddr = "127.0.0.1"\nmin_interval_s = 0.2\n'
    config = write_config(tmp_path / "maintenance.toml", redis_url, database_url, extra=extra)

    def scraped() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        try:
            return scrape(port)
        except (urllib.error.URLError, ConnectionError):
            return None

    with maintenance_worker(config, tmp_path / "worker.out"):
        first = wait_for(scraped, timeout_s=30, what="the worker's /metrics")
        assert first["task_maintenance_backend_up"][(("backend", "redis"),)] == 1
        assert first["task_maintenance_workers_online"][()] >= 1  # at least the worker itself
        assert first["task_maintenance_broker_visibility_timeout_seconds"][()] == 3600
        depth = (("priority", "0"), ("queue_name", "video_processing"))
        assert first["task_maintenance_queue_messages"][depth] == 0

        producer.send_task("demo.process_video", args=["row-1"], queue="video_processing")
        # a later scrape reads Redis again (no refresh loop: the scrape itself reads)
        wait_for(
            lambda: (
                (s := scraped()) is not None and s["task_maintenance_queue_messages"][depth] == 1
            ),
            timeout_s=10,
            what="the queued message in the metrics",
        )
    # the worker stopped: so did its endpoint
    assert scraped() is None
