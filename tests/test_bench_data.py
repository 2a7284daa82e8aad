"""bench/: every data-set shape plants exactly what it counts, as the bare floor reads it back.

The benchmark's verdict ("findings match the planted data") is only as good as the plan; here a
small fill of each preset is read back by bench/floor.py, on real Redis and PostgreSQL.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bench.dataset import PRESETS, fill
from bench.floor import run
from tests.servers import PostgresServer


@pytest.mark.parametrize("shape", list(PRESETS))
def test_floor_reads_back_exactly_what_each_shape_planted(
    shape: str, redis_url: str, pg_server: PostgresServer
) -> None:
    preset = PRESETS[shape]
    db_url, planted = fill(3000, redis_url, pg_server.url, shape=preset)
    dsn = sa.engine.make_url(db_url).set(drivername="postgresql").render_as_string(False)

    counts = run(redis_url, dsn, list(planted.queues), "script")["counts"]

    assert counts["orphan"] == sum(planted.orphans.values())
    for reason, count in planted.orphans.items():
        assert counts[f"orphan:{reason}"] == count
    assert counts["stale_result"] == planted.stale_results
    assert counts["lost"] == planted.lost_rows
    assert counts["unmanaged"] == planted.unmanaged
    assert counts["messages"] == planted.messages + planted.unacked
    assert counts["results_scanned"] == planted.results
    share = sum(planted.orphans.values()) / (planted.messages + planted.unacked)
    assert share == pytest.approx(preset.orphan_share, abs=0.05)
    assert planted.stale_results / planted.results == pytest.approx(preset.stale_results, abs=0.05)
    assert planted.old_live_rows / planted.live_rows == pytest.approx(preset.old_backlog, abs=0.05)
    assert len(planted.queues) == (preset.queues or 2)
