"""REVOKED states written in bulk read back through Celery's own backend, as if it wrote them."""

from __future__ import annotations

import redis
from celery.result import AsyncResult

from maintenance.adapters.redis_layout import ResultLayout
from maintenance.adapters.results import ResultWriter
from tests.conftest import producer_app

IDS = [
    "0b1f3c6e-4d8a-4a51-9d0e-2f5b8c7a1e90",
    "plain_id.1:2@x",
    'quote"back\\slash',
    "naïve-ünïcode",
    "new\nline",
    "x" * 300,
]


def test_the_spliced_encoding_is_what_the_backend_itself_encodes(redis_url: str) -> None:
    for serializer in ("json", "pickle"):
        app = producer_app(redis_url, result_serializer=serializer)
        writer = ResultWriter(app.backend, redis.Redis.from_url(redis_url), ResultLayout())
        encode = writer.revoked_encoder("orphan quarantined")
        meta = writer._revoked_meta("orphan quarantined")
        # JSON values are encoded once and the ids spliced in; other serializers encode each
        assert (encode.__name__ == "spliced") is (serializer == "json")
        for task_id in IDS:
            mine = app.backend.decode(encode(task_id))
            theirs = app.backend.decode(app.backend.encode({**meta, "task_id": task_id}))
            # pickle gives exception instances, equal only by type and message
            assert repr(mine.pop("result")) == repr(theirs.pop("result"))
            assert {**mine, "date_done": None} == {**theirs, "date_done": None}
            assert mine["task_id"] == task_id


def test_states_are_revoked_with_the_backend_expiry_and_real_results_are_kept(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = producer_app(redis_url, result_expires=3600)
    app.backend.store_result("already-ran", 42, "SUCCESS")
    writer = ResultWriter(app.backend, redis_client, ResultLayout())
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves pubsub() unannotated
    pubsub.subscribe("celery-task-meta-" + IDS[0])
    pubsub.get_message(timeout=1)
    assert writer.mark_revoked(IDS, "orphan quarantined") == len(IDS)
    for task_id in IDS:
        result = AsyncResult(task_id, app=app)
        assert result.state == "REVOKED"
        assert "orphan quarantined" in str(result.result)
        assert 3500 < redis_client.ttl("celery-task-meta-" + task_id) <= 3600
    announced = pubsub.get_message(timeout=2)
    assert announced is not None and b"REVOKED" in announced["data"]
    assert writer.mark_revoked(["already-ran", "fresh"], "orphan revoked", only_if_absent=True) == 1
    assert AsyncResult("already-ran", app=app).state == "SUCCESS"
    assert AsyncResult("fresh", app=app).state == "REVOKED"


def test_many_states_go_in_several_short_calls(redis_url: str, redis_client: redis.Redis) -> None:
    app = producer_app(redis_url)
    writer = ResultWriter(app.backend, redis_client, ResultLayout())
    ids = [f"task-{i}" for i in range(1_234)]
    redis_client.config_resetstat()
    assert writer.mark_revoked(ids, "orphan quarantined") == len(ids)
    stats = redis_client.info("commandstats")["cmdstat_evalsha"]
    assert stats["calls"] - stats.get("failed_calls", 0) == 3  # 500 + 500 + 234
    assert all(AsyncResult(t, app=app).state == "REVOKED" for t in ids[::97])
