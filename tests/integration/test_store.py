"""PostgreSQL access on a real server: migrations, idempotent writes, history in chat order and
/reset, blocks, the recovery sweep's query, and the pool across an outage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

import psycopg
import psycopg.conninfo
import pytest
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from aiconv.conversation.history import Turn
from aiconv.store.admin import AdminStore
from aiconv.store.db import RECONNECT_WINDOW_SECONDS, make_pool
from aiconv.store.migrate import apply_migrations, available_migrations
from aiconv.store.repository import GenerationStats, Store
from aiconv.telegram.models import IncomingMessage
from tests.support.database import open_pool
from tests.support.messages import incoming_message


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with open_pool(database_url, max_size=4) as pool:
        yield Store(pool)


def incoming(chat_id: int, user_id: int = 1, message_id: int = 1) -> IncomingMessage:
    return incoming_message(
        update_id=message_id, chat_id=chat_id, user_id=user_id, message_id=message_id
    )


async def test_migrations_are_recorded_and_idempotent(database_url: str) -> None:
    # The session fixture applied them already: a second run applies nothing.
    assert await apply_migrations(database_url) == []
    versions = [m.version for m in available_migrations()]
    assert versions == sorted(set(versions)) and versions[0] == 1


async def test_a_message_is_stored_once_per_key(store: Store) -> None:
    await store.record_sender(incoming(9001))
    first = await store.add_message(chat_id=9001, role="user", text="a", idempotency_key="k1")
    again = await store.add_message(chat_id=9001, role="user", text="a", idempotency_key="k1")
    assert first == again
    assert await store.history(9001, 10) == [Turn("user", "a")]


async def test_history_is_recent_first_limited_and_forgotten_on_reset(store: Store) -> None:
    await store.record_sender(incoming(9002))
    for n in range(5):
        role: Literal["user", "assistant"] = "user" if n % 2 == 0 else "assistant"
        await store.add_message(
            chat_id=9002,
            role=role,
            text=f"m{n}",
            idempotency_key=f"h{n}",
            stats=GenerationStats(completion_tokens=3) if role == "assistant" else None,
        )
    assert [t.text for t in await store.history(9002, 3)] == ["m2", "m3", "m4"]
    await store.reset_history(9002)
    assert await store.history(9002, 10) == []
    await store.add_message(chat_id=9002, role="user", text="after", idempotency_key="h9")
    assert await store.history(9002, 10) == [Turn("user", "after")]


async def user_flags(store: Store, user_id: int) -> tuple[bool, bool]:
    """(blocked by an admin, blocked the bot)"""
    async with store.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT blocked, blocked_bot_at IS NOT NULL FROM users WHERE id = %s", (user_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1])


async def test_a_user_who_blocked_the_bot_is_heard_again_when_they_write(store: Store) -> None:
    assert await store.record_sender(incoming(9003, user_id=77)) is True
    await store.mark_bot_blocked(77)  # Telegram answered 403
    assert await user_flags(store, 77) == (False, True)
    # They unblocked the bot and wrote: the update is handled and the mark is gone.
    assert await store.record_sender(incoming(9003, user_id=77)) is True
    assert await user_flags(store, 77) == (False, False)
    # The deprecated name (delivery's 403 path until it is rewired) sets the same mark only.
    await store.set_user_blocked(77, True)
    assert await user_flags(store, 77) == (False, True)
    assert await store.record_sender(incoming(9003, user_id=77)) is True


async def test_only_an_admin_clears_an_admin_block(store: Store) -> None:
    admin = AdminStore(store.pool)
    assert await store.record_sender(incoming(9005, user_id=78)) is True
    await store.mark_bot_blocked(78)
    assert await admin.set_blocked(78, True) == {"id": 78, "blocked": True}
    # Writing again clears the user's own mark, never the admin's block.
    assert await store.record_sender(incoming(9005, user_id=78)) is False
    assert await store.record_sender(incoming(9005, user_id=78)) is False
    assert await user_flags(store, 78) == (True, False)
    await store.mark_bot_blocked(78)
    assert await admin.set_blocked(78, False) == {"id": 78, "blocked": False}
    assert await user_flags(store, 78) == (False, True)  # unblock left the user's mark alone
    assert await store.record_sender(incoming(9005, user_id=78)) is True


KEY = bytes(range(32)).hex()


@pytest.fixture
async def sealing_store(database_url: str) -> AsyncIterator[Store]:
    from aiconv.store.crypto import TextCipher

    async with open_pool(database_url) as pool:
        yield Store(pool, TextCipher([KEY, "an-older-passphrase-key"]))


async def stored_row(store: Store, key: str) -> tuple[str, bool | None]:
    async with store.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT text, text_sealed FROM messages WHERE idempotency_key = %s", (key,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return row[0], row[1]


async def test_message_text_is_encrypted_at_rest(sealing_store: Store) -> None:
    store = sealing_store
    await store.record_sender(incoming(9004))
    await store.add_message(chat_id=9004, role="user", text="secret words", idempotency_key="e1")
    text, sealed = await stored_row(store, "e1")
    assert sealed is True and "secret" not in text
    assert await store.history(9004, 10) == [Turn("user", "secret words")]
    found = await store.message_by_key("e1")
    assert found is not None and found.text == "secret words"


async def test_text_that_looks_encrypted_is_stored_and_read_as_plain(store: Store) -> None:
    # Regression (issue 13, item 4): a plaintext message starting with the ciphertext prefix was
    # read as ciphertext. Rows now say whether they are encrypted.
    from aiconv.store.crypto import TextCipher

    looks = "enc1:deadbeef:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    await store.record_sender(incoming(9010))
    await store.add_message(chat_id=9010, role="user", text=looks, idempotency_key="e10")
    assert await stored_row(store, "e10") == (looks, False)
    later = Store(store.pool, TextCipher([KEY]))  # encryption enabled afterwards
    assert await later.history(9010, 10) == [Turn("user", looks)]


async def test_a_sealed_text_moved_onto_another_row_does_not_decrypt(sealing_store: Store) -> None:
    store = sealing_store
    await store.record_sender(incoming(9011))
    await store.add_message(chat_id=9011, role="user", text="mine", idempotency_key="e11a")
    await store.add_message(chat_id=9011, role="user", text="other", idempotency_key="e11b")
    async with store.pool.connection() as conn:
        await conn.execute(
            """UPDATE messages SET text = (SELECT text FROM messages WHERE idempotency_key = 'e11a')
               WHERE idempotency_key = 'e11b'"""
        )
    # The moved row is unreadable and left out; the conversation goes on.
    assert await store.history(9011, 10) == [Turn("user", "mine")]


async def test_unreadable_rows_are_left_out_not_errors(sealing_store: Store) -> None:
    store = sealing_store
    await store.record_sender(incoming(9012))
    await store.add_message(chat_id=9012, role="user", text="kept", idempotency_key="e12a")
    async with store.pool.connection() as conn:
        await conn.execute(
            """INSERT INTO messages (chat_id, role, text, text_sealed, idempotency_key)
               VALUES (9012, 'user', 'not base64 at all!', true, 'e12b'),
                      (9012, 'user', 'AAAA', true, 'e12c')"""
        )
    assert await store.history(9012, 10) == [Turn("user", "kept")]
    found = await store.message_by_key("e12b")
    assert found is not None and found.text == ""


async def test_rows_written_by_the_previous_release_stay_readable(sealing_store: Store) -> None:
    import base64
    import hashlib
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    store = sealing_store
    key = hashlib.sha256(b"an-older-passphrase-key").digest()
    key_id = hashlib.sha256(b"aiconv-key-id" + key).hexdigest()[:8]
    nonce = os.urandom(12)
    blob = base64.b64encode(nonce + AESGCM(key).encrypt(nonce, b"old words", key_id.encode()))
    await store.record_sender(incoming(9013))
    async with store.pool.connection() as conn:  # as 0003 left them: no text_sealed
        await conn.execute(
            """INSERT INTO messages (chat_id, user_id, role, text, idempotency_key) VALUES
               (9013, 1, 'user', %s, 'e13a'), (9013, NULL, 'assistant', 'plain before', 'e13b')""",
            (f"enc1:{key_id}:{blob.decode()}",),
        )
    assert await store.history(9013, 10) == [
        Turn("user", "old words"),
        Turn("assistant", "plain before"),
    ]
    export = await AdminStore(store.pool, read_text=store.unseal).export_user(1)
    assert export is not None
    texts = {m["text"] for m in export["messages"] if m["chat_id"] == 9013}
    assert texts == {"old words", "plain before"}
    assert all("text_sealed" not in m and "idempotency_key" not in m for m in export["messages"])


async def say(store: Store, chat_id: int, message_id: int, text: str, user_id: int = 1) -> int:
    await store.record_sender(incoming(chat_id, user_id=user_id, message_id=message_id))
    return await store.add_message(
        chat_id=chat_id,
        user_id=user_id,
        role="user",
        text=text,
        idempotency_key=f"in:{chat_id}:{message_id}",
        telegram_message_id=message_id,
    )


async def answer(
    store: Store, chat_id: int, reply_to: int | None, text: str, message_id: int | None
) -> int:
    return await store.add_message(
        chat_id=chat_id,
        role="assistant",
        text=text,
        idempotency_key=f"reply:{chat_id}:{text}",
        telegram_message_id=message_id,
        reply_to_message_id=reply_to,
    )


async def test_history_follows_the_chats_message_order_not_the_storing_order(
    store: Store,
) -> None:
    chat = 9101
    await say(store, chat, 9, "first")
    # Two workers stored the user's next two messages at once: 11 got the lower row id.
    eleven = await say(store, chat, 11, "third")
    ten = await say(store, chat, 10, "second")
    assert eleven < ten
    await answer(store, chat, 11, "reply part 1", 12)
    # A part Telegram took whose message id was lost stays after what preceded it when stored.
    await answer(store, chat, 11, "reply part 2", None)
    await say(store, chat, 14, "fourth")
    await answer(store, chat, 14, "reply 2", 15)
    texts = [t.text for t in await store.history(chat, 10)]
    assert texts == [
        "first",
        "second",
        "third",
        "reply part 1",
        "reply part 2",
        "fourth",
        "reply 2",
    ]
    # The limit keeps the newest rows; /reset forgets by row id, whatever the Telegram ids.
    assert [t.text for t in await store.history(chat, 2)] == ["fourth", "reply 2"]
    await store.reset_history(chat)
    late = await say(store, chat, 13, "stored after the reset")
    assert [t.text for t in await store.history(chat, 10)] == ["stored after the reset"]
    assert [t.text for t in await store.history(chat, 10, up_to_id=late - 1)] == []


async def test_a_part_without_a_telegram_id_at_the_window_edge_comes_first(store: Store) -> None:
    chat = 9102
    await say(store, chat, 5, "question")
    await answer(store, chat, 5, "part 1", None)
    await answer(store, chat, 5, "part 2", 7)
    await say(store, chat, 6, "typed while the bot was typing")
    assert [t.text for t in await store.history(chat, 10)] == [
        "question",
        "part 1",
        "typed while the bot was typing",
        "part 2",
    ]
    # The window's oldest row has no id and nothing before it in the window: it leads.
    assert [t.text for t in await store.history(chat, 3)] == [
        "part 1",
        "typed while the bot was typing",
        "part 2",
    ]


async def test_unanswered_chats_are_found_for_the_recovery_sweep(
    store: Store, database_url: str
) -> None:
    base = 9200
    # answered: the reply names the newest message
    await say(store, base + 1, 1, "hi")
    await answer(store, base + 1, 1, "a1", 2)
    # unanswered: the longest waiting, then one with an older answered exchange
    await say(store, base + 2, 1, "hello?")
    await say(store, base + 3, 1, "one")
    await answer(store, base + 3, 1, "a3", 2)
    await say(store, base + 3, 3, "two")
    # reset after the message: nothing left to answer
    await say(store, base + 4, 1, "forget me")
    await store.reset_history(base + 4)
    # the newest message was written while the bot was typing its reply to the one before:
    # the reply is stored after it but answers message 1, so message 2 is still owed
    await say(store, base + 5, 1, "first")
    await say(store, base + 5, 2, "typed during the reply")
    await answer(store, base + 5, 1, "a5", 3)
    # a fixed reply to a command (commands are not stored) answers nothing stored
    await say(store, base + 6, 1, "hey")
    await answer(store, base + 6, 2, "help text", 3)
    # stored out of order: the newest by chat order is 8, and its reply is there
    await say(store, base + 7, 8, "later")
    await say(store, base + 7, 7, "earlier")
    await answer(store, base + 7, 8, "a7", 9)
    # old: outside the window
    await say(store, base + 8, 1, "long ago")
    # blocked by an admin, and blocked the bot: a turn would be dropped again
    await say(store, base + 9, 1, "admin blocked", user_id=base + 9)
    await say(store, base + 10, 1, "blocked the bot", user_id=base + 10)
    await store.mark_bot_blocked(base + 10)
    # an answered chat the user wrote to again
    await say(store, base + 11, 1, "q1")
    await answer(store, base + 11, 1, "a11", 2)
    await say(store, base + 11, 3, "q2")
    async with store.pool.connection() as conn:
        await conn.execute(
            "UPDATE messages SET created_at = now() - interval '2 hours' WHERE chat_id = %s",
            (base + 8,),
        )
        await conn.execute("UPDATE users SET blocked = true WHERE id = %s", (base + 9,))

    found = [
        chat
        for chat in await store.unanswered_chats(since_seconds=3600, limit=1000)
        if base < chat.chat_id <= base + 20
    ]
    assert [(c.chat_id, c.telegram_message_id, c.user_id) for c in found] == [
        (base + 2, 1, 1),
        (base + 3, 3, 1),
        (base + 5, 2, 1),
        (base + 6, 1, 1),
        (base + 11, 3, 1),
    ]
    assert all(c.topic is None for c in found)  # no forum: one conversation per chat
    assert len(await store.unanswered_chats(since_seconds=3600, limit=2)) == 2
    # too fresh: a message stored a moment ago may still be on its way to its turn
    fresh = await store.unanswered_chats(since_seconds=3600, limit=1000, min_age_seconds=600)
    assert not [c for c in fresh if base < c.chat_id <= base + 20]
    # the answer arrives: the chat leaves the list
    await answer(store, base + 2, 1, "a2", 2)
    again = await store.unanswered_chats(since_seconds=3600, limit=1000)
    assert base + 2 not in {c.chat_id for c in again}


class Outage:
    """A TCP proxy in front of PostgreSQL that can be cut (connections refused, open ones
    dropped) and restored on the same port: an outage without touching the shared server."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()
        await self.server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.links.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def select_one(pool: AsyncConnectionPool, timeout: float | None = None) -> None:
    async with pool.connection(timeout=timeout) as conn:
        await conn.execute("SELECT 1")


async def test_the_pool_waits_out_an_outage_and_serves_as_soon_as_postgresql_is_back(
    database_url: str,
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    outage = Outage(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    await outage.restore()
    pool = make_pool(psycopg.conninfo.make_conninfo(database_url, port=outage.port), max_size=2)
    await pool.open(wait=True, timeout=5.0)
    clock = asyncio.get_running_loop().time
    try:
        await select_one(pool)
        async with pool.connection() as held:
            await outage.cut()
            # A query on a connection the outage broke: psycopg.OperationalError.
            with pytest.raises(psycopg.OperationalError):
                await held.execute("SELECT 1")
        # While it lasts, a caller gets a transient error (PoolTimeout is an OperationalError).
        # It lasts long enough for attempts to give up (reconnect_timeout) or, were the timeout
        # long, for psycopg_pool's uncapped backoff to sleep 8 s between two attempts.
        seen = set()
        cut_at = clock()
        while clock() - cut_at < RECONNECT_WINDOW_SECONDS + 4.0:
            with pytest.raises(psycopg.OperationalError) as error:
                await select_one(pool, timeout=0.5)
            seen.add(type(error.value))
        assert seen == {PoolTimeout}
        # A caller queued during the outage gets the first connection made once it is over,
        # well before its own timeout.
        queued = asyncio.create_task(select_one(pool))
        await asyncio.sleep(RECONNECT_WINDOW_SECONDS + 0.5)
        assert not queued.done()
        await outage.restore()
        back_at = clock()
        await asyncio.wait_for(queued, timeout=3.0)
        # And a request made now is served at once.
        await asyncio.wait_for(select_one(pool), timeout=2.0)
        assert clock() - back_at < 3.0
    finally:
        await pool.close()
        await outage.cut()
