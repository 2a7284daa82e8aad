"""Read the queues and `unacked` message by message, for a listing or a purge's selection.

Unlike the scan, nothing is looked up in the database: a listing shows what the messages say,
and a purge selects by task name, queue and arguments. Chunked like the scan (a moving list may
show a message twice, never hides one that stays); `sample` reads only each band's last
messages, the ones workers take next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from maintenance.adapters.redis_reader import RedisReader
from maintenance.core.bindings import BindingTable
from maintenance.core.envelope import is_tombstone, read_envelope
from maintenance.core.inventory import Described, decode, describe
from maintenance.core.models import Location, Where


def browse(
    reader: RedisReader,
    bindings: BindingTable,
    queues: Sequence[str],
    *,
    name: Callable[[str], bool],
    sample: int | None = None,
    unacked: bool = True,
) -> Iterator[Described]:
    for queue in queues:
        for band, key in reader.layout.queue_keys(queue):
            yield from _browse_list(reader, bindings, queue, band, key, name, sample)
    if unacked:
        yield from _browse_unacked(reader, bindings, queues, name)


def _browse_list(
    reader: RedisReader,
    bindings: BindingTable,
    queue: str,
    band: int,
    key: str,
    name: Callable[[str], bool],
    sample: int | None,
) -> Iterator[Described]:
    place = Location(Where.QUEUE, queue=queue, priority=band, key=key)
    chunks = reader.iter_list(key) if sample is None else reader.iter_tail(key, sample)
    for start, chunk in chunks:
        for offset, raw in enumerate(chunk):
            payload = decode(raw)
            if not name(_task_name(payload, place, bindings)):
                continue
            at = Location(Where.QUEUE, queue, band, key, start + offset)
            described = describe(payload, at, bindings)
            if not is_tombstone(described.msg):  # ours: workers discard it
                yield described


def _browse_unacked(
    reader: RedisReader,
    bindings: BindingTable,
    queues: Sequence[str],
    name: Callable[[str], bool],
) -> Iterator[Described]:
    """Entries of these queues (by their routing key); one naming none is shown too."""
    for entries in reader.iter_unacked():
        for entry in entries:
            doc = decode(entry.raw)
            if not (isinstance(doc, list) and doc and isinstance(doc[0], dict)):
                continue
            where = Location(
                Where.UNACKED,
                queue=doc[2] if len(doc) >= 3 and isinstance(doc[2], str) else "",
                key=reader.layout.unacked,
                delivery_tag=entry.delivery_tag,
            )
            if where.queue and where.queue not in queues:
                continue
            if name(_task_name(doc[0], where, bindings)):
                yield describe(doc[0], where, bindings, taken_at=entry.taken_at)


def _task_name(payload: object, place: Location, bindings: BindingTable) -> str:
    """The cheap test first: protocol 2 names its task in the headers."""
    if isinstance(payload, dict):
        headers = payload.get("headers")
        if isinstance(headers, dict) and isinstance(headers.get("task"), str):
            return str(headers["task"])
    return read_envelope(payload, place, bindings).task_name
