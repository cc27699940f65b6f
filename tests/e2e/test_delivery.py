"""Delivery at a human pace: typing, splitting, Telegram errors, and the modes as separate
processes."""

from __future__ import annotations

import itertools
import json
import time

import httpx
import psycopg
import pytest
from redis.asyncio import Redis

from aiconv.jobs.keys import Keys
from aiconv.telegram.formatting import Entity, entity_problems
from aiconv.testing.botapi import BotApiDouble
from tests.support.ports import free_port
from tests.support.processes import Launcher, webhook_settings

pytestmark = pytest.mark.e2e
SECRET = "delivery-secret"


async def inject_reply(
    redis: Redis,
    prefix: str,
    database_url: str,
    chat_id: int,
    text: str,
    markdown: bool = False,
) -> None:
    """A reply job as the ml stage hands it over, to drive delivery with a known text."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO chats (id, type) VALUES (%s, 'private') ON CONFLICT DO NOTHING", (chat_id,)
        )
    job = {
        "key": f"reply:{chat_id}:1",
        "chat_id": chat_id,
        "chat_type": "private",
        "user_id": chat_id,
        "reply_to_message_id": 1,
        "started_at": time.time(),
        "paced": True,
        "text": text,
        "stats": {},
        "markdown": markdown,  # as the ml stage marks a generated answer
    }
    keys = Keys(prefix)
    await redis.xadd(keys.stream_for("replies", chat_id), {"job": json.dumps(job)})


async def test_the_reply_arrives_even_when_typing_actions_fail(
    launch: Launcher, double: BotApiDouble
) -> None:
    double.fail_next("sendChatAction", 500, times=1000)
    await launch("all")
    await double.send_user_message(801, "Hello, are you there?")
    [reply] = await double.wait_for_messages(801, 1)
    assert reply
    assert all(call.status == 500 for call in double.calls_of("sendChatAction", 801))


async def test_a_429_is_waited_out_and_the_message_sent_once(
    launch: Launcher, double: BotApiDouble
) -> None:
    double.fail_next("sendMessage", 429, retry_after=1)
    await launch("all")
    await double.send_user_message(802, "Hello, how is the weather?")
    await double.wait_for_messages(802, 1)
    refused, sent = double.calls_of("sendMessage", 802)
    assert refused.status == 429 and sent.status == 200
    assert sent.at - refused.at >= 1.0  # retry_after honoured
    assert len(double.sent_texts(802)) == 1


async def test_a_long_reply_is_split_and_each_part_paced(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    await launch("all", TYPING_MIN_DELAY_SECONDS="0.5", TYPING_BETWEEN_PARTS_SECONDS="0.5")
    paragraphs = [f"Paragraph {n}. " + "word " * 300 for n in range(6)]
    await inject_reply(redis, redis_prefix, database_url, 803, "\n\n".join(paragraphs))
    parts = await double.wait_for_messages(803, 3)
    assert all(len(part) <= 4096 for part in parts)
    assert " ".join(parts).split() == " ".join(paragraphs).split()
    sends = double.calls_of("sendMessage", 803)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(sends)]
    assert all(gap >= 0.5 for gap in gaps)  # each part is "typed" for at least the minimum
    typing = double.calls_of("sendChatAction", 803)
    assert any(sends[0].at < action.at < sends[1].at for action in typing)


async def test_a_blocked_user_makes_the_reply_drop_without_retrying(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str
) -> None:
    double.fail_next("sendMessage", 403, times=1)
    await launch("all")
    await double.send_user_message(804, "/help", user_id=804)
    await double.wait_for(lambda: len(double.calls_of("sendMessage", 804)) == 1)
    await double.send_user_message(804, "/help", user_id=804)
    # The user is now marked blocked: the second update is ignored, nothing more is sent.
    await double.send_user_message(805, "/help")
    await double.wait_for_messages(805, 1)
    assert len(double.calls_of("sendMessage", 804)) == 1


async def test_web_worker_and_ml_as_separate_processes(
    launch: Launcher, double: BotApiDouble
) -> None:
    port = free_port()
    webhook = webhook_settings(port, SECRET)
    web = await launch("web", **webhook)
    await launch("worker", **webhook)
    await launch("ml")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{web.web_url}/health")).status_code == 200
        assert (await http.get(f"{web.web_url}/ready")).json()["status"] == "ready"
    await double.send_user_message(806, "Hello from a split deployment!")
    [reply] = await double.wait_for_messages(806, 1)
    assert reply
    assert double.webhook_responses[-1][1] == 200


def entities_of(message: dict[str, object]) -> list[Entity]:
    raw = message.get("entities") or []
    assert isinstance(raw, list)
    return [
        Entity(e["type"], e["offset"], e["length"], e.get("url"), e.get("language")) for e in raw
    ]


async def test_markdown_arrives_as_valid_entities_in_several_parts(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    await launch("worker", TYPING_SIMULATION_ENABLED="false")
    code = "\n".join(f"total_{n} = sum(`x`) ** {n}  # <b>not html</b> 😀" for n in range(120))
    assert len(code) > 5000
    markdown = (
        "**Bold with _nested italic_ inside** and a [link (with parens)](https://ex.am/a_(b)).\n\n"
        f"```python\n{code}\n```\n\nThat's **all**."
    )
    await inject_reply(redis, redis_prefix, database_url, 804, markdown, markdown=True)
    await double.wait_for(lambda: any("all" in t for t in double.sent_texts(804)), 60)
    messages = double.sent_messages(804)
    assert len(messages) >= 2
    assert all(call.status == 200 for call in double.calls_of("sendMessage", 804))
    kinds: set[str] = set()
    for message in messages:
        entities = entities_of(message)
        assert entity_problems(str(message["text"]), entities) == []
        kinds |= {e.type for e in entities}
    assert {"bold", "italic", "text_link", "pre"} <= kinds
    first = messages[0]
    assert str(first["text"]).startswith("Bold with nested italic inside and a link (with parens).")
    # The code block's text arrives whole across the parts, backticks and "<b>" included.
    shown = "\n".join(str(m["text"]) for m in messages)
    assert all(line in shown for line in code.splitlines())


async def test_a_part_whose_entities_telegram_refuses_still_arrives_as_plain_text(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    double.fail_next("sendMessage", 400, "Bad Request: can't parse entities: test refusal")
    await launch("worker", TYPING_SIMULATION_ENABLED="false")
    nasty = "Never closed **bold, <div> tags, 😀 and **real bold** then `code"
    await inject_reply(redis, redis_prefix, database_url, 805, nasty, markdown=True)
    [text] = await double.wait_for_messages(805, 1)
    refused, sent = double.calls_of("sendMessage", 805)
    assert refused.status == 400 and "entities" in refused.params
    assert sent.status == 200 and "entities" not in sent.params
    assert text == sent.params["text"] == refused.params["text"]
    assert "<div>" in text and "😀" in text


async def test_fixed_texts_are_sent_as_written(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    await launch("worker", TYPING_SIMULATION_ENABLED="false")
    await inject_reply(redis, redis_prefix, database_url, 806, "Hello, **__name__**!")
    [text] = await double.wait_for_messages(806, 1)
    assert text == "Hello, **__name__**!"
    assert "entities" not in double.calls_of("sendMessage", 806)[0].params
