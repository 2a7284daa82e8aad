"""Over TLS, for real: `redis-server --tls-port` with certificates the test makes
(tests/redis_topologies.py); check, cleanup, monitor and a guarded worker through `rediss://`,
client certificates, and certificate errors reported as such."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult

from examples.demo.schema import new_id
from maintenance.adapters.celery_app import build_celery_app
from maintenance.cli.celery_command import settings_from_app
from maintenance.config import settings_from_mapping
from maintenance.errors import ConfigError
from tests.actions.test_run import QUARANTINE, QUEUE, insert_rows, queued_task_ids, send
from tests.conftest import producer_app, run_cli, wait_for, write_config
from tests.redis_topologies import Certificates, TlsRedis, guarded_worker, make_certificates
from tests.servers import remove_dir

PASSWORD = "tls-pw"  # the servers require it; it must never be printed


@pytest.fixture(scope="module")
def tls_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="tm-tls-"))
    yield directory
    remove_dir(directory)


@pytest.fixture(scope="module")
def certs(tls_dir: Path) -> Certificates:
    return make_certificates(tls_dir / "certs")


@pytest.fixture(scope="module")
def tls_redis(tls_dir: Path, certs: Certificates) -> Iterator[TlsRedis]:
    """Client certificates optional (`--tls-auth-clients optional`)."""
    server = TlsRedis(tls_dir / "optional", certs, "optional", password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_redis(tls_dir: Path, certs: Certificates) -> Iterator[TlsRedis]:
    """Client certificates required (`--tls-auth-clients yes`)."""
    server = TlsRedis(tls_dir / "required", certs, "yes", password=PASSWORD).start()
    yield server
    server.stop()


@dataclass
class Env:
    server: TlsRedis
    config: Path
    producer: Celery
    engine: sa.Engine

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = run_cli("--config", str(config or self.config), *args)
        assert PASSWORD not in result.stdout + result.stderr
        return result


def tls_config(
    path: Path,
    url: str,
    database_url: str,
    ssl: dict[str, str] | None = None,
    *,
    fails: bool = False,
    **kw: Any,
) -> Path:
    """write_config for a `rediss://` URL, with `[redis] ssl` when given. A config that
    `fails` connects once: kombu would retry a refused handshake twice, over ~7 s."""
    config = write_config(path, url, database_url, **kw)
    text = config.read_text().replace("inspect_timeout_s = 1.0", "inspect_timeout_s = 0.3", 1)
    keys = ""
    if ssl:
        keys += "ssl = { " + ", ".join(f'{k} = "{v}"' for k, v in ssl.items()) + " }\n"
    if fails:
        keys += "transport_options = { max_retries = 0 }\n"
    config.write_text(text.replace("[redis]\n", f"[redis]\n{keys}", 1))
    return config


@pytest.fixture
def env(tls_redis: TlsRedis, database_url: str, engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    with tls_redis.client() as client:
        client.flushall()
    producer = producer_app(tls_redis.url())
    config = tls_config(tmp_path / "maintenance.toml", tls_redis.url(), database_url)
    yield Env(tls_redis, config, producer, engine)
    producer.close()


def orphans_in(check: subprocess.CompletedProcess[str]) -> set[str]:
    assert check.returncode == 1, check.stderr
    return {f["task_id"] for f in json.loads(check.stdout)["findings"] if f["kind"] == "orphan"}


def test_check_cleanup_and_monitor_over_tls(env: Env) -> None:
    """Celery's documented URL form (`rediss://...?ssl_cert_reqs=required&ssl_ca_certs=...`):
    `check` finds exactly the orphans, `monitor` reads the depths, `cleanup` quarantines
    exactly the orphans and marks them REVOKED, all over verified TLS."""
    live, gone = [new_id() for _ in range(5)], [new_id() for _ in range(3)]
    insert_rows(env.engine, live)
    ids = send(env.producer, live + gone)
    assert orphans_in(env.cli("check", "--json")) == {ids[row] for row in gone}
    monitor = env.cli("monitor", "--once", "--json", "--no-workers")
    depths = {(q["queue"], q["band"]): q["messages"] for q in json.loads(monitor.stdout)["queues"]}
    assert depths[(QUEUE, 0)] == len(live + gone)
    cleanup = env.cli("cleanup", "--force", "--json", "--grace", "0", "--max-orphan-ratio", "1")
    assert cleanup.returncode == 0, cleanup.stderr
    assert json.loads(cleanup.stdout)["done"] == {"quarantined": len(gone)}
    with env.server.client() as client:
        assert sorted(queued_task_ids(client)) == sorted(ids[row] for row in live)
        assert client.hlen(QUARANTINE) == len(gone)
    assert {AsyncResult(ids[row], app=env.producer).state for row in gone} == {"REVOKED"}


def test_client_certificate_from_the_ssl_table(
    mtls_redis: TlsRedis, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """A server that requires client certificates, and the certificates in `[redis] ssl` (the
    app's `broker_use_ssl` form, the URL bare): check and cleanup work; without the client
    certificate, exit 3 naming the problem."""
    server = mtls_redis
    with server.client() as client:
        client.flushall()
    options = server.ssl_options()
    producer = producer_app(
        server.bare_url(), broker_use_ssl=options, redis_backend_use_ssl=options
    )
    try:
        live, gone = new_id(), new_id()
        insert_rows(engine, [live])
        ids = send(producer, [live, gone])
        config = tls_config(tmp_path / "m.toml", server.bare_url(), database_url, ssl=options)
        env = Env(server, config, producer, engine)
        assert orphans_in(env.cli("check", "--json")) == {ids[gone]}
        cleanup = env.cli("cleanup", "--force", "--json", "--grace", "0", "--max-orphan-ratio", "1")
        assert cleanup.returncode == 0, cleanup.stderr
        assert json.loads(cleanup.stdout)["done"] == {"quarantined": 1}
        assert AsyncResult(ids[gone], app=producer).state == "REVOKED"
        with server.client() as client:
            assert queued_task_ids(client) == [ids[live]]
        no_cert = server.ssl_options(client_cert=False)
        bare = tls_config(
            tmp_path / "no-cert.toml", server.bare_url(), database_url, ssl=no_cert, fails=True
        )
        refused = env.cli("check", config=bare)
    finally:
        producer.close()
    assert refused.returncode == 3, refused.stderr
    first = refused.stderr.splitlines()[0]
    assert "TLS" in first and "client certificate" in first, refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("what", "problem"),
    [
        ("wrong_ca", "self-signed certificate in certificate chain"),
        ("host_mismatch", "IP address mismatch, certificate is not valid for '127.0.0.2'"),
    ],
)
def test_certificate_errors_exit_3_naming_the_problem(
    env: Env, database_url: str, tmp_path: Path, what: str, problem: str
) -> None:
    """A CA that did not sign the server's certificate, or a host the certificate is not for:
    exit 3 and one line that says it is the certificate, no traceback."""
    server = env.server
    if what == "wrong_ca":
        url = server.url(ca=server.certs.other_ca)
    else:
        url = server.url(host="127.0.0.2")  # loopback, but in no certificate
    config = tls_config(tmp_path / f"{what}.toml", url, database_url, fails=True)
    result = env.cli("check", config=config)
    assert result.returncode == 3, result.stderr
    first = result.stderr.splitlines()[0]
    assert "TLS certificate verify failed: " in first and problem in first, result.stderr
    assert "No verdict" in result.stderr and "Traceback" not in result.stderr


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


def test_guarded_tasks_run_over_mutual_tls(
    mtls_redis: TlsRedis, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """A real worker on a broker that requires client certificates (all in the URL): a live
    row's task runs, a missing row's ends REVOKED, and the skip is counted for `monitor`."""
    server = mtls_redis
    with server.client() as client:
        client.flushall()
    url = server.url(client_cert=True)
    producer = producer_app(url)
    config = tls_config(
        tmp_path / "guards.toml", url, database_url, extra=GUARDS, bindings=GUARD_BINDINGS
    )
    live = new_id()
    insert_rows(engine, [live])
    try:
        with guarded_worker(producer, url, {}, config, tmp_path / "worker"):
            sent = {
                row: producer.send_task("guarded.bare", args=[row], queue="guarded").id
                for row in (live, new_id())
            }
            states = [
                wait_for(
                    lambda t=task_id: _final(producer, t),  # type: ignore[misc]
                    30,
                    what="a final state",
                )
                for task_id in sent.values()
            ]
        with server.client() as client:
            skips = {
                k.decode(): int(v)
                for k, v in client.hgetall("task-maintenance:guard:skips").items()
            }
            assert int(client.get(f"guarded:runs:{live}") or 0) == 1
    finally:
        producer.close()
    assert states == ["SUCCESS", "REVOKED"]
    assert skips == {"row_missing": 1}
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "worker").iterdir())
    assert "could not count the skip" not in logs and PASSWORD not in logs


def _final(app: Celery, task_id: str) -> str | None:
    state = str(AsyncResult(task_id, app=app).state)
    return state if state in {"SUCCESS", "FAILURE", "REVOKED"} else None


# -- the settings (no server) --------------------------------------------------------------------
def test_ssl_tables_reach_kombu_and_the_result_backend() -> None:
    """`[redis] ssl` is the broker's broker_use_ssl and, with the results on the broker, the
    backend's too; certificates are verified unless the table says otherwise."""
    files = {"ssl_ca_certs": "/etc/ca.pem", "ssl_certfile": "/etc/c.pem", "ssl_keyfile": "/k"}
    settings = settings_from_mapping({"redis": {"broker_url": "rediss://h:6380/0", "ssl": files}})
    app = build_celery_app(settings)
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": "required", **files}
    assert app.conf.redis_backend_use_ssl == {"ssl_cert_reqs": "required", **files}
    apart = settings_from_mapping(
        {"redis": {"ssl": files, "result_backend_url": "redis://other:6379/1"}}
    )
    assert build_celery_app(apart).conf.redis_backend_use_ssl is None
    plain = build_celery_app(settings_from_mapping({}))
    assert plain.conf.broker_use_ssl is False and plain.conf.redis_backend_use_ssl is None


@pytest.mark.parametrize(
    ("ssl", "key"),
    [
        ({"ca_certs": "/etc/ca.pem"}, "redis.ssl.ca_certs"),
        ({"ssl_cert_reqs": "sometimes"}, "redis.ssl.ssl_cert_reqs"),
    ],
)
def test_ssl_table_typos_are_config_errors(ssl: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        settings_from_mapping({"redis": {"ssl": ssl}})


def test_the_celery_apps_broker_use_ssl_is_taken_under_celery_a() -> None:
    """`celery -A proj maintenance`: the app's TLS dicts come along with its broker URL."""
    conf = {
        "broker_url": "rediss://h:6380/0",
        "broker_use_ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"},
        "redis_backend_use_ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": "/other.pem"},
    }
    settings = settings_from_app(settings_from_mapping({}), conf, env={})
    assert settings.redis.ssl == conf["broker_use_ssl"]
    assert settings.redis.result_backend_ssl == conf["redis_backend_use_ssl"]
