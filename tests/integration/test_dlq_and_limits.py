"""Operators' tools on a real Redis: the dead-letter CLI, stream trimming, and send limits. On
one Redis and on a Redis Cluster (`both_redis`): the CLI talks to either through its settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import JobQueue
from aiconv.worker.rate_limit import RateLimits, SendLimiter
from tests.support.redis_targets import RedisTarget
from tests.support.streams import read_group, stream_entries

pytestmark = pytest.mark.both_redis


def aiconv(target: RedisTarget, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"REDIS_KEY_PREFIX": prefix, "PATH": "/usr/bin:/bin", **target.env()}
    if "PYTHONPATH" in os.environ:  # a worktree's checkout over the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, "-m", "aiconv.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_dlq_list_replay_and_drop(
    redis: RedisClient, keys: Keys, redis_target: RedisTarget, redis_prefix: str
) -> None:
    # Dead letters of two streams (two shards' on the cluster) and of the /v1 stream: one list,
    # oldest first, ids unique across them, each replayed onto its own stream.
    streams = (keys.replies(0), keys.generate(keys.shards - 1), keys.openai_generate)
    for n, stream in enumerate(streams):
        record = {
            "stream": stream,
            "error": "ValueError: boom",
            "deliveries": 5,
            "failed_at": 1.0,
            "payload": {"key": f"job:{n}", "chat_id": 1, "turn": "t1"},
        }
        # Ids a millisecond apart: the order across streams is the ids' (on a cluster, entries
        # added in one millisecond on different nodes have no other order).
        entry_id = f"{1_700_000_000_000 + n}-0"
        await redis.xadd(keys.dlq(stream), {"job": json.dumps(record)}, id=entry_id)

    listed = aiconv(redis_target, redis_prefix, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    jobs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [job["payload"]["key"] for job in jobs] == ["job:0", "job:1", "job:2"]
    assert [job["stream"] for job in jobs] == list(streams)
    assert jobs[0]["error"] == "ValueError: boom"
    assert jobs[0]["id"].startswith("replies.0@")
    assert jobs[2]["id"].startswith("generate:openai@")
    assert len({job["id"] for job in jobs}) == 3

    for job, stream in zip(jobs[:2], streams, strict=False):
        replayed = aiconv(redis_target, redis_prefix, "dlq", "replay", job["id"])
        assert replayed.returncode == 0, replayed.stderr
        [(_, fields)] = await stream_entries(redis, stream)
        expected = dict(job["payload"])
        if stream == keys.replies(0):
            del expected["turn"]  # a replayed reply is delivered outside any turn
        assert json.loads(fields["job"]) == expected
        assert await redis.xlen(keys.dlq(stream)) == 0

    assert aiconv(redis_target, redis_prefix, "dlq", "drop", jobs[2]["id"]).returncode == 0
    assert await redis.xlen(keys.dlq(keys.openai_generate)) == 0
    missing = aiconv(redis_target, redis_prefix, "dlq", "drop", jobs[2]["id"])
    assert missing.returncode == 1 and "no dead job" in missing.stdout
    unknown = aiconv(redis_target, redis_prefix, "dlq", "replay", "1700000000000-0")
    assert unknown.returncode == 1 and "no dead job" in unknown.stdout


async def test_trimming_keeps_unacknowledged_and_unread_entries(
    redis: RedisClient, keys: Keys
) -> None:
    queue = JobQueue(redis, keys)
    stream = keys.generate(keys.shards - 1)
    await queue.ensure_group(stream, "g")
    for n in range(6):
        await queue.enqueue(stream, {"n": n})
    # Read four: acknowledge the first two and the fourth; the third stays pending.
    entries = await read_group(redis, "g", "c", stream, count=4)
    ids = [entry_id for entry_id, _ in entries]
    await redis.xack(stream, "g", ids[0], ids[1], ids[3])

    trimmed = await queue.trim(stream, keep_seconds=-1)  # -1: entries of this very millisecond too
    assert trimmed == 2
    remaining = [json.loads(f["job"])["n"] for _, f in await stream_entries(redis, stream)]
    assert remaining == [2, 3, 4, 5]  # the pending one and everything after it


@pytest.mark.parametrize("chat_type", ["private", "group"])
async def test_send_limits_space_messages_of_one_chat(
    redis: RedisClient, keys: Keys, chat_type: str
) -> None:
    limiter = SendLimiter(
        redis,
        keys,
        RateLimits(global_per_second=1000, chat_per_second=1, group_per_minute=20, group_burst=3),
    )
    waits = [await limiter.reserve_chat(7, chat_type) for _ in range(5)]
    other_chat = await limiter.reserve_chat(8, "private")
    # Private: one per second. Group: a burst of three at one per second, then one per 3 s.
    expected = [0, 1, 2, 3, 4] if chat_type == "private" else [0, 1, 2, 3, 6]
    assert waits == pytest.approx(expected, abs=0.2)
    assert other_chat == pytest.approx(0, abs=0.2)


async def test_the_global_limit_spaces_all_chats(redis: RedisClient, keys: Keys) -> None:
    limiter = SendLimiter(redis, keys, RateLimits(global_per_second=10))
    waits = [await limiter.reserve_global() for _ in range(20)]
    assert waits[-1] == pytest.approx(1.9, abs=0.2)
    assert waits == sorted(waits)
