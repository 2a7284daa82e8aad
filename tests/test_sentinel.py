"""Through Redis Sentinel, for real: a master, a replica and three sentinels on loopback
(tests/redis_topologies.py); check, cleanup, monitor and a guarded worker through
`sentinel://` URLs, and a failover in the middle of a scan and of a cleanup."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult
from redis.sentinel import Sentinel

from examples.demo.schema import new_id
from maintenance.actions.run import RunOptions
from maintenance.adapters.history import HistoryStore
from maintenance.adapters.sentinel import MasterChanged, MasterPin, follow_master
from maintenance.config import load_settings
from maintenance.service import Maintenance
from tests.actions.test_run import QUARANTINE, QUEUE, insert_rows, queued_task_ids, send
from tests.conftest import DEFAULT_BINDINGS, ROOT, producer_app, run_cli, wait_for, write_config
from tests.redis_topologies import SentinelSet, guarded_worker
from tests.servers import remove_dir

PASSWORD = "s3nt-pw"  # the data nodes require it; it must never be printed


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    directory = Path(tempfile.mkdtemp(prefix="tm-sentinel-"))
    topology = SentinelSet(directory, password=PASSWORD).start()
    yield topology
    topology.stop()
    remove_dir(directory)


@dataclass
class Env:
    topology: SentinelSet
    config: Path
    producer: Celery
    engine: sa.Engine

    def master(self) -> redis.Redis:
        """A direct client of whichever node is the master now."""
        return self.topology.client()


def sentinel_config(
    path: Path,
    topology: SentinelSet,
    database_url: str,
    extra: str = "",
    bindings: str = DEFAULT_BINDINGS,
    redis_keys: str = "",
) -> Path:
    """write_config with the Sentinel URL and `master_name` in `[redis] transport_options`."""
    config = write_config(path, topology.broker_url(), database_url, extra=extra, bindings=bindings)
    redis_keys += f'transport_options = {{ master_name = "{topology.master_name}" }}\n'
    text = config.read_text().replace("[redis]\n", f"[redis]\n{redis_keys}", 1)
    # No worker listens on these queues: a short inspect time-out keeps the runs quick.
    config.write_text(text.replace("inspect_timeout_s = 1.0", "inspect_timeout_s = 0.3", 1))
    return config


@pytest.fixture
def env(
    sentinels: SentinelSet, database_url: str, engine: sa.Engine, tmp_path: Path
) -> Iterator[Env]:
    sentinels.wait_ready()
    with sentinels.client() as master:
        master.flushall()
    options = sentinels.transport_options()
    producer = producer_app(
        sentinels.broker_url(),
        broker_transport_options=options,
        result_backend_transport_options=options,
    )
    # Short Redis time-outs: a hung master fails a call within seconds, not 30 s; a run that
    # dies with its master frees the lock within 2 s, and the next one waits for it.
    config = sentinel_config(
        tmp_path / "maintenance.toml",
        sentinels,
        database_url,
        redis_keys="socket_timeout_s = 1\n",
        extra="[cleanup]\nlock_lease_s = 2.0\nlock_renew_s = 0.5\nlock_wait_s = 10.0\n",
    )
    yield Env(sentinels, config, producer, engine)
    producer.close()


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli("--config", str(env.config), *args)
    assert PASSWORD not in result.stdout + result.stderr
    return result


def test_check_cleanup_and_monitor_through_sentinel(env: Env) -> None:
    """`check` finds exactly the orphans, `cleanup` quarantines exactly them (REVOKED in the
    Sentinel result backend), `monitor` reads the queue depths: all through the sentinels."""
    live, gone = [new_id() for _ in range(6)], [new_id() for _ in range(3)]
    insert_rows(env.engine, live)
    ids = send(env.producer, live + gone)
    check = cli(env, "check", "--json")
    assert check.returncode == 1, check.stderr
    report = json.loads(check.stdout)
    assert {f["task_id"] for f in report["findings"] if f["kind"] == "orphan"} == {
        ids[row] for row in gone
    }
    monitor = cli(env, "monitor", "--once", "--json", "--no-workers")
    depths = {(q["queue"], q["band"]): q["messages"] for q in json.loads(monitor.stdout)["queues"]}
    assert depths[(QUEUE, 0)] == len(live + gone)
    cleanup = cli(env, "cleanup", "--force", "--json", "--grace", "0", "--max-orphan-ratio", "1")
    assert cleanup.returncode == 0, cleanup.stderr
    assert json.loads(cleanup.stdout)["done"] == {"quarantined": len(gone)}
    with env.master() as master:
        assert sorted(queued_task_ids(master)) == sorted(ids[row] for row in live)
        assert master.hlen(QUARANTINE) == len(gone)
    for row in gone:
        assert AsyncResult(ids[row], app=env.producer).state == "REVOKED"


def test_sentinel_url_without_master_name_is_a_config_error(
    sentinels: SentinelSet, database_url: str, tmp_path: Path
) -> None:
    """kombu needs `master_name` to ask the sentinels; without it: exit 2, naming the key."""
    config = write_config(tmp_path / "no-master.toml", sentinels.broker_url(), database_url)
    result = run_cli("--config", str(config), "check")
    assert result.returncode == 2, result.stderr
    assert "master_name" in result.stderr and "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr


GUARDS = """
[guards]
missing_retries = 2
missing_retry_delay_s = 0.2
"""
GUARD_BINDINGS = """
[[bindings]]
task = "guarded.bare"
id_from = "args[0]"
"""


def test_guarded_task_run_through_sentinel_is_revoked_for_a_missing_row(
    env: Env, database_url: str, tmp_path: Path
) -> None:
    """A real worker on the Sentinel broker: a missing row and a finished row end REVOKED (in
    the Sentinel result backend), and the skips are counted on the master for `monitor`."""
    topology = env.topology
    config = sentinel_config(
        tmp_path / "guards.toml", topology, database_url, extra=GUARDS, bindings=GUARD_BINDINGS
    )
    options = topology.transport_options()
    conf = {"broker_transport_options": options, "result_backend_transport_options": options}
    finished = new_id()
    insert_rows(env.engine, [finished], status="done")
    log_dir = tmp_path / "worker"
    with guarded_worker(env.producer, topology.broker_url(), conf, config, log_dir):
        sent = {
            reason: env.producer.send_task("guarded.bare", args=[row], queue="guarded").id
            for reason, row in (("row_missing", new_id()), ("row_finished", finished))
        }
        for task_id in sent.values():
            result = AsyncResult(task_id, app=env.producer)
            wait_for(lambda r=result: r.state == "REVOKED", 30, what="REVOKED")  # type: ignore[misc]
        with env.master() as master:
            skips = wait_for(
                lambda: master.hgetall("task-maintenance:guard:skips") or None, 10, what="skips"
            )
    assert {k.decode(): int(v) for k, v in skips.items()} == {"row_missing": 1, "row_finished": 1}
    logs = "".join(p.read_text(errors="replace") for p in log_dir.iterdir() if p.is_file())
    assert "could not count the skip" not in logs and PASSWORD not in logs
    monitor = cli(env, "monitor", "--once", "--json", "--no-workers")
    assert json.loads(monitor.stdout)["guard_skips"] == {"row_missing": 1, "row_finished": 1}


# -- failover during a run -----------------------------------------------------------------------
@contextlib.contextmanager
def table_locked(engine: sa.Engine, table: str) -> Iterator[None]:
    """An ACCESS EXCLUSIVE lock on `table` for the block: a run that reaches the table waits
    there, between two Redis calls, until the block ends (the moment the test controls)."""
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE'))
        yield


def waiting_on_a_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        query = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool(conn.execute(sa.text(query)).scalar())


def start_cli(env: Env, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "maintenance.cli.main", "--config", str(env.config), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lrange_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0))


def test_failover_during_a_scan_fails_closed_and_the_next_scan_reads_the_new_master(
    env: Env,
) -> None:
    """The master hangs (SIGSTOP) in the middle of `check`, after it has read queue chunks, and
    the sentinels promote the replica: exit 3, "No verdict", no traceback; `check` again
    reads the new master and finds exactly the orphans."""
    topology = env.topology
    # Small chunks and look-up batches: a scan of a few hundred messages makes many calls.
    text = env.config.read_text().replace("[redis]\n", "[redis]\nchunk_size = 50\n", 1)
    env.config.write_text(text.replace("[database]\n", "[database]\nbatch_size = 50\n", 1))
    live, gone = [new_id() for _ in range(300)], [new_id() for _ in range(40)]
    insert_rows(env.engine, live)
    ids = send(env.producer, live + gone)
    old = topology.master
    with env.master() as master:
        reads_before = lrange_calls(master)
    try:
        with table_locked(env.engine, "tasks"):
            proc = start_cli(env, "check", "--json", "--no-workers")
            wait_for(lambda: waiting_on_a_lock(env.engine), 30, 0.02, "the scan's look-up")
            with env.master() as master:
                assert lrange_calls(master) > reads_before  # the scan is reading the queue
            old.pause()
            new = topology.wait_promoted(old)
        out, err = proc.communicate(timeout=120)  # the look-up goes on; the master is gone
    finally:
        old.resume()
    topology.rejoin(old)
    assert new is not old
    assert proc.returncode == 3, (out, err)
    assert "No verdict" in err and "Traceback" not in err and PASSWORD not in out + err
    again = cli(env, "check", "--json", "--no-workers")
    assert again.returncode == 1, again.stderr
    found = {f["task_id"] for f in json.loads(again.stdout)["findings"] if f["kind"] == "orphan"}
    assert found == {ids[row] for row in gone}


def test_failover_during_a_cleanup_fails_closed_and_the_next_run_finishes_it(env: Env) -> None:
    """The master hangs half way through the quarantine and the replica is promoted: exit 3,
    no traceback; on the new master every live message is still queued exactly once and every
    orphan is either still queued or quarantined, once. The next run, on the new master,
    finishes the interrupted one and quarantines the rest.

    The moment: the run's history is written 5,000 actions (or 2 s) at a time, so with the
    actions table locked (SHARE: readable, not writable) the run waits there, mid-quarantine,
    between two script calls, until the master is paused and the replica promoted.
    """
    topology = env.topology
    live, gone = [new_id() for _ in range(1000)], [new_id() for _ in range(7000)]
    insert_rows(env.engine, live)
    ids = push_copies(env, live + gone)
    HistoryStore(env.engine).init()
    old = topology.master
    command = ("cleanup", "--force", "--json", "--grace", "0", "--max-orphan-ratio", "1")
    try:
        with env.engine.connect() as conn, conn.begin():
            conn.execute(sa.text("LOCK TABLE maintenance_actions IN SHARE MODE"))
            proc = start_cli(env, *command, "--no-results")
            wait_for(lambda: waiting_on_a_lock(env.engine), 60, 0.02, "the first history write")
            with env.master() as master:
                taken_before = master.hlen(QUARANTINE)
            assert 0 < taken_before < len(gone)  # half way
            old.pause()
            topology.wait_promoted(old)
        out, err = proc.communicate(timeout=120)
    finally:
        old.resume()
    topology.rejoin(old)
    assert proc.returncode == 3, (out, err)
    assert "No verdict" in err and "Traceback" not in err and PASSWORD not in out + err
    live_ids, gone_ids = {ids[row] for row in live}, {ids[row] for row in gone}
    with env.master() as master:
        queued = queued_task_ids(master)
        quarantined = [_entry_task_id(raw) for raw in master.hvals(QUARANTINE)]
    assert len(quarantined) >= taken_before  # what the old master had done was replicated
    assert sorted(t for t in queued if t in live_ids) == sorted(live_ids)  # each exactly once
    assert not set(quarantined) & live_ids
    assert sorted([t for t in queued if t in gone_ids] + quarantined) == sorted(gone_ids)
    # The next run, on the new master, finishes the interrupted one, then the job
    again = cli(env, *command)
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout)["done"]
    assert done["quarantined"] == len(gone) - len(quarantined)
    assert done["interrupted_runs_finished"] == 1
    with env.master() as master:
        assert sorted(queued_task_ids(master)) == sorted(live_ids)
        assert master.hlen(QUARANTINE) == len(gone)
    for task_id in list(gone_ids)[:: len(gone) // 20]:
        assert AsyncResult(task_id, app=env.producer).state == "REVOKED"
    history = HistoryStore(env.engine)
    runs = history.recent_runs()
    assert sorted(r["outcome"] for r in runs) == ["failed", "ok"]
    assert sum(history.action_counts(r["id"]).get("quarantined", 0) for r in runs) == len(gone)


def push_copies(env: Env, rows: list[str]) -> dict[str, str]:
    """Row id -> task id of a `demo.process_video` message each: copies of one real message
    (new task id, row id and delivery tag, as the benchmark makes them) pushed in a few round
    trips, where thousands of sends through the sentinels would take seconds."""
    model_row = new_id()
    model_id = send(env.producer, [model_row])[model_row]
    with env.master() as master:
        raw = master.rpop(QUEUE)
        assert raw is not None and master.llen(QUEUE) == 0
        envelope = json.loads(raw)
        body = base64.b64decode(envelope["body"]).decode()
        tag = envelope["properties"]["delivery_tag"]
        ids, raws = {}, []
        for row in rows:
            ids[row] = task_id = str(uuid.uuid4())
            new_body = base64.b64encode(body.replace(model_row, row).encode()).decode()
            text = raw.decode().replace(envelope["body"], new_body).replace(model_row, row)
            raws.append(text.replace(model_id, task_id).replace(tag, str(uuid.uuid4())))
        pipe = master.pipeline(transaction=False)
        for start in range(0, len(raws), 1000):
            pipe.lpush(QUEUE, *raws[start : start + 1000])
        pipe.execute()
    return ids


def _entry_task_id(raw: bytes) -> str:
    """A quarantine entry is its metadata as JSON, a newline, then the message."""
    meta = json.loads(raw.split(b"\n", 1)[0])
    return str(meta["task_id"])


def test_a_long_lived_service_follows_a_failover_at_its_next_run(env: Env) -> None:
    """One service object kept open (as the monitor, the worker's metrics server and the Python
    API keep theirs): a run, a failover between runs (SENTINEL FAILOVER), then the next run and
    the next monitor snapshot work on the new master."""
    with Maintenance.open(load_settings(env.config, env={})) as service:
        snapshots = service.snapshots(workers=False, ping_timeout_s=0.1, workers_every_s=60)
        ids = send(env.producer, [new_id()])
        first = service.cleanup(RunOptions(grace_s=0, max_orphan_ratio=1.0))
        assert (first.outcome, first.done) == ("ok", {"quarantined": 1})
        assert snapshots.read().redis_ok
        old = env.topology.master
        assert env.topology.failover() is not old
        ids |= send(env.producer, [new_id()])
        second = service.cleanup(RunOptions(grace_s=0, max_orphan_ratio=1.0))
        assert (second.outcome, second.done) == ("ok", {"quarantined": 1}), second.error
        snapshot = snapshots.read()
        assert snapshot.redis_ok, snapshot.errors
        assert {(q.queue, q.messages) for q in snapshot.queues if q.band == 0} >= {(QUEUE, 0)}
    with env.master() as master:
        assert master.hlen(QUARANTINE) == 2 and master.llen(QUEUE) == 0
    assert {AsyncResult(t, app=env.producer).state for t in ids.values()} == {"REVOKED"}


# -- the pin (no server) -------------------------------------------------------------------------
def test_a_unit_of_work_stays_on_the_master_it_began_on() -> None:
    """The pinned pool refuses a master the sentinels name after a failover, until the next unit
    of work begins (`follow_master`); a pool that is not Sentinel's is left alone."""
    named = [("10.0.0.1", 6379)]
    manager = Sentinel([("127.0.0.1", 1)])  # type: ignore[no-untyped-call]  # no I/O yet
    manager.discover_master = lambda service_name: named[-1]  # type: ignore[method-assign]
    client = manager.master_for("mymaster")  # type: ignore[no-untyped-call]
    MasterPin().attach(client)
    pool = client.connection_pool
    assert pool.get_master_address() == ("10.0.0.1", 6379)
    named.append(("10.0.0.2", 6379))  # a failover
    with pytest.raises(MasterChanged, match=r"10\.0\.0\.1:6379 -> 10\.0\.0\.2:6379"):
        pool.get_master_address()
    follow_master(client)
    assert pool.get_master_address() == ("10.0.0.2", 6379)
    plain = redis.Redis(port=1)
    assert MasterPin().attach(plain) is plain
    follow_master(plain)  # nothing to do
