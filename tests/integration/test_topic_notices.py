"""In a forum, what the bot shows while a turn waits goes to the turn's topic (issue 11 §1):
"typing…" and the busy notice carry its `message_thread_id`, as the reply does. Real Redis,
the Bot API double over loopback HTTP."""

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
    await keeper.end(FORUM)
    deadline = keys.typing_deadline(keys.shard_of(FORUM))
    assert not await redis.hexists(deadline, f"{FORUM}:thread")  # nothing left behind


async def test_the_busy_notice_goes_to_the_turns_topic(redis: RedisClient, keys: Keys) -> None:
    turns = Turns(redis, keys, TurnConfig())
    turn = TurnJob(turn="t-1", chat_id=FORUM, reply_to=7, covers=1, mode="active", first_at=1.0)
    assert await turns.notify_busy(JobQueue(redis, keys), turn, "supergroup", "soon", TOPIC)
    [(_, fields)] = await stream_entries(redis, keys.stream_for("replies", FORUM))
    notice = ReplyJob.from_payload(json.loads(fields["job"]))
    assert notice.notice and notice.message_thread_id == TOPIC
    assert notice.reply_to_message_id is None  # a courtesy: it answers nothing
