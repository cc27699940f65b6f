"""Operators' tools on a real Redis: the dead-letter CLI, stream trimming, and send limits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from redis.asyncio import Redis

from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import JobQueue
from aiconv.worker.rate_limit import RateLimits, SendLimiter
from tests.support.services import REDIS_URL
from tests.support.streams import read_group, stream_entries


def aiconv(prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiconv.cli", *args],
        env={"REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_dlq_list_replay_and_drop(redis: Redis, redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    for n in (1, 2):
        record = {
            "stream": keys.replies,
            "error": "ValueError: boom",
            "deliveries": 5,
            "failed_at": 1.0,
            "payload": {"key": f"reply:1:{n}", "chat_id": 1},
        }
        await redis.xadd(keys.dlq, {"job": json.dumps(record)})

    listed = aiconv(redis_prefix, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    jobs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [job["payload"]["key"] for job in jobs] == ["reply:1:1", "reply:1:2"]
    assert jobs[0]["error"] == "ValueError: boom"

    replayed = aiconv(redis_prefix, "dlq", "replay", jobs[0]["id"])
    assert replayed.returncode == 0, replayed.stderr
    [(_, fields)] = await stream_entries(redis, keys.replies)
    assert json.loads(fields["job"]) == jobs[0]["payload"]

    assert aiconv(redis_prefix, "dlq", "drop", jobs[1]["id"]).returncode == 0
    assert await redis.xlen(keys.dlq) == 0
    missing = aiconv(redis_prefix, "dlq", "drop", jobs[1]["id"])
    assert missing.returncode == 1 and "no dead job" in missing.stdout


async def test_trimming_keeps_unacknowledged_and_unread_entries(
    redis: Redis, redis_prefix: str
) -> None:
    queue = JobQueue(redis, Keys(redis_prefix))
    stream = queue.keys.generate
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
    redis: Redis, redis_prefix: str, chat_type: str
) -> None:
    limiter = SendLimiter(
        redis,
        Keys(redis_prefix),
        RateLimits(global_per_second=1000, chat_per_second=1, group_per_minute=20, group_burst=3),
    )
    waits = [await limiter.reserve_chat(7, chat_type) for _ in range(5)]
    other_chat = await limiter.reserve_chat(8, "private")
    # Private: one per second. Group: a burst of three at one per second, then one per 3 s.
    expected = [0, 1, 2, 3, 4] if chat_type == "private" else [0, 1, 2, 3, 6]
    assert waits == pytest.approx(expected, abs=0.2)
    assert other_chat == pytest.approx(0, abs=0.2)


async def test_the_global_limit_spaces_all_chats(redis: Redis, redis_prefix: str) -> None:
    limiter = SendLimiter(redis, Keys(redis_prefix), RateLimits(global_per_second=10))
    waits = [await limiter.reserve_global() for _ in range(20)]
    assert waits[-1] == pytest.approx(1.9, abs=0.2)
    assert waits == sorted(waits)
