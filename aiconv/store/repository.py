"""Every SQL statement aiconv runs, parameterised, behind small typed methods."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from psycopg_pool import AsyncConnectionPool

from aiconv.conversation.history import Role, Turn
from aiconv.store.crypto import DecryptionError, TextCipher, message_context, read_message_text
from aiconv.store.db import ReadRouter
from aiconv.telegram.models import ChatMemberChange, IncomingMessage

log = structlog.get_logger(__name__)

# The encryption context of a chat's persona: no message row has this idempotency key, so a
# message's ciphertext can never be read as a persona, nor the other way round.
PERSONA_KEY = "chat-persona"


@dataclass(frozen=True)
class StoredMessage:
    id: int
    chat_id: int
    role: Role
    text: str
    telegram_message_id: int | None


@dataclass(frozen=True)
class UnansweredChat:
    """A conversation (chat, forum topic) whose newest user message has no reply stored: the
    recovery sweep queues its turn."""

    chat_id: int
    telegram_message_id: int | None  # that message's id: the turn's newest message
    user_id: int | None
    topic: int | None = None  # that message's forum topic (message_thread_id); None outside topics


@dataclass(frozen=True)
class ChatStats:
    """/stats: one chat's messages and generated tokens."""

    messages_today: int
    messages_total: int
    tokens_today: int
    tokens_total: int


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    generation_seconds: float | None = None
    first_token_seconds: float | None = None


class Store:
    def __init__(self, pool: AsyncConnectionPool, cipher: TextCipher | None = None) -> None:
        self.pool = pool
        self.cipher = cipher

    def seal(self, text: str, chat_id: int, idempotency_key: str) -> tuple[str, bool]:
        """Message text as stored, and whether it is encrypted (when ENCRYPTION_KEY is set):
        bound to its row, so it cannot be moved onto another."""
        if self.cipher is None:
            return text, False
        return self.cipher.encrypt(text, message_context(chat_id, idempotency_key)), True

    def unseal(self, stored: str, sealed: bool | None, chat_id: int, idempotency_key: str) -> str:
        """A row's text; raises DecryptionError when it is encrypted and cannot be read."""
        return read_message_text(self.cipher, stored, sealed, chat_id, idempotency_key)

    def _readable(
        self, stored: str, sealed: bool | None, chat_id: int, idempotency_key: str
    ) -> str | None:
        """A row's text, or None (logged, without the text) when it cannot be read: one bad
        row never stops a conversation."""
        try:
            return self.unseal(stored, sealed, chat_id, idempotency_key)
        except DecryptionError as error:
            log.error(
                "stored message text cannot be read",
                chat_id=chat_id,
                idempotency_key=idempotency_key,
                error=str(error),
            )
            return None

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")

    async def record_sender(self, message: IncomingMessage) -> bool:
        """Upsert the chat and its user; returns False only when an admin blocked the user.

        The user wrote, so they no longer block the bot: their "blocked the bot" mark is cleared.
        """
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
                       blocked_bot_at = NULL, updated_at = now()
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
        message_thread_id: int | None = None,
        context_only: bool = False,
        retry: bool = False,
    ) -> int:
        """Store a message once per idempotency key; returns its id either way.

        ``context_only``: an unaddressed group message, kept for the prompt but never answered.
        ``message_thread_id``: its forum topic, if any. ``retry``: a /retry marker (migration
        0006). A ``user_id`` with no users row (deleted
        by an admin while a reply was on its way) is stored as NULL: the row is never lost."""
        stats = stats or GenerationStats()
        stored, sealed = self.seal(text, chat_id, idempotency_key)
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """INSERT INTO messages (chat_id, user_id, role, text, text_sealed,
                       idempotency_key, telegram_update_id, telegram_message_id,
                       reply_to_message_id, prompt_tokens, completion_tokens,
                       generation_seconds, first_token_seconds, message_thread_id, context_only,
                       retry)
                   VALUES (%s, (SELECT u.id FROM users u WHERE u.id = %s), %s, %s, %s, %s, %s,
                           %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (idempotency_key)
                       DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key
                   RETURNING id""",
                (
                    chat_id,
                    user_id,
                    role,
                    stored,
                    sealed,
                    idempotency_key,
                    telegram_update_id,
                    telegram_message_id,
                    reply_to_message_id,
                    stats.prompt_tokens,
                    stats.completion_tokens,
                    stats.generation_seconds,
                    stats.first_token_seconds,
                    message_thread_id,
                    context_only,
                    retry,
                ),
            )
            row = await cursor.fetchone()
            assert row is not None  # RETURNING always yields the row, new or existing
            return int(row[0])

    async def message_by_key(self, idempotency_key: str) -> StoredMessage | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT id, chat_id, role, text, telegram_message_id, text_sealed
                   FROM messages WHERE idempotency_key = %s""",
                (idempotency_key,),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        text = self._readable(row[3], row[5], row[1], idempotency_key)
        return StoredMessage(row[0], row[1], row[2], text or "", row[4])

    async def history(
        self,
        chat_id: int,
        limit: int,
        up_to_id: int | None = None,
        *,
        thread: int | None = None,
        context_limit: int = 0,
        with_senders: bool = False,
    ) -> list[Turn]:
        """The chat's most recent turns since its last /reset, oldest first, in chat order.

        Chat order is Telegram's message id: one increasing sequence per chat, shared by the
        user's and the bot's messages. Row ids are only the order rows were stored in, and two
        workers storing consecutive messages of one chat at once can swap them.

        The newest ``limit`` rows are picked by row id (the messages_chat_recent index) and those
        are sorted by Telegram id: rows are stored moments after they are sent, so a swap moves a
        row only past the few stored meanwhile and at most the window's oldest edge differs.

        A row without a Telegram id (a reply part Telegram took but whose id was lost) takes the
        highest id stored before it, so it stays right after the message it followed when
        stored; ties go by row id. /reset's boundary stays a row id: it forgets what was stored
        before it.

        Groups: only the rows of forum topic ``thread`` are read (None: the chat outside topics);
        the newest ``context_limit`` unaddressed messages come on top of ``limit``, so a busy
        group's chatter never pushes the conversation with the bot out of the window. A group
        that became a supergroup keeps its history: the old group's rows come first (Telegram
        numbers a supergroup's messages afresh). ``with_senders``: user turns carry their
        sender's first name. /retry markers come as turns with ``retry`` set
        (conversation.history.drop_retried turns them into the prompt's history).
        """
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """WITH chat_ids AS (
                       SELECT %(chat)s::bigint AS id
                       UNION SELECT id FROM chats WHERE migrated_to_chat_id = %(chat)s
                   ), candidates AS (
                       SELECT m.id, m.chat_id, m.role, m.text, m.text_sealed, m.idempotency_key,
                              m.telegram_message_id, m.user_id, m.context_only, m.retry,
                              m.reply_to_message_id
                       FROM messages m JOIN chats c ON c.id = %(chat)s
                       WHERE m.chat_id IN (SELECT id FROM chat_ids)
                         AND m.id > c.history_starts_after
                         AND (%(up_to)s::bigint IS NULL OR m.id <= %(up_to)s::bigint)
                         AND m.message_thread_id IS NOT DISTINCT FROM %(thread)s::bigint
                   ), newest AS (
                       (SELECT * FROM candidates WHERE NOT context_only
                        ORDER BY id DESC LIMIT %(limit)s)
                       UNION ALL
                       (SELECT * FROM candidates WHERE context_only
                        ORDER BY id DESC LIMIT %(context_limit)s)
                   ), placed AS (
                       SELECT n.*, COALESCE(
                                  n.telegram_message_id,
                                  max(n.telegram_message_id) OVER (
                                      PARTITION BY n.chat_id ORDER BY n.id
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                                  0) AS position
                       FROM newest n
                   )
                   SELECT p.role, p.text, p.text_sealed, p.idempotency_key, p.chat_id,
                          u.first_name, p.context_only, p.retry, p.telegram_message_id,
                          p.reply_to_message_id
                   FROM placed p LEFT JOIN users u ON u.id = p.user_id AND p.role = 'user'
                   ORDER BY p.chat_id = %(chat)s, p.position, p.id""",
                {
                    "chat": chat_id,
                    "up_to": up_to_id,
                    "thread": thread,
                    "limit": limit,
                    "context_limit": context_limit,
                },
            )
            rows = await cursor.fetchall()
        turns = []
        for (
            role,
            stored,
            sealed,
            key,
            row_chat,
            first_name,
            context_only,
            retry,
            message_id,
            reply_to,
        ) in rows:
            text = self._readable(stored, sealed, row_chat, key)
            if text is None:
                continue
            # Telegram ids are per chat: a migrated group's rows carry none (no comparisons
            # across the two numberings).
            ours = row_chat == chat_id
            turns.append(
                Turn(
                    role=role,
                    text=text,
                    sender=first_name if with_senders else None,
                    context_only=context_only,
                    retry=retry,
                    message_id=message_id if ours else None,
                    reply_to=reply_to if ours else None,
                )
            )
        return turns

    async def chat_party(self, chat_id: int) -> tuple[str, int | None]:
        """The chat's type and the user who wrote its newest message."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT c.type, (SELECT m.user_id FROM messages m
                                    WHERE m.chat_id = c.id AND m.role = 'user'
                                      AND NOT m.context_only
                                    ORDER BY m.id DESC LIMIT 1)
                   FROM chats c WHERE c.id = %s""",
                (chat_id,),
            )
            row = await cursor.fetchone()
        return (str(row[0]), row[1]) if row else ("private", None)

    async def unanswered_chats(
        self, since_seconds: float, limit: int, *, min_age_seconds: float = 0.0
    ) -> list[UnansweredChat]:
        """Conversations whose newest user message (since /reset, stored within
        ``since_seconds`` and at least ``min_age_seconds`` ago) has no reply stored; the longest
        waiting first.

        PostgreSQL is the truth the recovery sweep rebuilds lost Redis state from. A conversation
        is a (chat, forum topic) pair: each topic of a forum is its own conversation, and the
        messages outside topics (NULL message_thread_id) are one more. So a message owed in topic
        B is found even when topic A was answered after it, and only a reply stored in the same
        topic can answer it (delivery stores a reply with the topic of the message it answers).

        A reply answers a user message when its rows carry that message's Telegram id in
        reply_to_message_id: delivery stores every part of a turn with the id of the turn's newest
        message (its generation key). So a reply stored after a message the user sent while the
        bot was typing does not count for it (that message is still owed the next turn), nor does
        a fixed reply to a command (commands are not stored, so their replies name a message that
        is not the newest stored). A reply row without reply_to_message_id counts when stored
        after the message in the same topic.

        The newest message is the highest Telegram id (chat order, see ``history``). Users blocked
        by an admin, or who blocked the bot and have not written since, are left out: a turn for
        them would be dropped again. One query: the window's user messages come from the
        created_at index, the reply check reads only the chat's rows stored after the message
        (messages_chat_recent).
        """
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """WITH newest AS (
                       SELECT DISTINCT ON (m.chat_id, m.message_thread_id)
                              m.id, m.chat_id, m.message_thread_id, m.user_id,
                              m.telegram_message_id, m.created_at
                       FROM messages m JOIN chats c ON c.id = m.chat_id
                       WHERE m.created_at > now() - make_interval(secs => %(since)s::float8)
                         AND m.role = 'user' AND NOT m.context_only
                         AND m.id > c.history_starts_after
                       ORDER BY m.chat_id, m.message_thread_id,
                                m.telegram_message_id DESC NULLS LAST, m.id DESC
                   )
                   SELECT n.chat_id, n.telegram_message_id, n.user_id, n.message_thread_id
                   FROM newest n LEFT JOIN users u ON u.id = n.user_id
                   WHERE n.created_at <= now() - make_interval(secs => %(min_age)s::float8)
                     AND NOT COALESCE(u.blocked, false) AND u.blocked_bot_at IS NULL
                     AND NOT EXISTS (
                         SELECT 1 FROM messages a
                         WHERE a.chat_id = n.chat_id AND a.id > n.id AND a.role = 'assistant'
                           AND a.message_thread_id IS NOT DISTINCT FROM n.message_thread_id
                           AND (a.reply_to_message_id IS NULL
                                OR n.telegram_message_id IS NULL
                                OR a.reply_to_message_id = n.telegram_message_id))
                   ORDER BY n.created_at, n.id
                   LIMIT %(limit)s""",
                {"since": since_seconds, "min_age": min_age_seconds, "limit": limit},
            )
            rows = await cursor.fetchall()
        return [UnansweredChat(int(row[0]), row[1], row[2], row[3]) for row in rows]

    async def thread_of(self, chat_id: int, telegram_message_id: int | None) -> int | None:
        """The forum topic of one of the chat's stored messages (None outside topics)."""
        if telegram_message_id is None:
            return None
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT message_thread_id FROM messages
                   WHERE chat_id = %s AND telegram_message_id = %s AND role = 'user'
                   ORDER BY id DESC LIMIT 1""",
                (chat_id, telegram_message_id),
            )
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    async def record_membership(self, change: ChatMemberChange) -> None:
        """The bot was added to, promoted in, or removed from a chat: recorded once per update."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                """INSERT INTO chat_member_events (chat_id, update_id, by_user_id, old_status,
                       new_status, happened_at)
                   VALUES (%s, %s, %s, %s, %s, to_timestamp(%s))
                   ON CONFLICT (update_id) DO NOTHING""",
                (
                    change.chat_id,
                    change.update_id,
                    change.by_user_id,
                    change.old_status,
                    change.new_status,
                    change.date,
                ),
            )
            if cursor.rowcount == 0:
                return  # a redelivered update
            # The newest change (by Telegram's date) decides the chat's status.
            await conn.execute(
                """INSERT INTO chats (id, type, bot_status, bot_status_at)
                   VALUES (%s, %s, %s, to_timestamp(%s))
                   ON CONFLICT (id) DO UPDATE SET bot_status = EXCLUDED.bot_status,
                       bot_status_at = EXCLUDED.bot_status_at, updated_at = now()
                   WHERE chats.bot_status_at IS NULL
                      OR chats.bot_status_at <= EXCLUDED.bot_status_at""",
                (change.chat_id, change.chat_type, change.new_status, change.date),
            )

    async def bot_removed(self, chat_id: int) -> bool:
        """Whether the bot's latest recorded status in the chat is left or kicked."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT bot_status FROM chats WHERE id = %s", (chat_id,))
            row = await cursor.fetchone()
        return row is not None and row[0] in ("left", "kicked")

    async def record_migration(self, old_chat_id: int, new_chat_id: int) -> None:
        """A group became a supergroup: the supergroup's history continues the group's.

        Idempotent (Telegram sends one service message in each chat). The rows stay with the old
        chat (encrypted text is bound to its chat id); ``history`` reads them through the alias.
        """
        if old_chat_id == new_chat_id:
            return
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO chats (id, type) VALUES (%s, 'supergroup'), (%s, 'group')
                   ON CONFLICT (id) DO NOTHING""",
                (new_chat_id, old_chat_id),
            )
            await conn.execute(
                """UPDATE chats SET migrated_to_chat_id = %s, updated_at = now()
                   WHERE id = %s AND migrated_to_chat_id IS DISTINCT FROM %s""",
                (new_chat_id, old_chat_id, new_chat_id),
            )
            # A /reset in the old group still forgets what came before it.
            await conn.execute(
                """UPDATE chats SET history_starts_after = GREATEST(history_starts_after,
                       (SELECT history_starts_after FROM chats WHERE id = %s))
                   WHERE id = %s""",
                (old_chat_id, new_chat_id),
            )

    async def access_granted(self, user_id: int | None, chat_id: int) -> bool:
        """Whether the admin API allowed this user or this chat (ACCESS_MODE=allowlist)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT EXISTS (SELECT 1 FROM access_grants
                                  WHERE (kind = 'chat' AND id = %s)
                                     OR (kind = 'user' AND id = %s))""",
                (chat_id, user_id),
            )
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def tokens_today(self, user_id: int) -> int:
        """Tokens generated for the user since the last UTC midnight (the database's clock)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT COALESCE(sum(completion_tokens), 0) FROM messages
                   WHERE user_id = %s AND role = 'assistant'
                     AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC')
                                       AT TIME ZONE 'UTC'""",
                (user_id,),
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # --- commands: /persona, /stats ------------------------------------------------------------

    async def chat_persona(self, chat_id: int) -> str | None:
        """The chat's own persona (/persona), or None: the PERSONA setting applies. One that
        cannot be decrypted (ENCRYPTION_KEY lost) is logged and treated as unset."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT persona, persona_sealed FROM chats WHERE id = %s", (chat_id,)
            )
            row = await cursor.fetchone()
        if row is None or row[0] is None:
            return None
        return self._readable(row[0], row[1], chat_id, PERSONA_KEY)

    async def set_chat_persona(self, chat_id: int, persona: str | None) -> None:
        """Set the chat's persona; None: back to the PERSONA setting. The chat row exists (its
        sender was recorded before any command runs)."""
        stored: str | None = None
        sealed: bool | None = None
        if persona is not None:
            stored, sealed = self.seal(persona, chat_id, PERSONA_KEY)
        async with self.pool.connection() as conn:
            await conn.execute(
                """UPDATE chats SET persona = %s, persona_sealed = %s, updated_at = now()
                   WHERE id = %s""",
                (stored, sealed, chat_id),
            )

    async def chat_stats(self, chat_id: int) -> ChatStats:
        """Messages (both sides, context-only chatter and /retry markers left out) and tokens
        generated in the chat, since UTC midnight and in total; a migrated group's rows count."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """WITH chat_ids AS (
                       SELECT %(chat)s::bigint AS id
                       UNION SELECT id FROM chats WHERE migrated_to_chat_id = %(chat)s
                   ), counted AS (
                       SELECT m.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC')
                                               AT TIME ZONE 'UTC' AS today,
                              COALESCE(m.completion_tokens, 0) AS tokens
                       FROM messages m
                       WHERE m.chat_id IN (SELECT id FROM chat_ids)
                         AND NOT m.context_only AND NOT m.retry
                   )
                   SELECT count(*) FILTER (WHERE today), count(*),
                          COALESCE(sum(tokens) FILTER (WHERE today), 0),
                          COALESCE(sum(tokens), 0)
                   FROM counted""",
                {"chat": chat_id},
            )
            row = await cursor.fetchone()
        if row is None:
            return ChatStats(0, 0, 0, 0)
        return ChatStats(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def reset_history(self, chat_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                """UPDATE chats SET updated_at = now(), history_starts_after = GREATEST(
                       history_starts_after,
                       COALESCE((SELECT max(id) FROM messages WHERE chat_id = %s), 0))
                   WHERE id = %s""",
                (chat_id, chat_id),
            )

    async def mark_bot_blocked(self, user_id: int) -> None:
        """Telegram answered 403: the user blocked the bot. Their next update clears the mark.

        The admin flag (users.blocked) is never touched here. A mark set by a late 403 just after
        the user wrote again stays until their next update; it only informs (stats, export, the
        recovery sweep), so nothing the user sends is ignored because of it.
        """
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE users SET blocked_bot_at = now(), updated_at = now() WHERE id = %s",
                (user_id,),
            )

    async def set_user_blocked(self, user_id: int, blocked: bool) -> None:
        """Deprecated: delivery's 403 path until it calls mark_bot_blocked; sets that mark.

        It no longer touches the admin flag (AdminStore.set_blocked does); ``blocked=False``
        clears the mark.
        """
        if blocked:
            await self.mark_bot_blocked(user_id)
            return
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE users SET blocked_bot_at = NULL, updated_at = now() WHERE id = %s",
                (user_id,),
            )


@dataclass(frozen=True)
class BusinessStats:
    active_users: dict[str, int]  # window -> users who wrote in it
    conversations: dict[str, int]  # window -> chats with a message in it
    messages: dict[str, int]  # role -> messages stored


ACTIVITY_WINDOWS = {"5m": "5 minutes", "1h": "1 hour", "24h": "24 hours"}


class SchedulerStore:
    """The scheduler's queries: retention, its own run records, and the business gauges' figures.

    The business figures tolerate lag, so they are read through ``reads`` (the replica when one
    is configured and current); everything else here writes, on the primary.
    """

    def __init__(self, pool: AsyncConnectionPool, reads: ReadRouter | None = None) -> None:
        self.pool = pool
        self.reads = reads if reads is not None else ReadRouter(pool)

    async def purge_messages_older_than(self, days: int, batch: int = 5000) -> int:
        """Delete messages older than `days`, in batches."""
        return await self._purge_in_batches(
            """DELETE FROM messages WHERE id IN (
                   SELECT id FROM messages
                   WHERE created_at < now() - make_interval(days => %s) LIMIT %s)""",
            days,
            batch,
        )

    async def purge_scheduled_runs(self, older_than_days: int, batch: int = 5000) -> int:
        """Delete run records started more than ``older_than_days`` ago, in batches. Every job
        run writes a row (a few a minute), so without this the table only grows."""
        return await self._purge_in_batches(
            """DELETE FROM scheduled_runs WHERE id IN (
                   SELECT id FROM scheduled_runs
                   WHERE started_at < now() - make_interval(days => %s) LIMIT %s)""",
            older_than_days,
            batch,
        )

    async def _purge_in_batches(self, statement: str, days: int, batch: int) -> int:
        """Run a `DELETE ... LIMIT batch` until it deletes less than a batch: a large purge
        never holds long locks."""
        deleted = 0
        async with self.pool.connection() as conn:
            while True:
                cursor = await conn.execute(statement, (days, batch))
                deleted += cursor.rowcount
                if cursor.rowcount < batch:
                    return deleted

    async def business_stats(self) -> BusinessStats:
        active: dict[str, int] = {}
        conversations: dict[str, int] = {}
        async with self.reads.connection() as conn:
            for window, interval in ACTIVITY_WINDOWS.items():
                cursor = await conn.execute(
                    """SELECT count(DISTINCT user_id) FILTER (WHERE role = 'user'),
                              count(DISTINCT chat_id)
                       FROM messages WHERE created_at > now() - %s::interval""",
                    (interval,),
                )
                row = await cursor.fetchone()
                active[window], conversations[window] = (row[0], row[1]) if row else (0, 0)
            cursor = await conn.execute("SELECT role, count(*) FROM messages GROUP BY role")
            messages = {str(role): int(n) for role, n in await cursor.fetchall()}
        return BusinessStats(active, conversations, messages)

    async def record_run_start(self, job: str, slot: int, runner: str) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO scheduled_runs (job, slot, runner) VALUES (%s, %s, %s) RETURNING id",
                (job, slot, runner),
            )
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def record_run_end(self, run_id: int, outcome: str, detail: str | None) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                """UPDATE scheduled_runs SET finished_at = now(), outcome = %s, detail = %s
                   WHERE id = %s""",
                (outcome, detail, run_id),
            )
