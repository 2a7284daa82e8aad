"""The findings store (core.finding_store): bounded memory, the order and the counts of a list."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from maintenance.core.diff import judge_result
from maintenance.core.finding_store import (
    FIRSTS_KEPT,
    Findings,
    PackedStale,
    stale_result_dict,
    stale_result_finding,
    stale_row,
)
from maintenance.core.models import Finding, FindingKind, Location, Reason, ResultMeta, Where
from maintenance.core.report import ScanReport
from maintenance.core.summary import count_by_task_name, top_findings

NOW = 1_000_000.0
KINDS = [FindingKind.ORPHAN, FindingKind.UNREADABLE, FindingKind.DUPLICATE, FindingKind.LOST]
REASONS = [Reason.ROW_MISSING, Reason.BAD_ENVELOPE, Reason.SAME_TASK_ID, Reason.NO_MESSAGE]


def queued(i: int) -> Finding:
    """A finding with every field set, differing from its neighbours."""
    pick = i % len(KINDS)
    return Finding(
        KINDS[pick],
        REASONS[pick],
        f"task-{i}",
        f"demo.task_{i % 3}" if i % 5 else "",
        None if i % 7 == 0 else str(i),
        Location(Where.QUEUE, f"q{i % 2}", i % 10, f"key{i}", i, f"tag{i}", "", ""),
        age_s=None if i % 4 == 0 else i / 3,
        detail=f"detail {i}" if i % 6 == 0 else "",
        row_kind="task" if i % 2 else "sub_task",
        taken_at=float(i) if i % 3 == 0 else None,
    )


def stale(i: int) -> tuple[str, str, str, str, float | None]:
    reason = Reason.RESULT_NO_TTL if i % 3 == 0 else Reason.RESULT_EXPIRED
    return stale_row(
        reason, f"r-{i}", f"celery-task-meta-r-{i}", "SUCCESS", None if i % 9 == 0 else i
    )


def mixed(store: Findings, n: int, packed: bool = False) -> list[Finding]:
    """Fill `store` with n findings of both forms (stale rows also packed, as the result scan's
    child sends them, when `packed`); return the same as a list."""
    expected: list[Finding] = []
    for i in range(n):
        if i % 10 < 6:
            rows = [stale(i * 10 + j) for j in range(i % 4 + 1)]
            if packed and i % 2:
                store.extend_packed(PackedStale.pack(rows))
            else:
                store.extend_stale(rows)
            expected.extend(stale_result_finding(r) for r in rows)
        else:
            store.append(queued(i))
            expected.append(queued(i))
    return expected


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
@pytest.mark.parametrize("n", [0, 1, 9, 10, 11, 57, 400])
def test_order_and_counts_equal_a_list_across_the_spill_boundary(n: int, packed: bool) -> None:
    with Findings(memory_limit=10, batch_size=4) as store:
        expected = mixed(store, n, packed)
        assert len(store) == len(expected) and bool(store) == bool(expected)
        assert list(store) == expected
        assert list(store) == expected, "a second pass reads the same"
        assert store == expected
        in_memory = len(store) - store.spilled
        assert in_memory <= 10, "never more than the bound in memory"
        if len(expected) > 10:
            assert store.spilled > 0
        assert store.kind_counts() == dict(Counter(f.kind for f in expected))
        recount = Counter(f"{f.kind.value}:{f.reason.value}" for f in expected)
        assert list(store.reason_counts().items()) == list(recount.items()), "in first-seen order"
        assert count_by_task_name(store) == count_by_task_name(list(expected))
        assert top_findings(store) == top_findings(list(expected))
        assert list(store.dicts()) == [f.as_dict() for f in expected]
        for kind in FindingKind:
            assert list(store.of_kind(kind)) == [f for f in expected if f.kind is kind]


def test_positions_and_slices_read_like_a_list() -> None:
    with Findings(memory_limit=8, batch_size=3) as store:
        expected = mixed(store, 40)
        assert store[0] == expected[0] and store[-1] == expected[-1]
        assert store[17] == expected[17]
        assert store[5:23] == expected[5:23]
        assert store[::5] == expected[::5]
        with pytest.raises(IndexError):
            store[len(expected)]


def test_absorb_takes_over_the_other_store_in_order() -> None:
    first, second = Findings(memory_limit=6, batch_size=2), Findings(memory_limit=6, batch_size=2)
    want = mixed(first, 15)
    first.append(queued(999))
    want.append(queued(999))
    want += mixed(second, 23)
    before = Counter(f"{f.kind.value}:{f.reason.value}" for f in want)
    second_files = open_fds()
    first.absorb(second)
    assert len(second) == 0 and list(second) == []
    del second  # its file is first's now: dropping second must not close it
    assert open_fds() == second_files
    assert list(first) == want
    assert list(first.reason_counts().items()) == list(before.items())
    assert top_findings(first) == top_findings(want)
    first.close()


def test_the_temporary_file_is_released_on_close_and_when_dropped(tmp_path: Path) -> None:
    before = open_fds()
    store = Findings(memory_limit=4, batch_size=2)
    mixed(store, 30)
    assert store.spilled and open_fds() == before + 1
    store.close()
    assert open_fds() == before and store.closed and len(store) == 0
    dropped = Findings(memory_limit=4, batch_size=2)
    mixed(dropped, 30)
    assert open_fds() == before + 1
    del dropped
    assert open_fds() == before


def test_a_stale_row_reads_back_as_judge_result_makes_it() -> None:
    for meta in (
        ResultMeta("t1", "celery-task-meta-t1", "SUCCESS", NOW - 10 * 86400, 30),
        ResultMeta("t2", "celery-task-meta-t2", "FAILURE", NOW - 60, -1),
        ResultMeta("t3", "celery-task-meta-t3", "PENDING", None, -1),
    ):
        made = judge_result(meta, NOW, 86400)
        assert made is not None
        row = stale_row(made.reason, meta.task_id, meta.key, meta.status, made.age_s)
        assert stale_result_finding(row) == made


def test_a_packed_batch_past_the_memory_goes_to_the_file_as_it_came() -> None:
    rows = [stale(i) for i in range(3 * FIRSTS_KEPT)]
    with Findings(memory_limit=8, batch_size=4) as store:
        store.append(queued(1))
        store.extend_packed(PackedStale.pack(rows))
        assert store.spilled == len(rows), "not unpickled into memory"
        assert list(store) == [queued(1), *map(stale_result_finding, rows)]
        assert store.firsts()[FindingKind.STALE_RESULT] == [
            stale_result_finding(r) for r in rows[:FIRSTS_KEPT]
        ]


def test_the_report_reads_counts_without_iterating() -> None:
    report = ScanReport(started_at=0.0)
    report.findings.extend_stale([stale(i) for i in range(5 * FIRSTS_KEPT)])
    report.findings.append(queued(0))
    assert report.counts()["stale_result"] == 5 * FIRSTS_KEPT and report.counts()["orphan"] == 1
    orphans = report.of_kind(FindingKind.ORPHAN)
    assert len(orphans) == 1 and [f.task_id for f in orphans] == ["task-0"]
    assert not report.consistent
    assert len(report.findings.firsts()[FindingKind.STALE_RESULT]) == FIRSTS_KEPT
    report.close()
    assert report.consistent


def test_a_stale_rows_dict_is_its_findings_dict() -> None:
    for row in (
        stale(0),
        stale(1),
        stale(9),
        stale_row(Reason.RESULT_EXPIRED, "", "", "", 0.12345),
    ):
        assert stale_result_dict(row) == stale_result_finding(row).as_dict()
