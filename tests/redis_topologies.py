"""Redis set-ups beyond one plain server, on loopback, for tests/test_sentinel.py and
tests/test_tls.py: a Sentinel-managed master and replica watched by three sentinels, and a
TLS-only Redis with certificates made by the `openssl` CLI. Data lives in a temp dir; every
process started here is stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from tests.servers import free_port

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000  # a master silent this long is subjectively down
FAILOVER_TIMEOUT_MS = 3000


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install {package})")
    return found


@dataclass
class RedisProcess:
    """One `redis-server` (or `redis-sentinel`) process with its own directory and log."""

    name: str
    port: int
    directory: Path
    args: list[str]
    binary: str = "redis-server"
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def start(self) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        package = "redis-sentinel" if self.binary == "redis-sentinel" else "redis-server"
        self.process = subprocess.Popen(
            [_binary(self.binary, package), *self.args, "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        _wait_listening(self)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung host)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait_listening(proc: RedisProcess, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.process is not None
        if proc.process.poll() is not None:
            tail = proc.log.read_text(errors="replace")[-2000:] if proc.log.exists() else ""
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: nothing listening on 127.0.0.1:{proc.port}")


def _data_node_args(port: int, directory: Path, password: str) -> list[str]:
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory), "--daemonize", "no", "--loglevel", "notice"]
    args += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once (default: 5 s later)
    if password:
        args += ["--requirepass", password, "--masterauth", password]
    return args


# -- Sentinel ------------------------------------------------------------------------------------
@dataclass
class SentinelSet:
    """A master, one replica (`--replicaof`) and three sentinels monitoring `mymaster`
    (quorum 2). The data nodes require `password` when given; the sentinels require none."""

    directory: Path
    password: str = ""
    master_name: str = MASTER_NAME
    nodes: list[RedisProcess] = field(default_factory=list)  # data nodes: [first master, replica]
    sentinels: list[RedisProcess] = field(default_factory=list)

    def start(self) -> SentinelSet:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        master_port, replica_port = free_port(), free_port()
        master_dir, replica_dir = self.directory / "master", self.directory / "replica"
        master = RedisProcess(
            "master",
            master_port,
            master_dir,
            _data_node_args(master_port, master_dir, self.password),
        )
        self.nodes.append(master.start())
        replica_args = _data_node_args(replica_port, replica_dir, self.password)
        replica_args += ["--replicaof", "127.0.0.1", str(master_port)]
        self.nodes.append(RedisProcess("replica", replica_port, replica_dir, replica_args).start())
        for index in range(3):
            port = free_port()
            directory = self.directory / f"sentinel{index}"
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"  # sentinels rewrite their config: one file each
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {directory}",
                f"sentinel monitor {self.master_name} 127.0.0.1 {master_port} 2",
                f"sentinel down-after-milliseconds {self.master_name} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {self.master_name} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {self.master_name} 1",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
            conf.write_text("\n".join(lines) + "\n")
            if shutil.which("redis-sentinel"):  # Debian's redis-sentinel package
                sentinel = RedisProcess(
                    f"sentinel{index}", port, directory, [str(conf)], binary="redis-sentinel"
                )
            else:  # the same server binary in sentinel mode
                sentinel = RedisProcess(
                    f"sentinel{index}", port, directory, [str(conf), "--sentinel"]
                )
            self.sentinels.append(sentinel.start())
        self.wait_ready()

    # -- addresses -----------------------------------------------------------------------------
    def broker_url(self, db: int = 0) -> str:
        """kombu's and Celery's form: `sentinel://[:pw@]host:port;sentinel://...` (the db on
        each)."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}127.0.0.1:{s.port}/{db}" for s in self.sentinels)

    def transport_options(self) -> dict[str, Any]:
        return {"master_name": self.master_name}

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinels[index].port, socket_timeout=2)

    def reported_master(self, index: int = 0) -> int | None:
        """The master port one sentinel reports (None while it knows none)."""
        with contextlib.closing(self.sentinel_client(index)) as client:
            address = _sentinel(client, "get-master-addr-by-name", self.master_name)
        return int(address[1]) if address else None

    @property
    def master(self) -> RedisProcess:
        """The data node every sentinel reports as the master right now."""
        port = self.reported_master()
        return next(node for node in self.nodes if node.port == port)

    @property
    def replica(self) -> RedisProcess:
        return next(node for node in self.nodes if node is not self.master)

    def client(self, node: RedisProcess | None = None, db: int = 0) -> redis.Redis:
        """A direct client of one data node (the current master by default)."""
        node = node or self.master
        return redis.Redis(port=node.port, db=db, password=self.password or None, socket_timeout=5)

    # -- waiting and failing over ---------------------------------------------------------------
    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Every sentinel reports the same master, knows the two other sentinels and the
        replica, and the replica is in sync: then a failover has a quorum and a candidate."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"the sentinels did not settle in {timeout_s}s: {self._state()}")

    def _ready(self) -> bool:
        state = self._state()
        masters = {s["master"] for s in state}
        return (
            len(masters) == 1
            and None not in masters
            and all(
                s["sentinels"] == 2 and s["replicas"] >= 1 and s["flags"] == "master" for s in state
            )
            and self._replica_in_sync(masters.pop())
        )

    def _state(self) -> list[dict[str, Any]]:
        out = []
        for index in range(len(self.sentinels)):
            try:
                with contextlib.closing(self.sentinel_client(index)) as client:
                    info = _sentinel(client, "master", self.master_name)
                    fields = (
                        dict(zip(info[::2], info[1::2], strict=True))
                        if isinstance(info, list)
                        else info
                    )
                    fields = {_text(k): _text(v) for k, v in fields.items()}
                    out.append(
                        {
                            "master": int(fields["port"]),
                            "flags": fields["flags"],
                            "sentinels": int(fields["num-other-sentinels"]),
                            "replicas": int(fields["num-slaves"]),
                        }
                    )
            except (redis.RedisError, KeyError):
                out.append({"master": None, "flags": "?", "sentinels": 0, "replicas": 0})
        return out

    def _replica_in_sync(self, master_port: int) -> bool:
        replicas = [node for node in self.nodes if node.port != master_port]
        try:
            for node in replicas:
                with contextlib.closing(self.client(node)) as client:
                    info = client.info("replication")
                    if info.get("role") != "slave" or info.get("master_link_status") != "up":
                        return False
                    if int(info.get("master_port", 0)) != master_port:
                        return False
        except redis.RedisError:
            return False
        return True

    def failover(self, timeout_s: float = 30.0) -> RedisProcess:
        """`SENTINEL FAILOVER`: promote the replica; returns the new master once every sentinel
        reports it and the old master replicates from it."""
        old = self.master
        with contextlib.closing(self.sentinel_client()) as client:
            _sentinel(client, "FAILOVER", self.master_name)
        new = self.wait_promoted(old, timeout_s)
        self.rejoin(old)
        return new

    def wait_promoted(self, old: RedisProcess, timeout_s: float = 30.0) -> RedisProcess:
        """Until every sentinel reports another master than `old` (paused, or demoted)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ports = {self.reported_master(i) for i in range(len(self.sentinels))}
            if len(ports) == 1 and old.port not in ports and None not in ports:
                return self.master
            time.sleep(0.05)
        raise RuntimeError(f"no new master after {timeout_s}s: {self._state()}")

    def rejoin(self, old: RedisProcess, timeout_s: float = 30.0) -> None:
        """The old master (running again) replicates from the new one; the set is ready for
        the next failover.

        Sentinel itself demotes a returning old master only on its next INFO round, up to 10 s
        later (a fixed period); the `REPLICAOF` it would send is sent here at once.
        """
        with contextlib.closing(self.client(old)) as client:
            client.replicaof("127.0.0.1", self.master.port)
        self.wait_ready(timeout_s)

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.nodes]:
            proc.stop()


def _sentinel(client: redis.Redis, *args: str) -> Any:
    """A `SENTINEL ...` command, its reply as redis-py parses it (untyped)."""
    return client.execute_command("SENTINEL", *args)  # type: ignore[no-untyped-call]


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


# -- TLS -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certificates:
    """A test CA and what it signed, plus a second CA nobody trusts (for the wrong-CA test)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.directory / "other-ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [_binary("openssl", "openssl"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, all by
    the `openssl` CLI (EC P-256 keys: fast to make), valid two days."""
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certificates(directory)
    for name, subject in (("ca", "task-maintenance test CA"), ("other-ca", "an unrelated CA")):
        _openssl(
            "req", "-x509", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN={subject}", cwd=directory,
        )  # fmt: skip
    leaves = {
        "server": ("localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth\n"),
        "client": ("task-maintenance", "extendedKeyUsage=clientAuth\n"),
    }  # fmt: skip
    for name, (common_name, extensions) in leaves.items():
        (directory / f"{name}.ext").write_text(extensions)
        _openssl(
            "req", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={common_name}", cwd=directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=directory,
        )  # fmt: skip
    return certs


@dataclass
class TlsRedis:
    """`redis-server --port 0 --tls-port P`: TLS only, on 127.0.0.1 and 127.0.0.2 (the second
    address is on loopback too but in no certificate: the hostname-mismatch case)."""

    directory: Path
    certs: Certificates
    auth_clients: str = "optional"  # `--tls-auth-clients`: no | optional | yes
    password: str = ""
    port: int = 0
    proc: RedisProcess | None = None

    def start(self) -> TlsRedis:
        self.port = self.port or free_port()
        args = ["--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "127.0.0.2"]
        args += ["--tls-cert-file", str(self.certs.server_cert)]
        args += ["--tls-key-file", str(self.certs.server_key)]
        args += ["--tls-ca-cert-file", str(self.certs.ca)]
        args += ["--tls-auth-clients", self.auth_clients]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = RedisProcess(f"tls-{self.auth_clients}", self.port, self.directory, args)
        self.proc.start()
        return self

    def url(
        self,
        db: int = 0,
        *,
        host: str = "127.0.0.1",
        ca: Path | None = None,
        client_cert: bool = False,
    ) -> str:
        """Celery's documented `rediss://` form: the certificate settings as query parameters."""
        query = f"ssl_cert_reqs=required&ssl_ca_certs={ca or self.certs.ca}"
        if client_cert:
            query += f"&ssl_certfile={self.certs.client_cert}&ssl_keyfile={self.certs.client_key}"
        return f"{self.bare_url(db, host=host)}?{query}"

    def bare_url(self, db: int = 0, *, host: str = "127.0.0.1") -> str:
        """`rediss://` with no query: the certificates come from elsewhere (broker_use_ssl)."""
        auth = f":{self.password}@" if self.password else ""
        return f"rediss://{auth}{host}:{self.port}/{db}"

    def ssl_options(self, *, client_cert: bool = True) -> dict[str, str]:
        """Celery's `broker_use_ssl` / `redis_backend_use_ssl` form of the same settings."""
        options = {"ssl_cert_reqs": "required", "ssl_ca_certs": str(self.certs.ca)}
        if client_cert:
            options |= {
                "ssl_certfile": str(self.certs.client_cert),
                "ssl_keyfile": str(self.certs.client_key),
            }
        return options

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            port=self.port,
            db=db,
            password=self.password or None,
            ssl=True,
            ssl_ca_certs=str(self.certs.ca),
            ssl_certfile=str(self.certs.client_cert),
            ssl_keyfile=str(self.certs.client_key),
            socket_timeout=5,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@contextlib.contextmanager
def paused(proc: RedisProcess) -> Iterator[None]:
    """SIGSTOP for the block, SIGCONT after it whatever happens."""
    proc.pause()
    try:
        yield
    finally:
        proc.resume()


# -- a guarded worker ----------------------------------------------------------------------------
@contextlib.contextmanager
def guarded_worker(
    client: Celery,
    broker_url: str,
    celery_conf: dict[str, Any],
    config: Path,
    log_dir: Path,
    queue: str = "guarded",
) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A tests.topology_app worker` (the guarded tasks) on `broker_url` with
    `celery_conf`, until the block ends; ready once it answers `client`'s ping."""
    root = Path(__file__).resolve().parent.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"{queue}-{os.getpid()}-{time.monotonic_ns()}@localhost"
    env = {
        **os.environ,
        "C_FORCE_ROOT": "1",
        "GUARD_BROKER_URL": broker_url,
        "TOPOLOGY_CELERY_CONF": json.dumps(celery_conf),
        "MAINTENANCE_CONFIG": str(config),
        "GUARD_LOG_DIR": str(log_dir),
        "PYTHONPATH": str(root),
    }
    command = [sys.executable, "-m", "celery", "-A", "tests.topology_app", "worker"]
    command += ["-P", "solo", "-Q", queue, "-n", name, "--without-gossip", "--without-mingle"]
    command += ["--without-heartbeat", "-l", "INFO"]
    with (log_dir / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 60
        while not client.control.ping(destination=[name], timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((log_dir / "stderr.log").read_text(errors="replace"))
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
