"""LookupBatcher: chunks read the quick way (add_queued) look up the ids, and give the findings
and counts, that every message read the full way and passed to `add` gives; only the reads its
look-up did not find fine are judged."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from maintenance.core.diff import Lookup, LostTracker, Verdicts
from maintenance.core.envelope import parse_list_element
from maintenance.core.models import Location, RowState
from maintenance.core.report import ScanReport
from maintenance.scan.batches import LookUp, LookupBatcher
from tests.core.test_envelope import BINDINGS, EDGES, PLACES, UNUSUAL, list_element

LIVE, DONE = RowState(True, "pending"), RowState(False, "done")
FULL = Lookup(
    tasks={
        **{f"live-{n}": LIVE for n in range(8)},
        **{f"done-{n}": DONE for n in range(4)},
        "7": LIVE,
        "12": DONE,
    },
    sub_tasks={
        "s-live": RowState(True, "queued", "live-1"),
        "s-done": RowState(False, "done", "live-1"),
        "s-parent-done": RowState(True, "queued", "done-1"),
        "s-parent-gone": RowState(True, "queued", "gone-9"),
    },
    parents={"live-1": LIVE, "done-1": DONE},
    invalid=frozenset({"bad-1", "bad-2"}),
)


def _full(task_ids: Any, sub_ids: Any) -> Verdicts:
    return Verdicts.build(task_ids, sub_ids, FULL)


def _anti_join(task_ids: Any, sub_ids: Any) -> Verdicts:
    """As on PostgreSQL: only the rows of the task ids that are not live."""
    not_live = {i for i in task_ids if i not in FULL.tasks or not FULL.tasks[i].active}
    partial = replace(FULL, tasks={i: r for i, r in FULL.tasks.items() if i in not_live})
    return Verdicts.build(task_ids, sub_ids, partial, not_live_tasks=not_live)


def _unchecked(task_ids: Any, sub_ids: Any) -> Verdicts:
    """A look-up that leaves some ids unchecked: those must be judged, not passed."""
    full = _full(task_ids, sub_ids)
    skip = {"live-2", "s-live"}
    return Verdicts(
        {k: set(v) - skip for k, v in full.checked.items()},
        {k: set(v) - skip for k, v in full.problems.items()},
        full.lookup,
    )


def _message(rng: random.Random) -> bytes:
    if rng.random() < 0.15:
        return rng.choice(UNUSUAL + EDGES)
    task_ids = [*FULL.tasks, "gone-1", "gone-2", "bad-1", "", "s-live", 7, 12, 99]
    sub_ids = [*FULL.sub_tasks, "s-gone", "live-1", "bad-2", ""]
    kind = rng.choice(["video", "video", "segment", "render", "email", "celery_id"])
    if kind == "segment":
        return list_element("demo.process_segment", ([rng.choice(sub_ids)], {}, {}))
    if kind == "render":
        return list_element("demo.render", ([], {"task_id": rng.choice(task_ids)}, {}))
    if kind == "email":
        return list_element("demo.send_email", (["a@b"], {}, {}))
    if kind == "celery_id":
        return list_element("demo.by_celery_id", headers={"id": rng.choice(["live-3", "gone-3"])})
    return list_element(
        body=([rng.choice(task_ids)], {}, {}),
        properties={"delivery_tag": f"t-{rng.randrange(99)}", "body_encoding": "base64"},
    )


@pytest.mark.parametrize("look_up", [_full, _anti_join, _unchecked])
@pytest.mark.parametrize("seed", range(4))
def test_batcher_fast_path_judges_like_the_full_path(look_up: LookUp, seed: int) -> None:
    """Chunks through add_queued look up the ids, and give the findings and counts, that every
    message read the full way and passed to add gives, with look-ups that answer per id."""
    rng = random.Random(seed)
    chunks: list[tuple[Location, int, list[bytes]]] = []
    for place in PLACES:
        start = 0
        for _ in range(rng.randrange(1, 12)):
            size = rng.choice([1, 2, 5, 17, 40])
            chunks.append((place, start, [_message(rng) for _ in range(size)]))
            start += size
    batch_size = rng.choice([1, 7, 30])
    reports, asked = [], []
    for fast in (True, False):
        report = ScanReport(started_at=0.0)
        ids: dict[str, set[str]] = {"task": set(), "sub_task": set()}

        def recorded(task_ids: Any, sub_ids: Any, ids: dict[str, set[str]] = ids) -> Verdicts:
            ids["task"] |= task_ids
            ids["sub_task"] |= sub_ids
            return look_up(task_ids, sub_ids)

        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = LookupBatcher(
                recorded,
                BINDINGS,
                report,
                pool,
                LostTracker(()),
                None,
                batch_size=batch_size,
                clock=lambda: 0.0,
            )
            for place, start, chunk in chunks:
                if fast:
                    batcher.add_queued(chunk, start, place)
                else:
                    for offset, raw in enumerate(chunk):
                        batcher.add(
                            parse_list_element(raw, replace(place, index=start + offset), BINDINGS)
                        )
            batcher.flush()
        reports.append(report)
        asked.append(ids)
    fast_report, full_report = reports
    assert fast_report.findings, "the mix must give findings"
    assert fast_report.findings == full_report.findings
    assert fast_report.places == full_report.places
    assert asked[0] == asked[1]
