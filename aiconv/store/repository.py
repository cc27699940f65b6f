"""Every SQL statement aiconv runs, parameterised, behind small typed methods."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from aiconv.conversation.history import Role, Turn
from aiconv.telegram.models import IncomingMessage


@dataclass(frozen=True)
class StoredMessage:
    id: int
    chat_id: int
    role: Role
    text: str
    telegram_message_id: int | None


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    generation_seconds: float | None = None
    first_token_seconds: float | None = None


class Store:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")

    async def record_sender(self, message: IncomingMessage) -> bool:
        """Upsert the chat and its user; returns False when the user is blocked."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO chats (id, type) VALUES (%s, %s)
                   ON CONFLICT (id) DO UPDATE SET type = EXCLUDED.type, updated_at = now()
                   WHERE chats.type IS DISTINCT FROM EXCLUDED.type""",
                (message.chat_id, message.chat_type),
            )
            if message.user_id is None:
                return True
            cursor = await conn.execute(
                """INSERT INTO users (id, username, first_name, language_code)
                   VALUES (%s, %s, %s, %s)
                   ON CONFLICT (id) DO UPDATE SET username = EXCLUDED.username,
                       first_name = EXCLUDED.first_name, language_code = EXCLUDED.language_code,
                       updated_at = now()
                   RETURNING blocked""",
                (message.user_id, message.username, message.first_name, message.language_code),
            )
            row = await cursor.fetchone()
            return not (row and row[0])

    async def add_message(
        self,
        *,
        chat_id: int,
        role: Role,
        text: str,
        idempotency_key: str,
        user_id: int | None = None,
        telegram_update_id: int | None = None,
        telegram_message_id: int | None = None,
        reply_to_message_id: int | None = None,
        stats: GenerationStats | None = None,
    ) -> int:
        """Store a message once per idempotency key; returns its id either way."""
        stats = stats or GenerationStats()
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """INSERT INTO messages (chat_id, user_id, role, text, idempotency_key,
                       telegram_update_id, telegram_message_id, reply_to_message_id,
                       prompt_tokens, completion_tokens, generation_seconds, first_token_seconds)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (idempotency_key)
                       DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key
                   RETURNING id""",
                (
                    chat_id,
                    user_id,
                    role,
                    text,
                    idempotency_key,
                    telegram_update_id,
                    telegram_message_id,
                    reply_to_message_id,
                    stats.prompt_tokens,
                    stats.completion_tokens,
                    stats.generation_seconds,
                    stats.first_token_seconds,
                ),
            )
            row = await cursor.fetchone()
            assert row is not None  # RETURNING always yields the row, new or existing
            return int(row[0])

    async def message_by_key(self, idempotency_key: str) -> StoredMessage | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT id, chat_id, role, text, telegram_message_id
                   FROM messages WHERE idempotency_key = %s""",
                (idempotency_key,),
            )
            row = await cursor.fetchone()
        return StoredMessage(*row) if row else None

    async def history(self, chat_id: int, limit: int, up_to_id: int | None = None) -> list[Turn]:
        """The chat's most recent turns since its last /reset, oldest first."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT m.role, m.text FROM messages m JOIN chats c ON c.id = m.chat_id
                   WHERE m.chat_id = %s AND m.id > c.history_starts_after
                     AND (%s::bigint IS NULL OR m.id <= %s::bigint)
                   ORDER BY m.id DESC LIMIT %s""",
                (chat_id, up_to_id, up_to_id, limit),
            )
            rows = await cursor.fetchall()
        return [Turn(role=row[0], text=row[1]) for row in reversed(rows)]

    async def chat_party(self, chat_id: int) -> tuple[str, int | None]:
        """The chat's type and the user who wrote its newest message."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT c.type, (SELECT m.user_id FROM messages m
                                    WHERE m.chat_id = c.id AND m.role = 'user'
                                    ORDER BY m.id DESC LIMIT 1)
                   FROM chats c WHERE c.id = %s""",
                (chat_id,),
            )
            row = await cursor.fetchone()
        return (str(row[0]), row[1]) if row else ("private", None)

    async def reset_history(self, chat_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                """UPDATE chats SET updated_at = now(), history_starts_after = GREATEST(
                       history_starts_after,
                       COALESCE((SELECT max(id) FROM messages WHERE chat_id = %s), 0))
                   WHERE id = %s""",
                (chat_id, chat_id),
            )

    async def set_user_blocked(self, user_id: int, blocked: bool) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE users SET blocked = %s, updated_at = now() WHERE id = %s",
                (blocked, user_id),
            )
