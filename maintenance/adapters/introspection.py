"""Read-only looks at an app's database and broker for `config init` and `config check`.

Everything is bounded: the tables through SQLAlchemy's inspector (all schemas on PostgreSQL),
the distinct statuses of at most `status_rows` rows, the ids of a sample in one query per table;
in Redis, SCAN with COUNT (never KEYS) for kombu's binding sets and the lists, at most
`max_scan_calls` calls each, SSCAN for the sets' members, and at most N messages per queue
(LRANGE 0..N-1). Driver errors become ours, as in every adapter.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine, Inspector

from maintenance.adapters.database import database_errors
from maintenance.adapters.id_coercion import IdCoercer
from maintenance.adapters.redis_layout import BrokerLayout, _glob_escape
from maintenance.adapters.redis_reader import broker_errors
from maintenance.core.proposals import (
    ColumnFact,
    ColumnKind,
    ForeignKeyFact,
    ListFact,
    QueueFact,
    TableFact,
    binding_prefixes,
)

SYSTEM_SCHEMAS = ("information_schema",)  # and every pg_* one
ID_BATCH = 5000  # ids per look-up query, as database.batch_size


@dataclass(frozen=True)
class StatusSample:
    values: tuple[str, ...]
    complete: bool  # every row was read (else: the newest `status_rows` by primary key)


def column_kind(col_type: Any) -> ColumnKind:
    """What a column can serve as, from its SQLAlchemy type (an enum is text)."""
    if isinstance(col_type, sa.Uuid):
        return "uuid"
    if isinstance(col_type, sa.Integer):
        return "integer"
    if isinstance(col_type, sa.String):
        return "string"
    if isinstance(col_type, sa.DateTime | sa.Date):
        return "datetime"
    if isinstance(col_type, sa.Numeric):
        return "number"
    return "other"


class SchemaReader:
    """The app's tables as `TableFact`s, their statuses and which ids exist; reads only."""

    def __init__(
        self, engine: Engine, *, status_rows: int = 200_000, max_statuses: int = 100
    ) -> None:
        self.engine = engine
        self.status_rows = status_rows
        self.max_statuses = max_statuses
        self._reflected: dict[str, sa.Table] = {}

    def tables(self) -> list[TableFact]:
        """Every table of every schema the connection can see (PostgreSQL), or of the default
        schema (other databases); the default schema's tables carry no schema name."""
        with database_errors("reading the schema"):
            inspector = sa.inspect(self.engine)
            facts: list[TableFact] = []
            for schema in self._schemas(inspector):
                facts += self._facts(inspector, schema, None)
        return sorted(facts, key=lambda t: (t.schema, t.name))

    def table(self, name: str, schema: str = "") -> TableFact | None:
        """One table as a fact; None when it does not exist."""
        with database_errors("reading the schema"):
            inspector = sa.inspect(self.engine)
            default = inspector.default_schema_name
            wanted = None if schema in ("", default) else schema
            if not inspector.has_table(name, schema=wanted):
                return None
            facts = self._facts(inspector, wanted, [name])
        return facts[0] if facts else None

    def statuses(self, fact: TableFact, column: str) -> StatusSample:
        """The distinct values of `column` among at most `status_rows` rows, the newest by
        primary key first (for a serial key, the rows most likely still to run)."""
        table = self._table(fact)
        col = table.c[column]
        inner = sa.select(col.label("status"))
        pk = [table.c[name] for name in fact.primary_key if name in table.c]
        if pk:
            inner = inner.order_by(*(c.desc() for c in pk))
        sub = inner.limit(self.status_rows + 1).subquery()
        query = sa.select(sub.c.status).distinct().limit(self.max_statuses)
        count = sa.select(sa.func.count()).select_from(sub)
        with database_errors("reading the statuses present"), self.engine.connect() as conn:
            values = sorted(str(v) for (v,) in conn.execute(query) if v is not None)
            rows = int(conn.execute(count).scalar_one())
        return StatusSample(tuple(values), rows <= self.status_rows)

    def existing_ids(self, fact: TableFact, column: str, values: Collection[str]) -> set[str]:
        """Which of `values` are ids in `column`: one query per ID_BATCH values; a value that
        cannot be an id of the column's type is not asked about."""
        col = self._table(fact).c[column]
        coerce = IdCoercer.for_column(col)
        by_value, _ = coerce.group(values)
        as_param = uuid.UUID if coerce.python_type is uuid.UUID else None
        keys = list(by_value)
        found: set[str] = set()
        with database_errors("looking up sampled ids"), self.engine.connect() as conn:
            for start in range(0, len(keys), ID_BATCH):
                chunk = keys[start : start + ID_BATCH]
                params = [as_param(k) for k in chunk] if as_param else chunk
                for (row_id,) in conn.execute(sa.select(col).where(col.in_(params))):
                    found.update(by_value.get(coerce(str(row_id)), ()))
        return found

    def _table(self, fact: TableFact) -> sa.Table:
        table = self._reflected.get(fact.qualified)
        if table is None:
            with database_errors("reading the schema"):
                table = sa.Table(
                    fact.name, sa.MetaData(), autoload_with=self.engine, schema=fact.schema or None
                )
            self._reflected[fact.qualified] = table
        return table

    def _schemas(self, inspector: Inspector) -> list[str | None]:
        if self.engine.dialect.name != "postgresql":
            return [None]
        default = inspector.default_schema_name
        others = [
            s
            for s in inspector.get_schema_names()
            if s != default and s not in SYSTEM_SCHEMAS and not s.startswith("pg_")
        ]
        return [None, *sorted(others)]

    def _facts(
        self, inspector: Inspector, schema: str | None, names: Sequence[str] | None
    ) -> list[TableFact]:
        """Columns, primary keys and foreign keys of a schema's tables, in a few queries (the
        inspector's multi-table reads), not three per table."""
        default = inspector.default_schema_name
        columns = inspector.get_multi_columns(schema=schema, filter_names=names)
        pks = inspector.get_multi_pk_constraint(schema=schema, filter_names=names)
        fks = inspector.get_multi_foreign_keys(schema=schema, filter_names=names)
        facts = []
        for key, cols in columns.items():
            _, name = key
            pk: Mapping[str, Any] = pks.get(key) or {}
            foreign = [
                ForeignKeyFact(
                    columns=tuple(fk["constrained_columns"]),
                    target=_qualified(fk.get("referred_schema"), fk["referred_table"], default),
                    target_columns=tuple(fk["referred_columns"]),
                )
                for fk in fks.get(key, [])
            ]
            facts.append(
                TableFact(
                    name=name,
                    schema="" if schema in (None, default) else str(schema),
                    columns=tuple(
                        ColumnFact(c["name"], column_kind(c["type"]), self._type_name(c["type"]))
                        for c in cols
                    ),
                    primary_key=tuple(pk.get("constrained_columns") or ()),
                    foreign_keys=tuple(foreign),
                )
            )
        return facts

    def _type_name(self, col_type: Any) -> str:
        try:
            return str(col_type.compile(dialect=self.engine.dialect))
        except Exception:  # a type the dialect cannot render: its class name will do
            return type(col_type).__name__


def _qualified(schema: str | None, name: str, default: str | None) -> str:
    return f"{schema}.{name}" if schema and schema != default else name


class BrokerSurvey:
    """The queues kombu knows of in the broker, their lengths per priority band, and samples."""

    def __init__(
        self,
        client: redis.Redis,
        layout: BrokerLayout,
        *,
        count: int = 1000,
        max_scan_calls: int = 1000,
        max_members: int = 10_000,
        max_lists: int = 10_000,
    ) -> None:
        self.client = client
        self.layout = layout
        self.count = count
        self.max_scan_calls = max_scan_calls
        self.max_members = max_members
        self.max_lists = max_lists
        self.complete = True  # False once a bound (calls, members, lists) cut a read short

    def bindings(self) -> dict[str, set[str]]:
        """kombu's binding sets: exchange -> members (`routing_key SEP pattern SEP queue`)."""
        prefix = self.layout.global_keyprefix + "_kombu.binding."
        found: dict[str, set[str]] = {}
        with broker_errors("reading kombu's bindings"):
            for key in self._scan(_glob_escape(prefix) + "*", None):
                members = found.setdefault(key[len(prefix) :], set())
                for member in self._members(key):
                    members.add(member)
        return found

    def prefixes(self) -> set[str]:
        """Global key prefixes in front of kombu's binding sets, whatever ours is: an app that
        sets `global_keyprefix` keeps its bindings where the default prefix does not look."""
        with broker_errors("looking for kombu's bindings"):
            return binding_prefixes(self._scan("*_kombu.binding.*", None))

    def with_prefix(self, prefix: str) -> BrokerSurvey:
        """The same reads under another global key prefix (the app's, found by `prefixes`)."""
        return BrokerSurvey(
            self.client,
            replace(self.layout, global_keyprefix=prefix),
            count=self.count,
            max_scan_calls=self.max_scan_calls,
            max_members=self.max_members,
            max_lists=self.max_lists,
        )

    def lists(self) -> list[ListFact]:
        """Every list under the global prefix (the prefix taken off), with its length and first
        element: whether it holds Celery messages is decided from that element."""
        prefix = self.layout.global_keyprefix
        keys: list[str] = []
        with broker_errors("listing the queues"):
            for key in self._scan(_glob_escape(prefix) + "*", "list"):
                if len(keys) >= self.max_lists:
                    self.complete = False
                    break
                keys.append(key)
            facts: list[ListFact] = []
            for start in range(0, len(keys), self.count):
                chunk = keys[start : start + self.count]
                pipe = self.client.pipeline(transaction=False)
                for key in chunk:
                    pipe.llen(key)
                    pipe.lindex(key, 0)
                replies = pipe.execute()
                for index, key in enumerate(chunk):
                    length, head = replies[2 * index], replies[2 * index + 1]
                    facts.append(ListFact(key[len(prefix) :], int(length), _raw(head)))
        return facts

    def sample(self, queue: QueueFact, limit: int, sep: str | None = None) -> list[bytes]:
        """At most `limit` messages of a queue, band 0 first: LRANGE 0..N-1 per band list.
        `sep`: the separator the app's kombu uses, when it is not the layout's."""
        out: list[bytes] = []
        layout = self.layout if sep is None else replace(self.layout, sep=sep)
        with broker_errors(f"sampling queue {queue.name!r}"):
            for band, length in sorted(queue.lengths.items()):
                if len(out) >= limit or not length:
                    continue
                key = layout.queue_key(queue.name, band)
                out += [
                    raw
                    for item in self.client.lrange(key, 0, limit - len(out) - 1)
                    if (raw := _raw(item)) is not None
                ]
        return out

    def _scan(self, match: str, type_: str | None) -> Iterator[str]:
        cursor, calls = 0, 0
        while True:
            if calls >= self.max_scan_calls:
                self.complete = False
                return
            try:
                cursor, keys = self.client.scan(cursor, match=match, count=self.count, _type=type_)
            except redis.ResponseError:  # Redis < 6: no TYPE option; ask each key's type
                if type_ is None:
                    raise
                cursor, keys = self.client.scan(cursor, match=match, count=self.count)
                keys = [k for k in keys if _text(self.client.type(k)) == type_]
            calls += 1
            for key in keys:
                if (text := _text(key)) is not None:
                    yield text
            if cursor == 0:
                return

    def _members(self, key: str) -> Iterator[str]:
        cursor, seen = 0, 0
        while True:
            cursor, members = self.client.sscan(key, cursor, count=self.count)
            for member in members:
                if (text := _text(member)) is not None:
                    seen += 1
                    yield text
            if cursor == 0:
                return
            if seen >= self.max_members:
                self.complete = False
                return


def _text(value: Any) -> str | None:
    """A key or member as text; one that is not UTF-8 names no queue of a Celery app."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return None if value is None else str(value)


def _raw(value: Any) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode()
