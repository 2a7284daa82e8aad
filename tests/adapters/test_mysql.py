"""MariaDB's own cases, on a real server: id columns as MySQL compares them (collations, PAD
SPACE, character sets, UNSIGNED integers), and a hung or stopped server read as unavailable by
every adapter, never as missing rows."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from examples.demo.schema import new_id, tasks, utcnow
from maintenance.adapters.database import TaskDatabase, create_db_engine
from maintenance.adapters.guard_rows import RowReader, create_guard_engine, open_row_reader
from maintenance.adapters.history import ActionRecord, HistoryStore
from maintenance.adapters.stuck_rows import StuckRows
from maintenance.config import Settings, settings_from_mapping
from maintenance.core.models import RowState
from maintenance.errors import DatabaseUnavailable
from tests.servers import MariaDBServer


def _settings(url: str, table: str = "tasks", timeout_s: float = 10.0, **tasks: Any) -> Settings:
    return settings_from_mapping(
        {
            "database": {"url": url, "batch_size": 3, "connect_timeout_s": timeout_s},
            "tasks": {"table": table, **tasks},
            "bindings": [{"task": "t", "id_from": "args[0]"}],
        }
    )


@pytest.fixture
def make_table(mariadb_url: str) -> Iterator[Callable[[str, list[tuple[Any, str]]], TaskDatabase]]:
    """A `jobs` table whose id column is declared as given, with (id, status) rows in it."""
    engine = sa.create_engine(mariadb_url)

    def make(id_column: str, rows: list[tuple[Any, str]]) -> TaskDatabase:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE jobs (id {id_column} PRIMARY KEY, status TEXT)"))
            for row_id, status in rows:
                conn.execute(
                    sa.text("INSERT INTO jobs VALUES (:i, :s)"), {"i": row_id, "s": status}
                )
        settings = _settings(mariadb_url, "jobs")
        db = TaskDatabase(create_db_engine(settings), settings)
        db.validate()
        return db

    yield make
    engine.dispose()


PENDING, DONE = RowState(True, "pending"), RowState(False, "done")


def test_case_insensitive_collation_finds_the_row_under_any_case(
    make_table: Callable[[str, list[tuple[Any, str]]], TaskDatabase],
) -> None:
    """utf8mb4_general_ci (Debian's default) finds 'ABC' for 'abc' and ignores trailing
    spaces: so does the look-up, for every id asked, as the app's own queries would."""
    row = new_id()
    db = make_table("VARCHAR(36)", [(row, "pending"), ("job-1", "done")])
    asked = {row, row.upper(), "JOB-1", "job-1 ", "job-2"}
    lookup = db.lookup(asked)
    assert lookup.tasks == {row: PENDING, row.upper(): PENDING, "JOB-1": DONE, "job-1 ": DONE}
    verdicts = db.verdicts(asked, set())
    assert verdicts.fine("task", row.upper())
    assert not verdicts.fine("task", "job-2")
    reader = RowReader(db)
    assert reader.read("task", row.upper()).row == PENDING


def test_a_collation_finer_than_the_fold_asks_each_id_on_its_own(
    make_table: Callable[[str, list[tuple[Any, str]]], TaskDatabase],
) -> None:
    """general_ci takes 'ß' for 's', which case folding does not. Where the fold may be wrong
    (a row matching no id's key, a non-ASCII row or id) the batch's ids left without a row are
    asked one by one: the look-up finds exactly the ids the server's own `=` finds."""
    db = make_table("VARCHAR(36)", [("ß1", "pending"), ("t1", "done"), ("é1", "pending")])
    assert db.lookup({"s1", "t1", "x1"}).tasks == {"s1": PENDING, "t1": DONE}
    asked = ["s1", "ß1", "ss1", "ẞ1", "T1", "e1", "É1", "ê1", "x1", "ﬁ1", "t1 "]
    with db.engine.connect() as conn:
        query = sa.text("SELECT status FROM jobs WHERE id = :id")
        found = {a for a in asked if conn.execute(query, {"id": a}).first() is not None}
    assert {"s1", "ß1", "T1", "e1", "É1"} <= found  # the collation's own equalities
    assert set(db.lookup(set(asked)).tasks) == found


def test_ascii_char36_uuid_column(
    make_table: Callable[[str, list[tuple[Any, str]]], TaskDatabase],
) -> None:
    """CHAR(36) CHARACTER SET ascii COLLATE ascii_bin, the compact UUID key: exact case, and an
    id it cannot hold (non-ASCII) cannot exist, where sending it would fail the whole query."""
    row = new_id()
    db = make_table("CHAR(36) CHARACTER SET ascii COLLATE ascii_bin", [(row, "pending")])
    lookup = db.lookup({row, row.upper(), "ünï-id"})
    assert lookup.tasks == {row: PENDING}
    assert lookup.invalid == frozenset({"ünï-id"})
    assert RowReader(db).read("task", "ünï-id").row is None


@pytest.mark.parametrize(
    ("declared", "cannot_hold"),
    [("VARCHAR(36) CHARACTER SET latin1", "ĀŁ-1"), ("VARCHAR(36) CHARACTER SET utf8mb3", "😀-1")],
)
def test_ids_outside_the_columns_character_set_cannot_exist(
    make_table: Callable[[str, list[tuple[Any, str]]], TaskDatabase],
    declared: str,
    cannot_hold: str,
) -> None:
    """Comparing a latin1 or utf8mb3 column with a text it cannot hold is an error ("Illegal
    mix of collations"): such an id is invalid, and the rest of the batch is still read."""
    db = make_table(declared, [("é-1", "pending")])
    lookup = db.lookup({"é-1", "É-1", cannot_hold, "€-1"})
    assert lookup.tasks == {"é-1": PENDING, "É-1": PENDING}
    assert lookup.invalid == frozenset({cannot_hold})


@pytest.mark.parametrize(
    ("declared", "big"), [("INT UNSIGNED", 4_000_000_000), ("BIGINT UNSIGNED", 2**63 + 5)]
)
def test_unsigned_integer_ids(
    make_table: Callable[[str, list[tuple[Any, str]]], TaskDatabase], declared: str, big: int
) -> None:
    """UNSIGNED ids above the signed range exist; negative ones cannot."""
    db = make_table(declared, [(big, "pending"), (7, "done")])
    lookup = db.lookup({str(big), "7", "-1", "8", "x"})
    assert lookup.tasks == {str(big): PENDING, "7": DONE}
    assert lookup.invalid == frozenset({"-1", "x"})
    assert RowReader(db).read("task", str(big)).row == PENDING


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "mariadb+pymysql"])
def test_engine_takes_the_time_outs_and_keeps_passwords_out(mariadb_url: str, scheme: str) -> None:
    """Either URL form: connect_timeout_s bounds PyMySQL's connect and each reply, sessions are
    UTC, the tables are read; the URL's password stays out of the settings' repr."""
    url = scheme + mariadb_url.removeprefix("mysql+pymysql")
    settings = _settings(url, timeout_s=2.5)
    for engine in (create_db_engine(settings), create_guard_engine(settings)):
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            assert (raw.connect_timeout, raw._read_timeout, raw._write_timeout) == (2.5,) * 3
            assert conn.execute(sa.text("SELECT @@session.time_zone")).scalar_one() == "+00:00"
        engine.dispose()
    db = TaskDatabase(create_db_engine(settings), settings)
    row = new_id()
    with db.engine.begin() as conn:
        conn.execute(sa.insert(tasks), [{"id": row, "status": "pending", "updated_at": utcnow()}])
    assert db.lookup({row, new_id()}).tasks == {row: PENDING}
    db.engine.dispose()
    password = sa.make_url(url).password
    assert password and password not in repr(settings.database)


def test_timestamp_columns_are_read_in_utc(mariadb_url: str) -> None:
    """A server whose time zone is not UTC: TIMESTAMP values are instants, read and written in
    the session's zone, so the engine's sessions are UTC and a row 47 hours old is not yet
    stuck after 48 hours (in +05:00 it would read as 52)."""
    admin = sa.create_engine(mariadb_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        before = conn.execute(sa.text("SELECT @@global.time_zone")).scalar_one()
        conn.execute(sa.text("SET GLOBAL time_zone = '+05:00'"))
    try:
        with admin.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE jobs (id VARCHAR(36) PRIMARY KEY, status VARCHAR(20),"
                    " updated_at TIMESTAMP NULL)"
                )
            )
            for row_id, hours in (("47h", 47), ("49h", 49)):
                conn.execute(
                    sa.text(
                        "INSERT INTO jobs VALUES"
                        " (:id, 'pending', NOW() - INTERVAL :hours HOUR)"  # in +05:00
                    ),
                    {"id": row_id, "hours": hours},
                )
        settings = _settings(mariadb_url, "jobs", updated_at_column="updated_at")
        db = TaskDatabase(create_db_engine(settings), settings)
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT @@session.time_zone")).scalar_one() == "+00:00"
        stuck = list(db.iter_stuck(48 * 3600, time.time()))
        assert [row.db_id for row in stuck] == ["49h"]
        assert stuck[0].updated_at is not None
        assert abs(time.time() - stuck[0].updated_at - 49 * 3600) < 120
        db.engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text("SET GLOBAL time_zone = :tz"), {"tz": before})
        admin.dispose()


# -- a hung or stopped server ------------------------------------------------------------------
@pytest.fixture
def paused(mariadb_server: MariaDBServer) -> Iterator[Callable[[], None]]:
    """Call it to SIGSTOP the server; it goes on (SIGCONT) when the test ends, whatever happens."""
    yield mariadb_server.pause
    mariadb_server.resume()


TIMEOUT_S = 1.0


def _stale(settings: Settings, rows: int = 0) -> TaskDatabase:
    db = TaskDatabase(create_db_engine(settings), settings)
    db.validate()
    old = utcnow() - timedelta(days=2)
    if rows:
        with db.engine.begin() as conn:
            conn.execute(
                sa.insert(tasks),
                [{"id": f"{i:08d}", "status": "pending", "updated_at": old} for i in range(rows)],
            )
    return db


def _unavailable(call: Callable[[], object], what: str) -> DatabaseUnavailable:
    """The call raises DatabaseUnavailable naming `what`, within a few time-outs."""
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=what) as caught:
        call()
    assert time.monotonic() - started < 6 * TIMEOUT_S + 2
    return caught.value


def test_hung_server_at_connect_is_unavailable(
    mariadb_url: str, paused: Callable[[], None]
) -> None:
    """A stopped server accepts the TCP connect but never greets: the read time-out ends the
    handshake, and the error names no password."""
    settings = _settings(mariadb_url, timeout_s=TIMEOUT_S, updated_at_column="updated_at")
    db = _stale(settings)
    db.engine.dispose()  # no pooled connection: the next read connects anew
    paused()
    error = _unavailable(lambda: db.lookup({new_id()}), "looking up task rows")
    assert str(sa.make_url(mariadb_url).password) not in str(error)


def test_hung_server_mid_stream_is_unavailable(
    mariadb_url: str, paused: Callable[[], None]
) -> None:
    """The server stops while the stuck rows stream: the stream fails, it does not just end."""
    settings = _settings(mariadb_url, timeout_s=TIMEOUT_S, updated_at_column="updated_at")
    db = _stale(settings, rows=30_000)
    stream = db.iter_stuck(86_400, time.time())
    next(stream)
    paused()
    _unavailable(lambda: list(stream), "streaming rows still to run")


def test_hung_server_fails_every_adapter(mariadb_url: str, paused: Callable[[], None]) -> None:
    """Pooled connections already open: a scan's pinned look-up, the grace re-check, the guard's
    read, the history: each raises DatabaseUnavailable, none returns 'no rows'."""
    settings = _settings(mariadb_url, timeout_s=TIMEOUT_S, updated_at_column="updated_at")
    db = _stale(settings, rows=3)
    reader = RowReader(db)
    history = HistoryStore(db.engine)
    run_id = history.start_run("test", "cleanup")
    stuck = StuckRows(db)
    with db.pinned_verdicts() as verdicts:
        assert verdicts({"00000001"}, set()).fine("task", "00000001")
        assert reader.read("task", "00000001").row == PENDING
        paused()
        _unavailable(lambda: verdicts({"00000002"}, set()), "looking up task rows")
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: reader.read("task", "00000001"), "reading a task row"),
        (lambda: stuck.still_stuck(["00000001"], 86_400, time.time()), "re-reading stuck rows"),
        (lambda: history.record_actions(run_id, [ActionRecord("a", "b", "c", "d")]), "actions"),
        (lambda: db.lookup({"00000001"}), "looking up task rows"),
    ]
    for call, what in calls:
        _unavailable(call, what)


def test_stopped_server_is_unavailable_then_recovers(
    mariadb_server: MariaDBServer, mariadb_url: str
) -> None:
    """A server shut down under open pools: reads fail as unavailable (never as missing rows)
    while it is down, and succeed again once it is back, with the same engines. The guard's
    engine does not ping: its first read after the restart fails (the task retries), then the
    pool is new."""
    settings = _settings(mariadb_url, timeout_s=TIMEOUT_S, updated_at_column="updated_at")
    db = _stale(settings, rows=2)
    during, after = open_row_reader(settings), open_row_reader(settings)
    for reader in (during, after):
        assert reader.read("task", "00000001").row == PENDING
    mariadb_server.stop()
    try:
        _unavailable(lambda: db.lookup({"00000001"}), "looking up task rows")
        _unavailable(lambda: during.read("task", "00000001"), "reading a task row")
    finally:
        mariadb_server.resume()
    assert db.lookup({"00000001"}).tasks == {"00000001": PENDING}
    assert during.read("task", "00000001").row == PENDING
    _unavailable(lambda: after.read("task", "00000001"), "reading a task row")
    assert after.read("task", "00000001").row == PENDING
    for reader in (during, after):
        reader.close()
