"""Control reply lists nobody reads: found by SCAN, removed with their binding, live ones kept."""

from __future__ import annotations

import redis

from maintenance.adapters.leftovers import ReplyListSweeper
from maintenance.adapters.redis_layout import BrokerLayout

SEP = "\x06\x16"
EXCHANGE = "reply.celery.pidbox"


def reply_list(client: redis.Redis, prefix: str, oid: str) -> str:
    """What kombu leaves when a late worker answers a client that is gone."""
    queue = f"{oid}.{EXCHANGE}"
    client.lpush(prefix + queue, b'{"w1@host": {"ok": "pong"}}')
    client.sadd(f"{prefix}_kombu.binding.{EXCHANGE}", SEP.join((oid, "", queue)))
    return prefix + queue


def test_unread_reply_lists_are_removed_with_their_binding(redis_client: redis.Redis) -> None:
    """Lists with no TTL go; lists with a TTL, other keys and other bindings stay."""
    stale = reply_list(redis_client, "", "4169c992-369c-3c39-9c70-7cfc3dd62acb")
    expiring = reply_list(redis_client, "", "0f3c-expiring")
    redis_client.expire(expiring, 30)
    redis_client.lpush("video_processing", b"{}")
    redis_client.set("other.reply.celery.pidbox.note", b"not a list")
    sweeper = ReplyListSweeper(redis_client, BrokerLayout(), EXCHANGE, chunk_size=2)
    result = sweeper.sweep(min_idle_s=0)
    assert (result.removed, redis_client.exists(stale), redis_client.exists(expiring)) == (1, 0, 1)
    members = redis_client.smembers(f"_kombu.binding.{EXCHANGE}")
    assert members == {SEP.join(("0f3c-expiring", "", f"0f3c-expiring.{EXCHANGE}")).encode()}
    assert redis_client.exists("video_processing", "other.reply.celery.pidbox.note") == 2


def test_recently_touched_reply_lists_are_kept(redis_client: redis.Redis) -> None:
    """A list idle for less than the limit may still have a reader."""
    fresh = reply_list(redis_client, "", "fresh")
    result = ReplyListSweeper(redis_client, BrokerLayout(), EXCHANGE).sweep(min_idle_s=60)
    assert result.removed == 0 and redis_client.exists(fresh)


def test_global_keyprefix_is_respected(redis_client: redis.Redis) -> None:
    """Only keys under the app's own prefix are judged; the binding set is prefixed too."""
    mine = reply_list(redis_client, "app1:", "aaa")
    theirs = reply_list(redis_client, "app2:", "bbb")
    layout = BrokerLayout(global_keyprefix="app1:")
    assert ReplyListSweeper(redis_client, layout, EXCHANGE).sweep(min_idle_s=0).removed == 1
    assert not redis_client.exists(mine) and redis_client.exists(theirs)
    assert redis_client.scard(f"app1:_kombu.binding.{EXCHANGE}") == 0
