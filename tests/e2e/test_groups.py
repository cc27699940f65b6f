"""Groups through real processes (`aiconv all`, webhook): a message without a mention is not
answered, one with a mention is, in its topic, with the sender's name in the prompt ml received;
an outsider in allowlist mode is refused once and generates nothing; two topics of one forum
addressed at once are answered side by side, each in its topic from its own history."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from aiconv.conversation import notices
from aiconv.jobs.codec import JobCodec
from aiconv.jobs.keys import Keys
from aiconv.jobs.messages import conversation_id, turn_topic
from aiconv.testing.botapi import ApiCall, BotApiDouble
from tests.support.ports import free_port
from tests.support.processes import Launcher, webhook_settings
from tests.support.services import REDIS_URL
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
SECRET = "e2e-groups-webhook-secret"


async def generations_for(redis_prefix: str, chat_id: int) -> list[dict[str, Any]]:
    """Every generation job handed to ml for the chat, read from its stream."""
    keys = Keys(redis_prefix)
    stream = keys.stream_for("generate", chat_id)
    redis = Redis.from_url(REDIS_URL)
    try:
        entries = await redis.xrange(stream) or []
    finally:
        await redis.aclose()
    found = []
    for _, fields in entries:
        payload = JobCodec(None).decode(stream, (fields or {}).get(b"job"))
        if payload is not None and payload.get("chat_id") == chat_id:
            found.append(payload)
    return found


async def prompts_for(redis_prefix: str, chat_id: int) -> list[list[list[str]]]:
    """The turns of every generation job handed to ml for the chat, read from its stream."""
    return [payload["turns"] for payload in await generations_for(redis_prefix, chat_id)]


async def held_turns(redis_prefix: str, chat_id: int) -> set[str]:
    """The conversations (the chat, its forum topics) whose turn is in flight."""
    keys = Keys(redis_prefix)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        held = cast(list[str], await redis.zrange(keys.turns_held(keys.shard_of(chat_id)), 0, -1))
    finally:
        await redis.aclose()
    return {c for c in held if c == str(chat_id) or c.startswith(f"{chat_id}/")}


async def refused_at_least(metrics_url: str, count: int) -> bool:
    """Whether the process refused `count` messages of outsiders (its /metrics)."""
    async with httpx.AsyncClient() as http:
        body = (await http.get(metrics_url)).text
    refused = 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "aiconv_access_refused_total" and sample.labels == {
                "reason": "refused"
            }:
                refused = sample.value
    return refused >= count


async def test_a_forum_mention_is_answered_in_its_topic_and_chatter_is_not(
    launch: Launcher, double: BotApiDouble, redis_prefix: str
) -> None:
    port = free_port()
    process = await launch(
        "all",
        **webhook_settings(port, SECRET),
        ACCESS_MODE="allowlist",
        ALLOWED_USER_IDS="61,62",
    )
    forum = -1005000000 - random.randrange(1000)
    topic = {"message_thread_id": 3, "is_topic_message": True}
    await double.send_user_message(
        forum, "anyone up for lunch?", user_id=61, chat_type="supergroup", extra=topic
    )
    text = f"@{double.bot_username} say hello to everyone"
    asked = await double.send_user_message(
        forum,
        text,
        user_id=62,
        chat_type="supergroup",
        extra={"entities": double.mention(text), **topic},
    )
    await double.wait_for_messages(forum, 1)
    [reply] = double.calls_of("sendMessage", forum)
    assert reply.params["message_thread_id"] == 3
    assert reply.params["reply_parameters"]["message_id"] == asked["message"]["message_id"]
    [prompt] = await eventually(lambda: prompts_for(redis_prefix, forum), timeout=10)
    users = [content for role, content in prompt if role == "user"]
    assert users == ["User61: anyone up for lunch?", "User62: say hello to everyone"]

    # An outsider: one refusal, nothing generated.
    outsider = 6999
    await double.send_user_message(outsider, "hello?")
    await double.send_user_message(outsider, "hello??")
    await eventually(lambda: refused_at_least(f"{process.ops_url}/metrics", 2), timeout=30)
    await double.wait_for_messages(outsider, 1)
    assert double.sent_texts(outsider) == [notices.NOT_ALLOWED]
    assert await prompts_for(redis_prefix, outsider) == []


def in_topic(calls: list[ApiCall], thread: int, status: int = 200) -> list[ApiCall]:
    """The calls that went to forum topic `thread` and were answered `status`."""
    return [c for c in calls if c.params.get("message_thread_id") == thread and c.status == status]


async def test_two_topics_addressed_at_once_are_answered_side_by_side(
    launch: Launcher, double: BotApiDouble, redis_prefix: str
) -> None:
    """Turns are per forum topic: a topic's turn does not wait for another topic's reply. The
    forum's replies are refused (429, waited out by delivery) until both topics' replies have
    reached Telegram: with one turn per chat at a time the second topic's reply could never get
    there before the first was delivered, so the test would time out rather than pass by luck."""
    port = free_port()
    await launch(
        "all",
        **webhook_settings(port, SECRET),
        ACCESS_MODE="allowlist",
        ALLOWED_USER_IDS="61,62",
        BUSY_NOTICE_SECONDS="0",  # every sendMessage into the forum is then a topic's reply
    )
    forum = -1005001000 - random.randrange(1000)
    blue, red = 3, 5
    chatter = {blue: (61, "the blue team meets at noon"), red: (62, "the red team meets at five")}
    for thread, (user, text) in chatter.items():
        await double.send_user_message(
            forum,
            text,
            user_id=user,
            chat_type="supergroup",
            extra={"message_thread_id": thread, "is_topic_message": True},
        )
    double.fail_next("sendMessage", 429, retry_after=1, times=100_000)  # the gate, closed

    async def ask(thread: int, user: int, team: str) -> dict[str, Any]:
        text = f"@{double.bot_username} greet the {team} team"
        return await double.send_user_message(
            forum,
            text,
            user_id=user,
            chat_type="supergroup",
            extra={
                "entities": double.mention(text),
                "message_thread_id": thread,
                "is_topic_message": True,
            },
        )

    asked_blue, asked_red = await asyncio.gather(ask(blue, 61, "blue"), ask(red, 62, "red"))
    asked = {blue: asked_blue["message"]["message_id"], red: asked_red["message"]["message_id"]}

    # Both topics' replies reach Telegram while neither has been delivered, and both topics
    # are "typing" meanwhile, each in its own topic.
    await double.wait_for(
        lambda: all(
            in_topic(double.calls_of("sendMessage", forum), thread, 429)
            and in_topic(double.calls_of("sendChatAction", forum), thread)
            for thread in (blue, red)
        ),
        timeout=120,
    )
    assert double.sent_texts(forum) == []
    # Both turns are in flight together (held until delivered, which the gate prevents).
    assert await held_turns(redis_prefix, forum) == {
        conversation_id(forum, blue),
        conversation_id(forum, red),
    }
    double.clear_faults("sendMessage")  # the gate opens

    await double.wait_for_messages(forum, 2, timeout=60)

    async def released() -> bool:
        return not await held_turns(redis_prefix, forum)

    await eventually(released, timeout=30)  # both turns settled: nothing more is sent
    delivered = [c for c in double.calls_of("sendMessage", forum) if c.status == 200]
    assert len(delivered) == 2, double.describe_calls()  # one reply a topic, none twice
    for thread in (blue, red):
        [reply] = in_topic(delivered, thread)
        assert reply.params["reply_parameters"]["message_id"] == asked[thread]
    # Each topic's turn read its own topic's history, not the other's.
    generations = await generations_for(redis_prefix, forum)
    assert len(generations) == 2
    prompts = {turn_topic(g["turn"]): g["turns"] for g in generations}
    users = {
        thread: [text for role, text in turns if role == "user"]
        for thread, turns in prompts.items()
    }
    assert users == {
        blue: ["User61: the blue team meets at noon", "User61: greet the blue team"],
        red: ["User62: the red team meets at five", "User62: greet the red team"],
    }
