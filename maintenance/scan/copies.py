"""Every copy of a few task ids, read again from the queues and `unacked`.

The scan finds duplicates with task-id hashes only, so it knows a copy's place but not the
place of the copy read before it. A cleanup that removes duplicates must choose which copy to
keep (the one a worker takes first), so it reads the lists once more for just those ids: bounded
chunks like the scan, done only when the scan found duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from maintenance.adapters.redis_reader import RedisReader
from maintenance.core.bindings import BindingTable
from maintenance.core.envelope import parse_list_element, parse_unacked_entry
from maintenance.core.hazards import duplicate_finding
from maintenance.core.models import Finding, Location, Where


def locate_copies(
    reader: RedisReader, queues: Iterable[str], bindings: BindingTable, task_ids: set[str]
) -> Iterator[Finding]:
    """A duplicate finding for every copy of `task_ids`, queued (exact index and tag) or
    unacked. Only elements that contain one of the ids as text are parsed."""
    needles = [task_id.encode() for task_id in task_ids]
    layout = reader.layout
    for queue in queues:
        for band, key in layout.queue_keys(queue):
            place = Location(Where.QUEUE, queue=queue, priority=band, key=key)
            for start, chunk in reader.iter_list(key):
                for offset, raw in enumerate(chunk):
                    if any(needle in raw for needle in needles):
                        msg = parse_list_element(raw, _at(place, start + offset), bindings)
                        if msg.task_id in task_ids:
                            yield duplicate_finding(msg)
    for entries in reader.iter_unacked():
        for entry in entries:
            if any(needle in entry.raw for needle in needles):
                place = Location(Where.UNACKED, key=layout.unacked, delivery_tag=entry.delivery_tag)
                msg = parse_unacked_entry(entry.raw, place, bindings)
                if msg.task_id in task_ids:
                    yield duplicate_finding(msg)


def _at(place: Location, index: int) -> Location:
    return Location(place.where, place.queue, place.priority, place.key, index)
