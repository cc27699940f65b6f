"""Bot commands through the real worker (in this process), the Bot API double over HTTP, the real
PostgreSQL and Redis: /start, /help, /reset, /persona (admins only in groups, cached), /stats,
/retry (a new turn over the same user message, never two answers at once)."""

from __future__ import annotations

import functools
import random
from typing import Any

import httpx
import psycopg
import pytest
from redis.asyncio import Redis

from aiconv.conversation import texts
from aiconv.conversation.commands import menu
from aiconv.conversation.prompt import DEFAULT_PERSONA
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.telegram.client import BotClient
from aiconv.testing.botapi import BotApiDouble
from aiconv.worker.commands import CommandMenu
from tests.support.fixtures import InProcess
from tests.support.streams import generation_jobs
from tests.support.waiting import eventually


def rows(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


def a_chat() -> int:
    return 7_000_000 + random.randrange(10**6)


def a_group() -> int:
    return -7_000_000 - random.randrange(10**6)


async def test_start_help_reset_and_an_unknown_command(
    in_process: InProcess, double: BotApiDouble
) -> None:
    await in_process()
    chat = a_chat()
    for text in ("/start", "/help", "/reset", "/nope"):
        await double.send_user_message(chat, text)
        await double.wait_for_messages(chat, len(double.sent_texts(chat)) + 1)
    assert double.sent_texts(chat) == [
        texts.greeting(f"User{chat}"),
        texts.help_text(),
        texts.RESET_DONE,
        texts.UNKNOWN_COMMAND,
    ]
    for name, _ in menu():
        assert f"/{name}" in texts.help_text()


async def test_persona_is_shown_set_limited_reset_and_reaches_the_model(
    in_process: InProcess, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    resources = await in_process(PERSONA_MAX_CHARS="40")  # no ml: the jobs stay in the stream
    chat = a_chat()

    async def say(text: str) -> str:
        count = len(double.sent_texts(chat))
        await double.send_user_message(chat, text)
        return (await double.wait_for_messages(chat, count + 1))[-1]

    assert await say("/persona") == texts.persona_shown(resources.settings.persona, custom=False)
    too_long = "x" * 41
    assert await say(f"/persona {too_long}") == texts.persona_too_long(41, 40)
    assert rows(database_url, "SELECT persona FROM chats WHERE id = %s", chat) == [(None,)]

    pirate = "Talk like a pirate.\nAlways."
    assert await say(f"/persona {pirate}") == texts.PERSONA_SET
    assert await say("/persona") == texts.persona_shown(pirate, custom=True)

    await double.send_user_message(chat, "hello there")
    jobs = await eventually(lambda: generation_jobs(redis, Keys(redis_prefix), chat))
    assert jobs[-1]["persona"] == pirate  # what the ml stage builds its system prompt from
    assert jobs[-1]["turns"][-1] == ["user", "hello there"]

    assert await say("/persona RESET") == texts.PERSONA_RESET
    assert await say("/persona") == texts.persona_shown(DEFAULT_PERSONA, custom=False)


async def test_persona_is_encrypted_at_rest_when_a_key_is_set(
    in_process: InProcess, double: BotApiDouble, database_url: str
) -> None:
    key = "11" * 32
    resources = await in_process(ENCRYPTION_KEY=key)
    chat = a_chat()
    await double.send_user_message(chat, "/persona Be a haiku poet.")
    await double.wait_for_messages(chat, 1)
    [(stored, sealed)] = rows(
        database_url, "SELECT persona, persona_sealed FROM chats WHERE id = %s", chat
    )
    assert sealed is True
    assert "haiku" not in stored
    assert await resources.store.chat_persona(chat) == "Be a haiku poet."


async def test_in_a_group_only_admins_change_the_persona_and_the_answer_is_cached(
    in_process: InProcess, double: BotApiDouble, redis: Redis, redis_prefix: str
) -> None:
    await in_process(ADMIN_CACHE_SECONDS="600")
    group, admin, member = a_group(), 801, 802
    double.set_admins(group, admin)
    bot = double.bot_username

    async def say(text: str, user: int, **extra: Any) -> str:
        count = len(double.sent_texts(group))
        await double.send_user_message(group, text, user_id=user, chat_type="group", extra=extra)
        return (await double.wait_for_messages(group, count + 1))[-1]

    assert await say(f"/persona@{bot} be rude", member) == texts.PERSONA_ADMINS_ONLY
    assert await say(f"/persona@{bot} Answer in French.", admin) == texts.PERSONA_SET
    # Everyone may look; the mention form works like /cmd@bot.
    looked = f"@{bot} /persona"
    shown = await say(looked, member, entities=double.mention(looked))
    assert shown == texts.persona_shown("Answer in French.", custom=True)
    assert await say(f"/persona@{bot} reset", admin) == texts.PERSONA_RESET

    asked = {(c.params["chat_id"], c.params["user_id"]) for c in double.calls_of("getChatMember")}
    assert asked == {(group, admin), (group, member)}
    assert len(double.calls_of("getChatMember")) == 2  # the admin's second change: from Redis
    assert await redis.get(Keys(redis_prefix).chat_admin(group, admin)) == "1"
    assert await redis.get(Keys(redis_prefix).chat_admin(group, member)) == "0"

    # A bare /persona in a group may be another bot's: not answered, nothing changed.
    before = len(double.sent_texts(group))
    await double.send_user_message(group, "/persona be rude", user_id=admin, chat_type="group")
    await double.send_user_message(group, "/help", user_id=member, chat_type="group")
    sent = await double.wait_for_messages(group, before + 1)
    assert sent[before:] == [texts.help_text()]  # the bare /help after it was answered, alone


async def test_a_failed_admin_check_refuses_the_change_and_is_not_cached(
    in_process: InProcess, double: BotApiDouble, redis: Redis, redis_prefix: str
) -> None:
    await in_process()
    group, admin = a_group(), 811
    double.set_admins(group, admin)
    double.fail_next("getChatMember", 500)
    text = f"/persona@{double.bot_username} Be brief."
    await double.send_user_message(group, text, user_id=admin, chat_type="group")
    assert (await double.wait_for_messages(group, 1)) == [texts.PERSONA_UNCHECKED]
    assert await redis.get(Keys(redis_prefix).chat_admin(group, admin)) is None
    await double.send_user_message(group, text, user_id=admin, chat_type="group")
    assert (await double.wait_for_messages(group, 2))[-1] == texts.PERSONA_SET


async def test_stats_counts_this_chat_today_and_in_total_with_the_quota_left(
    in_process: InProcess, double: BotApiDouble, database_url: str
) -> None:
    chat = a_chat()
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO users (id) VALUES (%s)", (chat,))
        conn.execute("INSERT INTO chats (id, type) VALUES (%s, 'private')", (chat,))
        conn.execute(
            """INSERT INTO messages (chat_id, user_id, role, text, idempotency_key,
                   completion_tokens, created_at)
               VALUES (%(c)s, %(c)s, 'user', 'old', %(k)s || 'a', NULL, now() - interval '2 days'),
                      (%(c)s, %(c)s, 'assistant', 'old', %(k)s || 'b', 70,
                       now() - interval '2 days'),
                      (%(c)s, %(c)s, 'user', 'new', %(k)s || 'c', NULL, now()),
                      (%(c)s, %(c)s, 'assistant', 'new', %(k)s || 'd', 30, now())""",
            {"c": chat, "k": f"stats-{chat}-"},
        )
    await in_process(USER_DAILY_TOKENS="100")
    await double.send_user_message(chat, "/stats")
    [reply] = await double.wait_for_messages(chat, 1)
    # The /stats command itself is not stored, so it is not counted.
    assert reply == texts.stats_text(2, 4, 30, 100, (30, 100))
    assert "70 of 100 tokens left" in reply


async def test_retry_is_a_new_turn_over_the_same_message_and_never_answers_twice(
    in_process: InProcess, double: BotApiDouble, redis: Redis, redis_prefix: str
) -> None:
    resources = await in_process(("worker", "ml"))
    chat = a_chat()
    await double.send_user_message(chat, "/retry")
    assert await double.wait_for_messages(chat, 1) == [texts.NOTHING_TO_RETRY]

    asked = await double.send_user_message(chat, "Name a colour.")
    [_, first] = await double.wait_for_messages(chat, 2)
    retry = await double.send_user_message(chat, "/retry")
    await double.wait_for_messages(chat, 3)
    jobs = await generation_jobs(redis, Keys(redis_prefix), chat)
    # A turn of its own, answering the /retry (delivery decides whether to quote it).
    assert jobs[-1]["reply_to_message_id"] == retry["message"]["message_id"]
    # The retried turn saw the same user message, without the answer it replaces.
    assert jobs[-1]["turns"] == [["user", "Name a colour."]]
    assert jobs[0]["turns"] == jobs[-1]["turns"]
    assert asked["message"]["text"] == "Name a colour."

    # /retry racing a new message: one turn answers both, once.
    await double.send_user_message(chat, "/retry")
    await double.send_user_message(chat, "And a number?")
    await double.wait_for_messages(chat, 4)
    await settled(redis, Keys(redis_prefix), chat)
    sent = double.sent_texts(chat)
    assert len(sent) == 4, sent
    assert first in sent  # nothing already sent was replaced or deleted
    assert not [c for c in double.calls if c.method in ("editMessageText", "deleteMessage")]
    last = (await generation_jobs(redis, Keys(redis_prefix), chat))[-1]
    assert last["turns"] == [["user", "Name a colour.\nAnd a number?"]] or last["turns"] == [
        ["user", "Name a colour."],
        ["user", "And a number?"],
    ]
    history = await resources.store.history(chat, 20)
    assert [t.retry for t in history].count(True) == 2  # the markers stay, for the record


async def settled(redis: Redis, keys: Keys, chat: int) -> None:
    """Wait until every message of the chat noted for a turn is answered and no turn is held."""

    async def done() -> bool:
        state = await redis.hgetall(keys.chat_state(chat))
        return "turn" not in state and state.get("noted") == state.get("answered")

    await eventually(done, timeout=60)


async def test_the_command_menu_is_set_once_and_left_alone_when_unchanged(
    double: BotApiDouble, http: httpx.AsyncClient
) -> None:
    """What the worker runs at start: getMyCommands, then setMyCommands only if it differs."""
    bot = BotClient(http, double.url, double.token)
    await CommandMenu(bot).register()
    await CommandMenu(bot).register()
    assert len(double.calls_of("setMyCommands")) == 1
    assert len(double.calls_of("getMyCommands")) == 2
    assert [(c["command"], c["description"]) for c in double.my_commands] == menu()


async def test_an_anonymous_group_admin_may_change_the_persona(
    in_process: InProcess, double: BotApiDouble
) -> None:
    """Anonymous admins write as the group itself (`sender_chat`), from GroupAnonymousBot."""
    await in_process()
    group = a_group()
    anonymous = {"sender_chat": {"id": group, "type": "group", "title": "the group"}}
    text = f"/persona@{double.bot_username} Be formal."
    await double.send_user_message(
        group, text, user_id=1087968824, chat_type="group", extra=anonymous
    )
    assert await double.wait_for_messages(group, 1) == [texts.PERSONA_SET]
    assert double.calls_of("getChatMember") == []
    # Another chat posting in the group (a linked channel) is no admin of it.
    channel = {"sender_chat": {"id": -100999, "type": "channel", "title": "a channel"}}
    await double.send_user_message(group, text, user_id=136817688, chat_type="group", extra=channel)
    assert (await double.wait_for_messages(group, 2))[-1] == texts.PERSONA_ADMINS_ONLY


@pytest.mark.both_redis
async def test_one_worker_serves_the_chats_of_every_shard(
    in_process: InProcess, double: BotApiDouble, redis: RedisClient, keys: Keys
) -> None:
    """One updates and one replies consumer per shard stream: a fixed reply goes from each
    chat's updates to its replies stream and out; a message becomes a turn claimed in its shard
    and a generation job in that shard's stream (no ml here: it stays there)."""
    await in_process()
    chats: dict[int, int] = {}
    while len(chats) < keys.shards:
        chat = a_chat()
        chats.setdefault(keys.shard_of(chat), chat)
    for chat in chats.values():
        await double.send_user_message(chat, "/start")
    for chat in chats.values():
        assert await double.wait_for_messages(chat, 1) == [texts.greeting(f"User{chat}")]
        await double.send_user_message(chat, "hello")
    for chat in chats.values():
        jobs = await eventually(functools.partial(generation_jobs, redis, keys, chat))
        assert [job["turns"][-1] for job in jobs] == [["user", "hello"]]
