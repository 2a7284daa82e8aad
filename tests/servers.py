"""Start real Redis, PostgreSQL and MariaDB servers on loopback, on free ports, data in a temp dir.

Used by the test fixtures, the benchmark and the demo. Only processes started here are stopped,
by their own PID.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found and "postgresql" in os.path.realpath(found):
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return candidates[-1]


@dataclass
class PostgresServer:
    port: int
    directory: Path
    user: str = "maintenance"
    database: str = "maintenance"
    _as_postgres: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self._as_postgres, *cmd], check=check, capture_output=True, timeout=120
        )

    def start(self) -> PostgresServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.directory, "postgres", "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        if not self.data.exists():
            self._run(
                _pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        self.resume()
        self._run(
            _pg_bin("createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            self.database,
            check=False,
        )
        return self

    def resume(self) -> None:
        """Start (or restart) the server on the existing data directory."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=256MB"
        )
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "postgres.log"),
            "-w",
            "start",
        )
        _wait_port(self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the postmaster of *our* data directory, by its PID."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().splitlines()[0])
        sig = signal.SIGINT if mode == "fast" else signal.SIGQUIT
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def _mariadb_bin(*names: str) -> str:
    """The first of `names` on PATH or in /usr/sbin (root's PATH only may hold sbin)."""
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if found:
            return found
    raise RuntimeError(f"{' or '.join(names)} not found (apt-get install mariadb-server)")


@dataclass
class MariaDBServer:
    """A MariaDB (or MySQL) server of our own: its data dir, socket and log under `directory`.

    As root it runs as the package's `mysql` user (mariadbd refuses root without --user=root);
    the PID is mariadbd's own, so pause()/resume()/stop() act on this server only.
    """

    port: int
    directory: Path
    user: str = "maintenance"
    password: str = "maintenance-pw"
    database: str = "maintenance"
    process: subprocess.Popen[bytes] | None = None
    _run_as: str = ""

    @property
    def url(self) -> str:
        return (
            f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/"
            f"{self.database}?charset=utf8mb4"
        )

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def socket(self) -> Path:
        return self.directory / "mysql.sock"

    def start(self) -> MariaDBServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._run_as = "mysql" if _has_user("mysql") else "root"
            shutil.chown(self.directory, self._run_as, self._run_as)
        if not self.data.exists():
            cmd = [
                _mariadb_bin("mariadb-install-db", "mysql_install_db"),
                "--no-defaults",
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=16M",
            ]
            if self._run_as:
                cmd.append(f"--user={self._run_as}")
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        self.resume()
        self._create_user()
        return self

    def _create_user(self) -> None:
        """Root over the socket (no password) makes a password user for TCP and its database."""
        import pymysql  # the `mysql` extra; only the MariaDB tests need it

        conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
        try:
            with conn.cursor() as cursor:
                for host in ("127.0.0.1", "localhost"):
                    who = f"'{self.user}'@'{host}'"
                    cursor.execute(
                        f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY %s", (self.password,)
                    )
                    cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO {who}")
                cursor.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{self.database}` "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
                )
        finally:
            conn.close()

    def resume(self) -> None:
        """Go on after pause(), or start (again) on the existing data directory after stop()."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            return
        cmd = [
            _mariadb_bin("mariadbd", "mysqld"),
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.directory / 'mariadbd.pid'}",
            f"--log-error={self.directory / 'mariadb.log'}",
            "--skip-name-resolve",
            # Debian's own defaults (its my.cnf is not read): utf8mb4, case-insensitive.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--max-connections=200",
            "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
        ]
        if self._run_as:
            cmd.append(f"--user={self._run_as}")
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 60.0)
        deadline = time.monotonic() + 60
        while not self.socket.exists():  # the socket comes last, once the server takes queries
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "mariadb.log").read_text(errors="replace")
                raise RuntimeError(f"mariadbd did not start:\n{log[-2000:]}")
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as with a hung server. Returns
        once every thread has stopped: the signal reaches each one only when it is next
        scheduled, and a query sent meanwhile could still be answered."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not _all_threads_stopped(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self, mode: str = "fast") -> None:
        """Stop *our* mariadbd by its PID: "fast" shuts down cleanly, "kill" is a crash."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a paused server cannot shut down
        process.send_signal(signal.SIGKILL if mode == "kill" else signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of the process in state T (stopped), from /proc."""
    states = []
    for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:  # the thread just ended
            continue
        states.append(text.rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in "Tt" for state in states)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def remove_dir(directory: Path) -> None:
    """Delete a server's temp dir once the server has stopped (data of a test run is not kept)."""
    shutil.rmtree(directory, ignore_errors=True)


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
