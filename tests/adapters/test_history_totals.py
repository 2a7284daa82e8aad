"""The monitor's read-only view of the run history, on real PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from maintenance.adapters.history import HistoryStore
from maintenance.adapters.history_totals import HistoryReader, numeric_counts


def test_missing_history_table_is_empty_and_not_created(engine: sa.Engine) -> None:
    """The monitor only watches: no history table means no runs, and it creates none."""
    view = HistoryReader(engine).read()
    assert (view.recent, view.action_totals, view.outcome_totals) == ((), {}, {})
    assert not sa.inspect(engine).has_table("maintenance_runs")


def test_totals_add_up_finished_runs_incrementally(engine: sa.Engine) -> None:
    """Counts of every finished run are summed key by key; a running run is not counted yet."""
    store = HistoryStore(engine)
    first = store.start_run("test", "cleanup")
    store.finish_run(first, "ok", {"quarantined": 3, "revoked": 1, "note": "text"})
    reader = HistoryReader(engine, recent_limit=5)
    view = reader.read()
    assert view.action_totals == {"quarantined": 3, "revoked": 1}
    assert view.outcome_totals == {"ok": 1}

    second = store.start_run("test", "cleanup")
    assert reader.read().action_totals == {"quarantined": 3, "revoked": 1}
    store.finish_run(second, "partial", {"quarantined": 2, "requeued": 4})
    view = reader.read()
    assert view.action_totals == {"quarantined": 5, "revoked": 1, "requeued": 4}
    assert view.outcome_totals == {"ok": 1, "partial": 1}
    assert [run["id"] for run in view.recent] == [second, first]
    assert reader.read().action_totals == view.action_totals  # nothing counted twice


def test_numeric_counts_flatten_one_level() -> None:
    """Nested counts become `outer_inner`; booleans and text are not counts."""
    assert numeric_counts(
        {"revoked": {"queued": 2, "unacked": 1}, "ok": True, "n": 1.5, "x": "y"}
    ) == {"revoked_queued": 2, "revoked_unacked": 1, "n": 1.5}
