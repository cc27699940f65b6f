"""In a forum, what the bot shows while a turn waits goes to the turn's topic (issue 11 §1):
"typing…" and the busy notice carry its `message_thread_id`, as the reply does, and each topic
has its own (turns are per topic). Real Redis, the Bot API double over loopback HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.messages import ReplyJob, TurnJob
from aiconv.jobs.queue import JobQueue
from aiconv.telegram.client import BotClient
from aiconv.testing.botapi import BotApiDouble
from aiconv.worker.turns import TurnConfig, Turns
from aiconv.worker.typing_keeper import TypingKeeper
from tests.support.streams import stream_entries

FORUM = -1007000000123
TOPIC = 42


def action_threads(double: BotApiDouble, chat_id: int) -> list[int | None]:
    return [
        c.params.get("message_thread_id")
        for c in double.calls_of("sendChatAction", chat_id)
        if c.status == 200
    ]


async def test_typing_in_a_topic_is_shown_in_that_topic_until_it_ends(
    redis: RedisClient, keys: Keys, double: BotApiDouble, http: httpx.AsyncClient
) -> None:
    keeper = TypingKeeper(redis, keys, BotClient(http, double.url, double.token))
    await keeper.begin(FORUM, TOPIC)
    await keeper.begin_in(FORUM + 1, 0.0)  # a chat outside topics: no thread
    await double.wait_for(lambda: len(action_threads(double, FORUM)) == 1)
    stop = asyncio.Event()
    running = asyncio.create_task(keeper.run(stop))
    try:
        # The kept-up actions (every interval) stay in the topic.
        await double.wait_for(
            lambda: (
                len(action_threads(double, FORUM)) >= 2
                and len(action_threads(double, FORUM + 1)) >= 1
            ),
            timeout=15,
        )
    finally:
        stop.set()
        await running
    assert set(action_threads(double, FORUM)) == {TOPIC}
    assert set(action_threads(double, FORUM + 1)) == {None}
    await keeper.end(FORUM, TOPIC)
    shard = keys.shard_of(FORUM)
    # Typing is per conversation: the topic's entry is gone, the other chat's is kept.
    assert await redis.zscore(keys.typing_due(shard), f"{FORUM}/{TOPIC}") is None
    assert not await redis.hexists(keys.typing_deadline(shard), f"{FORUM}/{TOPIC}")
    assert await redis.hexists(keys.typing_deadline(keys.shard_of(FORUM + 1)), str(FORUM + 1))


def waiting_turn(topic: int, reply_to: int) -> TurnJob:
    """A forum topic's turn, waiting since the same moment as every other one made here."""
    return TurnJob(
        turn=f"{FORUM}/{topic}:{reply_to}:1",
        chat_id=FORUM,
        reply_to=reply_to,
        covers=1,
        mode="active",
        first_at=1.0,
    )


async def test_the_busy_notice_goes_to_the_turns_topic(redis: RedisClient, keys: Keys) -> None:
    turns = Turns(redis, keys, TurnConfig())
    queue = JobQueue(redis, keys)
    turn = waiting_turn(TOPIC, 7)
    assert turn.topic == TOPIC
    assert await turns.notify_busy(queue, turn, "supergroup", "soon", TOPIC)
    assert not await turns.notify_busy(queue, turn, "supergroup", "soon", TOPIC)  # told once
    # Another topic's turn waiting since the same moment is told too: notices are per topic.
    other = waiting_turn(TOPIC + 1, 8)
    assert await turns.notify_busy(queue, other, "supergroup", "soon", TOPIC + 1)
    entries = await stream_entries(redis, keys.stream_for("replies", FORUM))
    notices = [ReplyJob.from_payload(json.loads(fields["job"])) for _, fields in entries]
    assert [n.message_thread_id for n in notices] == [TOPIC, TOPIC + 1]
    assert all(n.notice for n in notices)
    assert all(n.reply_to_message_id is None for n in notices)  # a courtesy: answers nothing
