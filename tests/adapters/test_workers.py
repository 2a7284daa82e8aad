"""The ping knows whom to expect from kombu's binding table, against a real Celery worker:
it names the same workers whether the table is right, holds a stale binding, or was wiped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from maintenance.adapters.celery_app import build_celery_app
from maintenance.adapters.workers import WorkerControl, bound_workers, pidbox_suffix
from maintenance.config import settings_from_mapping
from tests.workers import demo_worker

PREFIX = "tm-test:"


def _control(redis_url: str, **transport: str) -> WorkerControl:
    settings = settings_from_mapping(
        {"redis": {"broker_url": redis_url, "transport_options": transport}}
    )
    return WorkerControl(build_celery_app(settings), timeout_s=1.0)


def _table_key(control: WorkerControl, prefix: str = "") -> str:
    mailbox = control.app.control.mailbox
    return f"{prefix}_kombu.binding.{mailbox.exchange.name}"


def test_bound_workers_are_the_pidbox_queues_hostnames() -> None:
    control = _control("redis://127.0.0.1:1/0")
    suffix = pidbox_suffix(control.app.control.mailbox)
    assert suffix == ".celery.pidbox"
    table = [
        ("", "", "w1@host.example.celery.pidbox"),
        ("", "", "w2@h" + suffix),
        ("", "", "celery"),  # not a pidbox queue
        ("", "", suffix),  # no hostname
        (),
    ]
    assert bound_workers(table, suffix) == {"w1@host.example", "w2@h"}


@pytest.fixture
def worker(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[str]:
    """A live worker (on a queue of its own); its name as its ping reply gives it."""
    with demo_worker(redis_url, database_url, tmp_path / "worker.log", queues="idle"):
        names = _control(redis_url).app.control.ping(timeout=5.0)
        assert len(names) == 1
        yield next(iter(names[0]))


def test_ping_names_the_bound_worker(redis_url: str, worker: str) -> None:
    control = _control(redis_url)
    assert control.expected_workers() == {worker}
    assert control.ping() == [worker]


def test_a_stale_binding_does_not_change_who_answers(
    redis_url: str, redis_client: redis.Redis, worker: str
) -> None:
    """A worker that died without unbinding is expected but never answers: the ping waits
    the timeout out (it cannot know) and names only the live one."""
    control = _control(redis_url)
    ghost = "ghost@gone" + pidbox_suffix(control.app.control.mailbox)
    redis_client.sadd(_table_key(control), "\x06\x16".join(["", "", ghost]))
    assert control.expected_workers() == {worker, "ghost@gone"}
    assert control.ping() == [worker]


@pytest.mark.parametrize("keep_ghost", [False, True])
def test_a_worker_answering_without_a_binding_is_still_named(
    redis_url: str, redis_client: redis.Redis, worker: str, keep_ghost: bool
) -> None:
    """The table wiped (or holding only someone else's stale binding): the live worker answers
    unexpected, so the table is not trusted and the ping still names it."""
    control = _control(redis_url)
    key = _table_key(control)
    redis_client.delete(key)
    if keep_ghost:
        ghost = "ghost@gone" + pidbox_suffix(control.app.control.mailbox)
        redis_client.sadd(key, "\x06\x16".join(["", "", ghost]))
    assert worker not in control.expected_workers()
    assert control.ping() == [worker]


def test_the_binding_table_is_read_under_the_global_keyprefix(
    redis_url: str, database_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """kombu prefixes every key with `global_keyprefix`, the binding table too."""
    log = tmp_path / "worker.log"
    extra = {"DEMO_KEYPREFIX": PREFIX}
    with demo_worker(redis_url, database_url, log, queues="idle", extra_env=extra):
        control = _control(redis_url, global_keyprefix=PREFIX)
        assert redis_client.exists(_table_key(control, PREFIX))
        assert not redis_client.exists(_table_key(control))
        expected = control.expected_workers()
        assert len(expected) == 1
        assert control.ping() == sorted(expected)
