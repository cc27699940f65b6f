"""Groups through real processes (`aiconv all`, webhook): a message without a mention is not
answered, one with a mention is, in its topic, with the sender's name in the prompt ml received;
an outsider in allowlist mode is refused once and generates nothing."""

from __future__ import annotations

import random

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from aiconv.conversation import notices
from aiconv.jobs.codec import JobCodec
from aiconv.jobs.keys import Keys
from aiconv.testing.botapi import BotApiDouble
from tests.support.ports import free_port
from tests.support.processes import Launcher, webhook_settings
from tests.support.services import REDIS_URL
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
SECRET = "e2e-groups-webhook-secret"


async def prompts_for(redis_prefix: str, chat_id: int) -> list[list[list[str]]]:
    """The turns of every generation job handed to ml for the chat, read from its stream."""
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
            found.append(payload["turns"])
    return found


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
