"""The admin API's queries: totals and per-day stats, block/unblock, export and delete one user.

Block and unblock are the admin's flag (users.blocked) alone: only an admin clears it. That a user
blocked the bot (Telegram answered 403) is users.blocked_bot_at, set by delivery and cleared by
the user's next update; stats and the export show it, block/unblock never touch it.

Every statement is parameterised. Results are plain JSON-ready dicts (timestamps as ISO 8601).

A user's data is: their row; the chats they wrote in; every message they wrote; and, in their
private chats (Telegram gives a private chat the user's own id), the bot's replies as well. Group
chats are shared, so only the user's own messages in them belong to the user.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from aiconv.store.crypto import read_message_text
from aiconv.store.db import ReadRouter

CONNECT_TIMEOUT_SECONDS = 5.0
# An admin query must never hold a connection (or locks) for long; a cancelled one is an error.
STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = '30s'"


ReadText = Callable[[str, bool | None, int, str], str]


def stored_text(text: str, sealed: bool | None, chat_id: int, idempotency_key: str) -> str:
    """A row's text read without ENCRYPTION_KEY (text, text_sealed, chat_id, idempotency_key)."""
    return read_message_text(None, text, sealed, chat_id, idempotency_key)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.isoformat() if isinstance(value, datetime | date) else value
        for key, value in row.items()
    }


# The user's private chats: Telegram gives a private chat its user's id; any other private chat
# they wrote in counts too.
_PRIVATE_CHATS = """
    SELECT c.id FROM chats c
    WHERE c.type = 'private'
      AND (c.id = %(user_id)s
           OR EXISTS (SELECT 1 FROM messages m
                      WHERE m.chat_id = c.id AND m.user_id = %(user_id)s))
"""


class AdminStore:
    """Admin queries over the pool; ``read_text`` turns a stored message text into plain text.

    Stats and exports tolerate lag, so they are read through ``reads`` (the replica when one is
    configured and current); block, unblock and delete write, on the primary.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        read_text: ReadText = stored_text,
        reads: ReadRouter | None = None,
    ) -> None:
        self.pool = pool
        self.read_text = read_text
        self.reads = reads if reads is not None else ReadRouter(pool)

    async def stats(self, days: int) -> dict[str, Any]:
        """Totals, and one row per UTC day for the last ``days`` days (today included)."""
        if not 1 <= days <= 3660:
            raise ValueError("days out of range")
        async with (
            self.reads.connection(CONNECT_TIMEOUT_SECONDS) as conn,
            conn.transaction(),
        ):
            # One snapshot for every figure, so the totals agree with each other.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await conn.execute(STATEMENT_TIMEOUT)
            totals = await self._totals(conn)
            per_day = await self._per_day(conn, days)
        return {"days": days, "totals": totals, "per_day": per_day}

    async def _totals(self, conn: AsyncConnection[Any]) -> dict[str, Any]:
        cursor = await conn.execute(
            """SELECT (SELECT count(*) FROM users),
                      (SELECT count(*) FROM users WHERE blocked),
                      (SELECT count(*) FROM users WHERE blocked_bot_at IS NOT NULL),
                      (SELECT count(*) FROM chats)"""
        )
        row = await cursor.fetchone()
        assert row is not None
        users, blocked, bot_blocked, chats = (int(v) for v in row)
        cursor = await conn.execute(
            """SELECT role, count(*), COALESCE(sum(prompt_tokens), 0),
                      COALESCE(sum(completion_tokens), 0)
               FROM messages GROUP BY role"""
        )
        by_role = {"user": 0, "assistant": 0, "system": 0}
        prompt_tokens = completion_tokens = 0
        for role, count, prompt, completion in await cursor.fetchall():
            by_role[str(role)] = int(count)
            prompt_tokens += int(prompt)
            completion_tokens += int(completion)
        return {
            "users": users,
            "blocked_users": blocked,
            "users_blocking_the_bot": bot_blocked,
            "chats": chats,
            "messages": {**by_role, "total": sum(by_role.values())},
            "tokens": {"prompt": prompt_tokens, "completion": completion_tokens},
        }

    async def _per_day(self, conn: AsyncConnection[Any], days: int) -> list[dict[str, Any]]:
        cursor = await conn.execute(
            """WITH bounds AS (
                   SELECT (now() AT TIME ZONE 'UTC')::date AS today
               ), calendar AS (
                   SELECT (b.today - g.n) AS day
                   FROM bounds b, generate_series(0, %(days)s - 1) AS g (n)
               ), counted AS (
                   SELECT (m.created_at AT TIME ZONE 'UTC')::date AS day,
                          count(*) AS messages,
                          count(DISTINCT m.user_id) FILTER (WHERE m.role = 'user')
                              AS active_users,
                          COALESCE(sum(m.prompt_tokens), 0) AS prompt_tokens,
                          COALESCE(sum(m.completion_tokens), 0) AS completion_tokens
                   FROM messages m, bounds b
                   WHERE m.created_at >= ((b.today - (%(days)s - 1))::timestamp AT TIME ZONE 'UTC')
                   GROUP BY 1
               )
               SELECT c.day, COALESCE(k.messages, 0), COALESCE(k.active_users, 0),
                      COALESCE(k.prompt_tokens, 0), COALESCE(k.completion_tokens, 0)
               FROM calendar c LEFT JOIN counted k ON k.day = c.day
               ORDER BY c.day""",
            {"days": days},
        )
        return [
            {
                "date": day.isoformat(),
                "messages": int(messages),
                "active_users": int(active),
                "prompt_tokens": int(prompt),
                "completion_tokens": int(completion),
            }
            for day, messages, active, prompt, completion in await cursor.fetchall()
        ]

    async def set_blocked(self, user_id: int, blocked: bool) -> dict[str, Any] | None:
        """The admin's block or unblock (never the user's own "blocked the bot" mark); None when
        there is no such user."""
        async with self.pool.connection(timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            cursor = await conn.execute(
                """UPDATE users SET blocked = %s, updated_at = now() WHERE id = %s
                   RETURNING id, blocked""",
                (blocked, user_id),
            )
            row = await cursor.fetchone()
        return {"id": int(row[0]), "blocked": bool(row[1])} if row else None

    async def export_user(self, user_id: int) -> dict[str, Any] | None:
        """Everything stored about one user; None when there is no such user."""
        async with (
            self.reads.connection(CONNECT_TIMEOUT_SECONDS) as conn,
            conn.transaction(),
        ):
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await conn.execute(STATEMENT_TIMEOUT)
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                """SELECT id, username, first_name, language_code, blocked, blocked_bot_at,
                          created_at, updated_at
                   FROM users WHERE id = %(user_id)s""",
                {"user_id": user_id},
            )
            user = await cur.fetchone()
            if user is None:
                return None
            await cur.execute(
                f"""SELECT c.id, c.type, c.title, c.settings, c.created_at, c.updated_at
                    FROM chats c
                    WHERE c.id IN ({_PRIVATE_CHATS})
                       OR EXISTS (SELECT 1 FROM messages m
                                  WHERE m.chat_id = c.id AND m.user_id = %(user_id)s)
                    ORDER BY c.id""",
                {"user_id": user_id},
            )
            chats = await cur.fetchall()
            await cur.execute(
                f"""SELECT m.id, m.chat_id, m.role, m.text, m.telegram_message_id,
                           m.reply_to_message_id, m.prompt_tokens, m.completion_tokens,
                           m.created_at, m.text_sealed, m.idempotency_key
                    FROM messages m
                    WHERE m.user_id = %(user_id)s
                       OR (m.role <> 'user' AND m.chat_id IN ({_PRIVATE_CHATS}))
                    ORDER BY m.chat_id, m.id""",
                {"user_id": user_id},
            )
            messages = await cur.fetchall()
        for message in messages:
            sealed, key = message.pop("text_sealed"), message.pop("idempotency_key")
            message["text"] = self.read_text(message["text"], sealed, message["chat_id"], key)
        return {
            "user": _jsonable(user),
            "chats": [_jsonable(chat) for chat in chats],
            "messages": [_jsonable(message) for message in messages],
        }

    async def delete_user(self, user_id: int) -> dict[str, int] | None:
        """Delete the user, their private chats with every message in them, and their own
        messages elsewhere; returns what was deleted, or None when there is no such user."""
        async with (
            self.pool.connection(timeout=CONNECT_TIMEOUT_SECONDS) as conn,
            conn.transaction(),
        ):
            await conn.execute(STATEMENT_TIMEOUT)
            cursor = await conn.execute(
                "SELECT id FROM users WHERE id = %(user_id)s FOR UPDATE",
                {"user_id": user_id},
            )
            if await cursor.fetchone() is None:
                return None
            cursor = await conn.execute(_PRIVATE_CHATS + " FOR UPDATE OF c", {"user_id": user_id})
            private = [int(row[0]) for row in await cursor.fetchall()]
            # Deleting the messages first (the chats' cascade would too) gives the counts.
            cursor = await conn.execute(
                """DELETE FROM messages
                   WHERE chat_id = ANY(%(private)s) OR user_id = %(user_id)s""",
                {"private": private, "user_id": user_id},
            )
            messages = cursor.rowcount
            cursor = await conn.execute(
                "DELETE FROM chats WHERE id = ANY(%(private)s)", {"private": private}
            )
            chats = cursor.rowcount
            cursor = await conn.execute(
                "DELETE FROM users WHERE id = %(user_id)s", {"user_id": user_id}
            )
            users = cursor.rowcount
        return {"users": users, "chats": chats, "messages": messages}
