"""Composition: every adapter built once from the settings; the only place opening connections."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from maintenance.adapters.celery_app import build_celery_app
from maintenance.adapters.connections import check_urls, connect_broker, connect_results
from maintenance.adapters.database import TaskDatabase, create_db_engine
from maintenance.adapters.history import HistoryStore
from maintenance.adapters.history_totals import HistoryReader
from maintenance.adapters.introspection import BrokerSurvey, SchemaReader
from maintenance.adapters.leftovers import ReplyListSweeper
from maintenance.adapters.live_state import LiveStateReader
from maintenance.adapters.producer import TaskProducer
from maintenance.adapters.quarantine import Quarantine
from maintenance.adapters.redis_layout import BrokerLayout, OwnKeys
from maintenance.adapters.redis_reader import RedisReader
from maintenance.adapters.results import ResultWriter
from maintenance.adapters.run_lock import RunLock
from maintenance.adapters.scan_summary import ScanSummaryStore
from maintenance.adapters.sentinel import MasterPin
from maintenance.adapters.stuck_rows import StuckRows
from maintenance.adapters.workers import WorkerControl
from maintenance.config import Settings

if TYPE_CHECKING:  # annotations only: the app is built by adapters.celery_app
    from celery import Celery


@dataclass
class Adapters:
    """Each adapter once, over the connections opened for one settings object."""

    settings: Settings
    app: Celery
    layout: BrokerLayout
    db: TaskDatabase
    reader: RedisReader
    workers: WorkerControl
    quarantine: Quarantine
    results: ResultWriter
    history: HistoryStore
    stuck_rows: StuckRows
    summaries: ScanSummaryStore
    run_lock: RunLock
    producer: TaskProducer
    reply_lists: ReplyListSweeper
    live_state: LiveStateReader
    _closers: list[Any] = field(default_factory=list)

    def history_totals(self) -> HistoryReader:
        """A new reader: it keeps running totals, so each live view has its own."""
        return HistoryReader(self.db.engine)

    def close(self) -> None:
        _close_all(self._closers)


def open_adapters(
    settings: Settings, app: Celery | None = None, *, clock: Callable[[], float] = time.time
) -> Adapters:
    """Connect to Redis the way kombu and Celery would for the same settings."""
    app = app or build_celery_app(settings)
    check_urls(settings, app)
    closers: list[Any] = []
    try:
        return _connect(settings, app, closers, clock)
    except BaseException:
        _close_all(closers)  # release what was opened before the failure (long-lived workers)
        raise


def open_history(settings: Settings) -> tuple[HistoryStore, Callable[[], None]]:
    """The history tables alone, and how to close their engine: no Redis needed."""
    engine = create_db_engine(settings)
    return HistoryStore(engine), engine.dispose


@dataclass
class SurveyAdapters:
    """`config init` / `config check`: read-only views of the app's database and broker."""

    schema: SchemaReader
    broker: BrokerSurvey
    layout: BrokerLayout
    _closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        _close_all(self._closers)


def open_survey(settings: Settings) -> SurveyAdapters:
    """Connect as `open_adapters` does (kombu's URL handling and transport options), but only
    what a look at the schema and the queues needs."""
    app = build_celery_app(settings)
    check_urls(settings, app)
    closers: list[Any] = []
    try:
        broker = connect_broker(settings, app)
        closers.append(broker.release)
        engine = create_db_engine(settings)
        closers.append(engine.dispose)
        return SurveyAdapters(
            schema=SchemaReader(engine),
            broker=BrokerSurvey(broker.client, broker.layout, count=settings.redis.chunk_size),
            layout=broker.layout,
            _closers=closers,
        )
    except BaseException:
        _close_all(closers)
        raise


def _close_all(closers: list[Any]) -> None:
    for closer in reversed(closers):
        with contextlib.suppress(Exception):  # best effort on the way out
            closer()


def _connect(
    settings: Settings, app: Celery, closers: list[Any], clock: Callable[[], float]
) -> Adapters:
    # Behind Sentinel, each run stays on the master it began on (adapters/sentinel.py).
    pin = MasterPin()
    connected = connect_broker(settings, app, pin)
    closers.append(connected.release)
    broker, layout = connected.client, connected.layout
    backend_of = connect_results(settings, app, pin)
    backend, results, result_layout = backend_of.backend, backend_of.client, backend_of.layout
    engine = create_db_engine(settings)
    closers.append(engine.dispose)
    db = TaskDatabase(engine, settings)
    own_keys = OwnKeys(settings.cleanup.key_prefix)
    summaries = ScanSummaryStore(broker, own_keys)
    return Adapters(
        settings=settings,
        app=app,
        layout=layout,
        db=db,
        reader=RedisReader(
            broker,
            layout,
            results,
            result_layout,
            chunk_size=settings.redis.chunk_size,
            depth=settings.redis.pipeline_depth,
        ),
        workers=WorkerControl(app, timeout_s=settings.scan.inspect_timeout_s),
        quarantine=Quarantine(broker, layout, own_keys, clock),
        results=ResultWriter(backend, results, result_layout),
        history=HistoryStore(engine, clock=clock),
        stuck_rows=StuckRows(db),
        summaries=summaries,
        run_lock=RunLock(
            broker,
            own_keys,
            lease_s=settings.cleanup.lock_lease_s,
            renew_s=settings.cleanup.lock_renew_s,
            max_hold_s=settings.cleanup.lock_ttl_s,
            wait_s=settings.cleanup.lock_wait_s,
            clock=clock,
        ),
        producer=TaskProducer(app),
        reply_lists=ReplyListSweeper(
            broker,
            layout,
            app.control.mailbox.reply_exchange.name,
            chunk_size=settings.redis.chunk_size,
        ),
        live_state=LiveStateReader(broker, layout, own_keys, summaries),
        _closers=closers,
    )
