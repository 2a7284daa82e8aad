"""The hashes a scan has read, in memory and then in a file: the same answers either way."""

from __future__ import annotations

import random

import pytest

from maintenance.core.hazards import HazardWatch, MemoryHashes
from maintenance.core.models import Location, Message, Where
from maintenance.scan.seen_hashes import BitFilter, SpillingHashes
from tests.core.test_hazards import NOW, PLACE, VT, read


@pytest.mark.parametrize("filter_bits", [27, 6], ids=["sparse-filter", "crowded-filter"])
def test_every_answer_matches_a_plain_set_across_the_spill_and_the_flushes(
    filter_bits: int,
) -> None:
    """With a filter of 64 bits nearly every hash is a candidate for the file's look-up; with
    2**27 nearly none is: the answers are the set's either way."""
    rng = random.Random(7)
    reference: set[int] = set()
    seen = SpillingHashes(memory_limit=300, flush_every=120, filter_bits=filter_bits)
    try:
        for round_ in range(60):
            # new values, some seen long ago (written to the file), some just now (not yet
            # written), and repeats within the chunk
            chunk = [rng.getrandbits(63) - 2**62 for _ in range(rng.randint(1, 40))]
            if reference:
                chunk += rng.sample(sorted(reference), min(3, len(reference)))
            chunk += chunk[:2]
            rng.shuffle(chunk)
            expected = reference.intersection(chunk)
            assert seen.add_chunk(chunk) == expected, round_
            reference.update(chunk)
            single = rng.choice([rng.getrandbits(40), *sorted(reference)[:5]])
            assert seen.add(single) is (single not in reference)
            reference.add(single)
        assert seen.spilled  # the file was used, and flushed more than once on the way
        assert len(reference) > 300 + 2 * 120
    finally:
        seen.close()


def test_a_clear_bit_means_never_seen_and_a_repeat_is_a_candidate() -> None:
    bits = BitFilter(10)
    assert bits.seen_before([1, 2, 3]) == []
    # 1 again, 1 + 2**10 shares its low bits (a false candidate), 5 is new, 5 twice in the call
    assert bits.seen_before([1, 1 + 2**10, 5, 5, -7]) == [1, 1 + 2**10, 5]
    assert bits.seen_before([-7, 2**10 - 7]) == [-7, 2**10 - 7]  # -7 & mask == 2**10 - 7


def test_small_scans_stay_in_memory() -> None:
    seen = SpillingHashes(memory_limit=1000)
    assert seen.add_chunk(list(range(500))) == set()
    assert seen.add_chunk([499, 500]) == {499}
    assert not seen.spilled
    seen.close()


@pytest.mark.parametrize("spill", [False, True], ids=["memory", "file"])
def test_the_watch_finds_the_same_duplicates_from_the_file(spill: bool) -> None:
    seen = SpillingHashes(memory_limit=1, flush_every=2) if spill else MemoryHashes()
    w = HazardWatch(now=NOW, visibility_timeout_s=VT, scan_started_at=NOW - 5, seen=seen)
    assert list(w.queued([read("a", "t1"), read("b", "t2")], PLACE, 0)) == []
    again = list(w.queued([read("b", "t2"), read("a", "t9"), read("c", "t3")], PLACE, 2))
    assert [(f.task_id, f.location.index) for f in again] == [("a", 3)]
    unacked = Message(
        "c", "demo.t", Location(Where.UNACKED, key="unacked", delivery_tag="t8"), taken_at=NOW - 60
    )
    assert [f.task_id for f in w.message(unacked)] == ["c"]
    assert w.duplicate_ids == {"a", "c"}
    if isinstance(seen, SpillingHashes):
        assert seen.spilled
        seen.close()
