import sqlalchemy as sa
from maintenance.demo.schema import tasks, sub_tasks, new_id, utcnow
from tests.conftest import run_cli

def test_smoke(config_file, producer, engine):
    live, gone, done = new_id(), new_id(), new_id()
    with engine.begin() as c:
        c.execute(sa.insert(tasks), [dict(id=live, status="pending", updated_at=utcnow()),
                                     dict(id=done, status="done", updated_at=utcnow())])
    for i in (live, gone, done):
        producer.send_task("demo.process_video", args=[i], queue="video_processing", priority=5)
    producer.send_task("demo.render", kwargs={"task_id": gone}, serializer="pickle")
    producer.send_task("demo.send_email", args=["x@y"])
    r = run_cli("--config", str(config_file), "check", "-v")
    print(r.stdout, r.stderr)
    r = run_cli("--config", str(config_file), "check", "--json")
    print(r.stdout[:3000], r.stderr)
    assert r.returncode == 1
