"""Capacity-aware pacing through a real `aiconv worker` process and the Bot API double: a turn
behind a long model queue gets no "typing…" while it waits, one honest notice, then its reply (with
typing once ml starts it); beyond MAX_QUEUE_WAIT_SECONDS a turn is declined politely, its message
stored and its turn settled.

The model's queue is staged in Redis as ml would leave it: an instance's published capacity (one
busy slot, a minute per generation) and unread generation jobs ahead of the user's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from aiconv.conversation import texts
from aiconv.conversation.capacity import MlCapacity
from aiconv.jobs.keys import GENERATE_GROUP, UPDATES_GROUP, Keys
from aiconv.jobs.queue import JobQueue
from aiconv.testing.botapi import BotApiDouble
from tests.support.database import query_rows
from tests.support.processes import Launcher
from tests.support.streams import stream_entries
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
AHEAD = 10  # generation jobs in front of the user's: (10 + 1) minutes at one slot


async def stage_a_long_queue(redis: Redis, keys: Keys) -> list[str]:
    capacity = MlCapacity(slots=1, busy=1, seconds_per_generation=60.0)
    await redis.hset(keys.ml_capacity("staged"), mapping=capacity.to_fields())  # type: ignore[arg-type]
    await redis.expire(keys.ml_capacity("staged"), 600)
    await redis.zadd(keys.ml_instances, {"staged": 1.0})
    # In shard 0's stream: the worker counts the jobs of every shard.
    await JobQueue(redis, keys).ensure_group(keys.generate(0), GENERATE_GROUP)
    return [
        str(await redis.xadd(keys.generate(0), {"job": json.dumps({"kind": "chat", "n": n})}))
        for n in range(AHEAD)
    ]


async def clear_the_queue(redis: Redis, keys: Keys, staged: list[str]) -> None:
    await redis.xdel(keys.generate(0), *staged)
    await redis.delete(keys.ml_capacity("staged"))
    await redis.zrem(keys.ml_instances, "staged")


async def stream_jobs(redis: Redis, stream: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (entry, json.loads(fields["job"])) for entry, fields in await stream_entries(redis, stream)
    ]


async def test_a_turn_behind_a_long_queue_is_told_once_and_typed_only_when_written(
    launch: Launcher, double: BotApiDouble, redis: Redis, keys: Keys
) -> None:
    chat = 61_001  # ids of this module's own: the database is the whole run's
    staged = await stage_a_long_queue(redis, keys)
    await launch("worker", BUSY_NOTICE_SECONDS="30")
    await double.send_user_message(chat, "Hello, anybody there?")
    [notice] = await double.wait_for_messages(chat, 1)
    assert notice == texts.busy_notice(11)

    async def queued_for_the_model() -> list[dict[str, Any]]:
        jobs = await stream_jobs(redis, keys.stream_for("generate", chat))
        return [job for _, job in jobs if job.get("chat_id") == chat]

    await eventually(queued_for_the_model, timeout=30)
    # Waiting behind eleven minutes of work: nobody is shown "typing…".
    assert double.calls_of("sendChatAction", chat) == []

    # The turn job runs again (a takeover after a crash): still one notice, one generation.
    updates = keys.stream_for("updates", chat)
    [turn_job] = [j for _, j in await stream_jobs(redis, updates) if j.get("kind") == "turn"]
    await redis.xadd(updates, {"job": json.dumps(turn_job)})

    async def updates_settled() -> bool:
        [group] = [g for g in await redis.xinfo_groups(updates) if g["name"] == UPDATES_GROUP]
        return bool(group["lag"] == 0 and group["pending"] == 0)

    await eventually(updates_settled, timeout=30)
    replies = await stream_jobs(redis, keys.stream_for("replies", chat))
    notices = [j for _, j in replies if j["key"].startswith("busy:")]
    assert len(notices) == 1
    assert len(await queued_for_the_model()) == 1

    # The queue drains (the staged jobs are gone), a model starts: typing, then the reply.
    await clear_the_queue(redis, keys, staged)
    await launch("ml")
    [_, reply] = await double.wait_for_messages(chat, 2, timeout=120)
    assert reply and reply != notice
    typing = [c.at for c in double.calls_of("sendChatAction", chat)]
    [reply_call] = [c for c in double.calls_of("sendMessage", chat) if c.params["text"] == reply]
    assert typing and min(typing) < reply_call.at  # shown while the reply was being written
    assert double.sent_texts(chat) == [notice, reply]


async def test_beyond_the_longest_wait_a_turn_is_declined_and_its_message_kept(
    launch: Launcher, double: BotApiDouble, redis: Redis, keys: Keys, database_url: str
) -> None:
    chat = 61_002
    await stage_a_long_queue(redis, keys)
    await launch("worker", BUSY_NOTICE_SECONDS="30", MAX_QUEUE_WAIT_SECONDS="300")
    await double.send_user_message(chat, "Are you busy?")
    assert await double.wait_for_messages(chat, 1) == [texts.OVERLOADED]

    async def settled() -> bool:
        state = await redis.hgetall(keys.chat_state(chat))
        return "turn" not in state and state.get("answered") == state.get("noted") == "1"

    await eventually(settled, timeout=30)  # the turn is closed: nothing owed, nothing lost
    jobs = await stream_jobs(redis, keys.stream_for("generate", chat))
    assert [job for _, job in jobs if job.get("chat_id") == chat] == []  # nothing generated
    assert double.calls_of("sendChatAction", chat) == []
    rows = query_rows(
        database_url,
        "SELECT role, reply_to_message_id IS NOT NULL FROM messages WHERE chat_id = %s ORDER BY id",
        chat,
    )
    # The user's message is kept; the decline is stored as the answer to it.
    assert rows == [("user", False), ("assistant", True)]
