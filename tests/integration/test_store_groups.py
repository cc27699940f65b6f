"""The store's group queries on the real PostgreSQL: context rows, topics, migration, senders."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator

import pytest

from aiconv.conversation.history import Role
from aiconv.store.crypto import TextCipher
from aiconv.store.repository import Store
from aiconv.telegram.models import IncomingMessage
from tests.support.database import open_pool
from tests.support.messages import incoming_message


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with open_pool(database_url, max_size=4) as pool:
        # Sealed text: migration must not move rows whose text is bound to their chat id.
        yield Store(pool, TextCipher.from_setting("a-test-passphrase-of-some-length"))


def member(chat_id: int, user_id: int, name: str) -> IncomingMessage:
    return incoming_message(
        update_id=0,
        chat_id=chat_id,
        chat_type="group" if chat_id > -(10**12) else "supergroup",
        user_id=user_id,
        username=None,
        first_name=name,
        language_code=None,
        message_id=0,
        text="",
    )


def new_group() -> int:
    return -random.randrange(10**6, 10**9)


async def say(
    store: Store,
    chat_id: int,
    message_id: int,
    text: str,
    *,
    user_id: int | None = None,
    thread: int | None = None,
    context: bool = False,
) -> None:
    role: Role = "user" if user_id is not None else "assistant"
    await store.add_message(
        chat_id=chat_id,
        user_id=user_id,
        role=role,
        text=text,
        idempotency_key=f"t:{chat_id}:{message_id}:{role}",
        telegram_message_id=message_id,
        reply_to_message_id=message_id - 1 if role == "assistant" else None,
        message_thread_id=thread,
        context_only=context,
    )


async def test_context_rows_never_make_a_chat_owe_a_reply(store: Store) -> None:
    group = new_group()
    await store.record_sender(dataclasses.replace(member(group, 51, "Ann"), message_id=1))
    await say(store, group, 1, "@bot hi", user_id=51)
    await say(store, group, 2, "hello Ann")
    await say(store, group, 3, "chatter after the answer", user_id=51, context=True)
    owed = {c.chat_id for c in await store.unanswered_chats(3600, 1000)}
    assert group not in owed
    await say(store, group, 4, "@bot and now?", user_id=51)
    owed = {c.chat_id for c in await store.unanswered_chats(3600, 1000)}
    assert group in owed


async def test_history_names_senders_and_keeps_the_newest_context_beyond_the_limit(
    store: Store,
) -> None:
    group = new_group()
    await store.record_sender(member(group, 52, "Bea"))
    await store.record_sender(member(group, 53, "Cy"))
    await say(store, group, 1, "question", user_id=52)
    await say(store, group, 2, "answer")
    for n in range(3, 13):  # a busy group's chatter
        await say(store, group, n, f"chatter {n}", user_id=53, context=True)
    history = await store.history(group, 2, context_limit=3, with_senders=True)
    assert [(t.sender, t.text, t.context_only) for t in history] == [
        ("Bea", "question", False),
        (None, "answer", False),
        ("Cy", "chatter 10", True),
        ("Cy", "chatter 11", True),
        ("Cy", "chatter 12", True),
    ]
    assert all(t.sender is None for t in await store.history(group, 2))


async def test_history_is_read_per_forum_topic(store: Store) -> None:
    forum = -(10**12) - random.randrange(10**6)
    await store.record_sender(member(forum, 54, "Di"))
    await say(store, forum, 1, "in topic 5", user_id=54, thread=5)
    await say(store, forum, 2, "in general", user_id=54)
    await say(store, forum, 3, "reply in topic 5", thread=5)
    assert [t.text for t in await store.history(forum, 10, thread=5)] == [
        "in topic 5",
        "reply in topic 5",
    ]
    assert [t.text for t in await store.history(forum, 10)] == ["in general"]
    assert await store.thread_of(forum, 1) == 5
    assert await store.thread_of(forum, 2) is None


async def test_the_recovery_sweep_finds_each_forum_topic_s_newest_unanswered_message(
    store: Store,
) -> None:
    """Each topic is its own conversation: a message owed in one topic is found however the
    others were answered, and only a reply in its own topic answers it."""
    forum = -(10**12) - random.randrange(10**6)
    await store.record_sender(member(forum, 57, "Hal"))

    async def owed() -> list[tuple[int, int | None, int | None, int | None]]:
        return [
            (c.chat_id, c.telegram_message_id, c.user_id, c.topic)
            for c in await store.unanswered_chats(3600, 1000)
            if c.chat_id == forum
        ]

    await say(store, forum, 1, "A: question", user_id=57, thread=5)
    await say(store, forum, 2, "A: answer", thread=5)
    # B's message waits while topic A has a newer, answered exchange
    await say(store, forum, 3, "B: question", user_id=57, thread=7)
    await say(store, forum, 4, "A: again", user_id=57, thread=5)
    await say(store, forum, 5, "A: answer again", thread=5)
    assert await owed() == [(forum, 3, 57, 7)]
    # a reply naming no message, stored after B's message but in topic A: not B's answer
    await store.add_message(
        chat_id=forum,
        role="assistant",
        text="A: aside",
        idempotency_key=f"t:{forum}:aside",
        message_thread_id=5,
    )
    assert await owed() == [(forum, 3, 57, 7)]
    # B's newest message, after A was answered, is the one owed
    await say(store, forum, 6, "B: anyone?", user_id=57, thread=7)
    assert await owed() == [(forum, 6, 57, 7)]
    # answered in its own topic: nothing owed
    await say(store, forum, 7, "B: answer", thread=7)
    assert await owed() == []
    # outside topics (NULL message_thread_id) is one more conversation of the forum
    await say(store, forum, 8, "general: hello", user_id=57)
    assert await owed() == [(forum, 8, 57, None)]


async def test_a_migrated_group_s_history_continues_in_its_supergroup(store: Store) -> None:
    group, supergroup = new_group(), -(10**12) - random.randrange(10**6)
    await store.record_sender(member(group, 55, "Eve"))
    await say(store, group, 500, "old question", user_id=55)
    await say(store, group, 501, "old answer")
    await store.record_migration(group, supergroup)
    await store.record_migration(group, supergroup)  # Telegram's second service message
    await store.record_sender(member(supergroup, 55, "Eve"))
    # A supergroup numbers its messages afresh: lower ids than the group's, yet later.
    await say(store, supergroup, 1, "new question", user_id=55)
    history = await store.history(supergroup, 10)
    assert [t.text for t in history] == ["old question", "old answer", "new question"]
    assert [t.text for t in await store.history(group, 10)] == ["old question", "old answer"]


async def test_a_reset_before_migration_still_forgets(store: Store) -> None:
    group, supergroup = new_group(), -(10**12) - random.randrange(10**6)
    await store.record_sender(member(group, 56, "Flo"))
    await say(store, group, 1, "forgotten", user_id=56)
    await store.reset_history(group)
    await say(store, group, 2, "kept", user_id=56)
    await store.record_migration(group, supergroup)
    assert [t.text for t in await store.history(supergroup, 10)] == ["kept"]


async def test_a_reply_for_a_user_without_a_row_is_stored_without_the_user(store: Store) -> None:
    """Delivery stores replies with the user they answer (for the token quota); a user deleted
    meanwhile must not make the reply's row fail for good."""
    chat = random.randrange(10**9, 10**10)
    await store.record_sender(dataclasses.replace(member(chat, chat, "Gus"), chat_type="private"))
    await store.add_message(
        chat_id=chat, user_id=chat + 1, role="assistant", text="hi", idempotency_key=f"nu:{chat}"
    )
    assert [t.text for t in await store.history(chat, 5)] == ["hi"]
