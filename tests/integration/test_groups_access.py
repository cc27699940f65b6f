"""Groups and access control through the real worker (in this process), the Bot API double over
HTTP, the real PostgreSQL and Redis: who gets answered, where, and how often they are told no."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import psycopg
import pytest
from prometheus_client import REGISTRY

from aiconv.conversation import notices, texts
from aiconv.jobs.codec import JobCodec
from aiconv.resources import Resources
from aiconv.testing.botapi import BotApiDouble
from tests.support.database import query_rows
from tests.support.fixtures import InProcess
from tests.support.waiting import eventually

OUTSIDER, MEMBER = 3001, 3002


@pytest.fixture
async def double() -> AsyncIterator[BotApiDouble]:
    async with BotApiDouble(first_update_id=random.randrange(10**6, 10**9)) as server:
        yield server


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def refused(reason: str) -> float:
    return counted("aiconv_access_refused_total", reason=reason)


async def generated_prompts(resources: Resources, chat_id: int) -> list[list[list[str]]]:
    """The turns of every generation job the worker handed to ml for this chat."""
    keys = resources.keys
    stream = keys.stream_for("generate", chat_id)
    codec = JobCodec(None)
    prompts = []
    for _, fields in await resources.redis.xrange(stream) or []:
        raw = (fields or {}).get(b"job", (fields or {}).get("job"))
        payload = codec.decode(stream, raw)
        if payload is not None and payload.get("chat_id") == chat_id:
            prompts.append(payload["turns"])
    return prompts


async def test_a_group_is_answered_only_when_addressed_with_names_and_context(
    in_process: InProcess, double: BotApiDouble, database_url: str
) -> None:
    """Chatter is kept as context but never answered; a mention is answered, its text stripped of
    the mention, each user turn carrying its sender's name; a reply to the bot is answered too."""
    resources = await in_process(("worker", "ml"), GROUP_CONTEXT_MESSAGES="1")
    group = -4000 - random.randrange(1000)
    await double.send_user_message(group, "first chatter", user_id=11, chat_type="group")
    chatter = await double.send_user_message(group, "lunch at noon?", user_id=11, chat_type="group")
    text = f"@{double.bot_username} what do you think?"
    asked = await double.send_user_message(
        group, text, user_id=12, chat_type="group", extra={"entities": double.mention(text)}
    )
    await double.wait_for_messages(group, 1)
    [answer] = double.calls_of("sendMessage", group)
    assert answer.params["reply_parameters"]["message_id"] == asked["message"]["message_id"]
    [prompt] = await generated_prompts(resources, group)
    user_text = "\n".join(content for role, content in prompt if role == "user")
    # GROUP_CONTEXT_MESSAGES=1: only the newest chatter; the mention is gone from the text.
    assert user_text == "User11: lunch at noon?\nUser12: what do you think?"
    stored = query_rows(
        database_url,
        "SELECT telegram_message_id, context_only FROM messages "
        "WHERE chat_id = %s AND role = 'user' ORDER BY id",
        group,
    )
    assert stored[1] == (chatter["message"]["message_id"], True)
    assert stored[2] == (asked["message"]["message_id"], False)

    # A reply to the bot's message, without a mention, is addressed as well.
    [bot_said] = [m for (chat, _), m in double.bot_messages.items() if chat == group]
    await double.send_user_message(
        group, "why?", user_id=11, chat_type="group", extra={"reply_to_message": bot_said}
    )
    await double.wait_for_messages(group, 2)
    assert len(await generated_prompts(resources, group)) == 2


async def test_a_topic_message_is_answered_in_its_topic_with_that_topic_s_history(
    in_process: InProcess, double: BotApiDouble
) -> None:
    resources = await in_process(("worker", "ml"))
    forum = -1009000000 - random.randrange(1000)
    topic = {"message_thread_id": 77, "is_topic_message": True}
    await double.send_user_message(
        forum,
        f"@{double.bot_username} in the other topic",
        user_id=21,
        chat_type="supergroup",
        extra={
            "entities": double.mention(f"@{double.bot_username} x"),
            "message_thread_id": 5,
            "is_topic_message": True,
        },
    )
    await double.wait_for_messages(forum, 1)
    text = f"hello @{double.bot_username} \U0001f600 how are you?"
    await double.send_user_message(
        forum,
        text,
        user_id=21,
        chat_type="supergroup",
        extra={"entities": double.mention(text), **topic},
    )
    await double.wait_for_messages(forum, 2)
    first, second = double.calls_of("sendMessage", forum)
    assert (first.params["message_thread_id"], second.params["message_thread_id"]) == (5, 77)
    prompts = await generated_prompts(resources, forum)
    # The second topic's turn reads only its own topic: nothing of topic 5.
    assert prompts[-1][-1] == ["user", "User21: hello \U0001f600 how are you?"]
    assert all("other topic" not in content for _, content in prompts[-1])


async def test_an_outsider_is_refused_once_a_day_and_nothing_is_generated(
    in_process: InProcess, double: BotApiDouble, database_url: str
) -> None:
    resources = await in_process(ACCESS_MODE="allowlist", ALLOWED_USER_IDS=str(MEMBER))
    before = refused("refused")
    for text in ("hi", "hello?", "/start"):
        await double.send_user_message(OUTSIDER, text)
    await eventually(lambda: refused("refused") >= before + 3, timeout=30)
    assert double.sent_texts(OUTSIDER) == [notices.NOT_ALLOWED]
    # Only the refusal is stored; the outsider's words are not.
    assert query_rows(database_url, "SELECT role FROM messages WHERE chat_id = %s", OUTSIDER) == [
        ("assistant",)
    ]
    assert await generated_prompts(resources, OUTSIDER) == []

    # Granted at run time (what the admin API's POST /admin/access/users/{id} stores).
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO access_grants (kind, id, granted_by) VALUES ('user', %s, 'test')",
            (OUTSIDER,),
        )
    await double.send_user_message(OUTSIDER, "/help")
    await double.wait_for_messages(OUTSIDER, 2)
    assert double.sent_texts(OUTSIDER)[1] == texts.help_text()


async def test_a_used_up_daily_quota_is_told_once_with_its_reset_time(
    in_process: InProcess, double: BotApiDouble, database_url: str
) -> None:
    user = 3100 + random.randrange(100)
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO users (id) VALUES (%s) ON CONFLICT DO NOTHING", (user,))
        conn.execute("INSERT INTO chats (id, type) VALUES (%s, 'private')", (user,))
        conn.execute(
            """INSERT INTO messages (chat_id, user_id, role, text, idempotency_key,
                   completion_tokens, created_at)
               VALUES (%s, %s, 'assistant', 'yesterday', %s, 1000,
                       date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                       - interval '1 second'),
                      (%s, %s, 'assistant', 'today', %s, 40, now())""",
            (user, user, f"q-y-{user}", user, user, f"q-t-{user}"),
        )
    resources = await in_process(USER_DAILY_TOKENS="40")
    before = refused("quota")
    await double.send_user_message(user, "one more?")
    await double.send_user_message(user, "please?")
    await eventually(lambda: refused("quota") >= before + 2, timeout=30)
    assert double.sent_texts(user) == [notices.quota_used(40)]
    assert "midnight UTC" in notices.quota_used(40)
    # Yesterday's 1000 tokens do not count: the quota resets at UTC midnight.
    assert await resources.store.tokens_today(user) == 40


async def test_the_burst_guard_skips_messages_over_the_limit_and_warns_once(
    in_process: InProcess, double: BotApiDouble, database_url: str
) -> None:
    await in_process(USER_MESSAGES_PER_MINUTE="2")
    chat = 3200 + random.randrange(100)
    before = refused("burst")
    for _ in range(4):
        await double.send_user_message(chat, "/help")
    await eventually(lambda: refused("burst") >= before + 2, timeout=30)
    await double.wait_for_messages(chat, 3)
    sent = double.sent_texts(chat)
    assert sorted(sent) == sorted([texts.help_text()] * 2 + [notices.slow_down(2)])


async def test_a_bot_removed_from_a_group_does_not_answer_there_and_migration_keeps_history(
    in_process: InProcess, double: BotApiDouble, database_url: str
) -> None:
    resources = await in_process()
    group = -6000 - random.randrange(1000)
    await double.deliver(double.make_membership_update(group, "member", by_user_id=41))
    await double.send_user_message(group, "earlier words", user_id=41, chat_type="group")
    await double.deliver(double.make_membership_update(group, "kicked", old_status="member"))
    await eventually(
        lambda: (
            query_rows(database_url, "SELECT bot_status FROM chats WHERE id = %s", group)
            == [("kicked",)]
        ),
        timeout=30,
    )
    before = counted("aiconv_group_messages_total", outcome="ignored")
    text = f"@{double.bot_username} still there?"
    await double.send_user_message(
        group, text, user_id=41, chat_type="group", extra={"entities": double.mention(text)}
    )
    await eventually(
        lambda: counted("aiconv_group_messages_total", outcome="ignored") >= before + 1,
        timeout=30,
    )
    assert double.calls_of("sendMessage", group) == []
    events = query_rows(
        database_url,
        "SELECT by_user_id, old_status, new_status FROM chat_member_events "
        "WHERE chat_id = %s ORDER BY id",
        group,
    )
    assert events == [(41, "left", "member"), (1, "member", "kicked")]

    # The group becomes a supergroup: its history continues there.
    supergroup = -1007000000 - random.randrange(1000)
    for update in double.make_migration_updates(group, supergroup):
        await double.deliver(update)
    await eventually(
        lambda: (
            query_rows(database_url, "SELECT migrated_to_chat_id FROM chats WHERE id = %s", group)
            == [(supergroup,)]
        ),
        timeout=30,
    )
    history = await resources.store.history(supergroup, 10, context_limit=5)
    assert [t.text for t in history] == ["earlier words"]


async def test_the_text_a_user_replies_to_is_quoted_in_their_turn(
    in_process: InProcess, double: BotApiDouble
) -> None:
    """A reply carries the replied message's text into the prompt, or only the part the user
    quoted (`quote`), bounded; the generation job the worker hands to ml shows it."""
    resources = await in_process(("worker",))
    whole, part = 5001 + random.randrange(1000), 7001 + random.randrange(1000)
    earlier = {
        "message_id": 77,
        "from": {"id": 1, "is_bot": True, "first_name": "bot"},
        "date": 1,
        "text": "The capital is Paris.\nIt has 2 million people.",
    }
    await double.send_user_message(
        whole, "are you sure?", user_id=whole, extra={"reply_to_message": earlier}
    )
    await double.send_user_message(
        part,
        "why that one?",
        user_id=part,
        extra={"reply_to_message": earlier, "quote": {"text": "Paris", "position": 15}},
    )

    async def last_user_turn(chat_id: int) -> str | None:
        prompts = await generated_prompts(resources, chat_id)
        return prompts[-1][-1][1] if prompts else None

    assert await eventually(lambda: last_user_turn(whole), timeout=30) == (
        "> The capital is Paris.\n> It has 2 million people.\n\nare you sure?"
    )
    assert await eventually(lambda: last_user_turn(part), timeout=30) == (
        "> Paris\n\nwhy that one?"
    )
