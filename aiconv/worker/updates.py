"""Conversation logic for one incoming update: commands, storage, and a chat's claimed turns.

A user's text is stored in PostgreSQL first, then noted for a turn (worker/turns.py): a crash in
between leaves a stored, un-noted message, which the recovery sweep notes. A claimed turn reads the
chat's history and hands it to ml, guarded by the turn: a turn that no longer owns its chat hands
nothing on.

Before a message can start a turn it passes, in order: the bot's presence in the chat (a group it
was removed from is not answered), addressing (a group message is answered only when it mentions
the bot, replies to it or is a command for it, see conversation/addressing.py; an unaddressed one
may be stored as context, `context_only`, which never starts a turn), the allow-list, the burst
guard and the daily token quota (worker/access.py). A message stopped by policy is not stored.

Commands (worker/commands.py) answer with a fixed reply outside any turn, except /retry: its
marker is stored and noted here like a message, so its answer is a turn like any other. A claimed
turn's job carries the chat's persona (/persona) when it has one.

Forum topics: a message's topic is stored with it and noted for its topic's turns (turns, typing
and notices are per conversation, worker/turns.py): a turn reads its topic's history and delivery
replies in that topic, while the forum's other topics are answered side by side.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from aiconv.conversation import notices, texts
from aiconv.conversation.addressing import BotIdentity, address
from aiconv.conversation.commands import Command, parse_command
from aiconv.conversation.history import (
    approx_tokens,
    drop_retried,
    fit_history,
    keep_recent_context,
)
from aiconv.conversation.prompt import with_quote
from aiconv.jobs.keys import UPDATES_GROUP, Keys
from aiconv.jobs.messages import (
    GenerateJob,
    ReplyJob,
    TurnJob,
    UpdateJob,
    chat_of,
    conversation_of,
)
from aiconv.jobs.queue import Job
from aiconv.observability.metrics import GROUP_MESSAGES, UPDATES_RECEIVED
from aiconv.resources import Resources
from aiconv.telegram.client import TelegramError
from aiconv.telegram.models import ChatMemberChange, IncomingMessage, Update, parse_update
from aiconv.worker.access import AccessGate
from aiconv.worker.capacity import Pacer
from aiconv.worker.commands import CommandHandler, Retry
from aiconv.worker.turns import Turns
from aiconv.worker.typing_keeper import TypingKeeper

HISTORY_ROWS = 60  # rows read per turn; the ml mode trims them to the context exactly

log = structlog.get_logger(__name__)

__all__ = ["UPDATES_GROUP", "UpdateHandler", "chat_lane", "update_payload", "updates_stream"]


def updates_stream(keys: Keys, payload: dict[str, Any]) -> str:
    """The updates stream of the update's chat's shard (shard 0 for an update without a chat):
    its turn, replies and idempotency marker then share that shard's slot."""
    return keys.stream_for("updates", chat_of(payload))


def update_payload(update: dict[str, Any]) -> dict[str, Any]:
    """The job the web and the poller enqueue for one Telegram update."""
    message = update.get("message")
    if message is None:
        message = update.get("my_chat_member")  # has a chat too: same lane as its messages
    chat = message.get("chat") if isinstance(message, dict) else None
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    return UpdateJob(
        update_id=update["update_id"],
        chat_id=chat_id if isinstance(chat_id, int) else None,
        received_at=time.time(),
        update=update,
    ).to_payload()


def update_kind(update: Update) -> str:
    """The label of aiconv_updates_received_total for one update."""
    message = update.message
    if message is None:
        return "other"
    if message.kind != "text":
        return "media"
    return "command" if (message.text or "").lstrip().startswith("/") else "text"


def count_update(update: Update, added: bool) -> None:
    UPDATES_RECEIVED.labels(update_kind(update) if added else "duplicate").inc()


def message_key(message: IncomingMessage) -> str:
    """Identifies a user's message for the effects it causes (message ids are per chat)."""
    return f"{message.chat_id}:{message.message_id}"


def chat_lane(job: Job) -> str | None:
    """A conversation's jobs run one after another (a chat's updates; a turn's work, per topic)."""
    return conversation_of(job.payload)


class UpdateHandler:
    """Handles both jobs of the updates stream: Telegram updates, and claimed chat turns."""

    def __init__(
        self,
        resources: Resources,
        typing: TypingKeeper,
        turns: Turns,
        bot_username: str | None,
        pacer: Pacer | None = None,
    ) -> None:
        self.resources = resources
        self.typing = typing
        self.turns = turns
        self.bot_username = bot_username
        self.pacer = pacer  # None: typing from the first message, no notices, no declines
        self.policy = resources.settings.chat_policy
        self.access = AccessGate(resources.redis, resources.keys, resources.store, self.policy)
        self.commands = CommandHandler(resources, turns, typing, self.access)
        self._identity: BotIdentity | None = None

    async def identity(self) -> BotIdentity | None:
        """The bot's id and username from getMe, asked once and cached. Until getMe answers,
        mentions are recognised by the username given at start (if any), replies not."""
        if self._identity is not None:
            return self._identity
        try:
            me = await self.resources.bot.get_me()
        except TelegramError as error:
            log.warning("getMe failed; asked again at the next message", error=type(error).__name__)
            if self.bot_username:
                return BotIdentity(user_id=None, username=self.bot_username.lstrip("@"))
            return None
        user_id, username = me.get("id"), me.get("username")
        if isinstance(user_id, int) and isinstance(username, str):
            self._identity = BotIdentity(user_id=user_id, username=username)
            self.bot_username = username
        return self._identity

    async def __call__(self, job: Job) -> None:
        if job.payload.get("kind") == "turn":
            await self._start_turn(job, TurnJob.from_payload(job.payload))
            return
        update = parse_update(UpdateJob.from_payload(job.payload).update)
        if update.my_chat_member is not None:
            await self._membership(update.my_chat_member)
            return
        message = update.message
        if message is None:
            return  # an update kind aiconv does not act on (edits, joins, ...)
        bound = log.bind(update_id=update.update_id, chat_id=message.chat_id)
        if message.migrate_to_chat_id is not None or message.migrate_from_chat_id is not None:
            await self._migrated(message)
            bound.info("group migrated to a supergroup")
            return
        if not await self.resources.store.record_sender(message):
            bound.info("update from a blocked user ignored")
            return
        command = parse_command(message.text, self.bot_username) if message.text else None
        text = message.text or ""
        if message.is_group:
            if await self.resources.store.bot_removed(message.chat_id):
                GROUP_MESSAGES.labels("ignored").inc()
                bound.info("message in a chat the bot was removed from ignored")
                return
            addressing = address(message, await self.identity(), self.policy.group_mode)
            if command is None and addressing.addressed and addressing.text != text:
                command = parse_command(addressing.text, self.bot_username)  # "@bot /stats"
            if command is not None and not (command.addressed_in_group() or addressing.addressed):
                command = None  # a bare command, perhaps another bot's
            if not (addressing.addressed or command is not None):
                await self._keep_as_context(message)
                return
            GROUP_MESSAGES.labels("addressed").inc()
            text = addressing.text
        if not await self.access.allowed(message):
            bound.info("user not on the allow-list")
            if await self.access.first_notice_today(message, "refused"):
                await self._reply_now(job, message, notices.NOT_ALLOWED)
            return
        burst = await self.access.burst(message)
        if burst != "ok":
            bound.info("burst guard: message skipped")
            if burst == "over_first":
                await self._reply_now(
                    job, message, notices.slow_down(self.policy.user_messages_per_minute)
                )
            return
        if message.kind != "text" or not message.text:
            bound.info("non-text message", kind=message.kind)
            await self._reply_now(job, message, texts.TEXT_ONLY)
            return
        if command is not None:
            bound.info("command", command=command.name)
            await self._command(job, message, command)
            return
        quota = await self.access.quota(message)
        if quota.exhausted:
            bound.info("daily token quota used up", used=quota.used, limit=quota.limit)
            if await self.access.first_notice_today(message, "quota"):
                await self._reply_now(job, message, notices.quota_used(quota.limit))
            return
        if not text:  # only the mention: say hello
            await self._reply_now(job, message, texts.greeting(message.first_name))
            return
        await self._converse(message, text)

    async def _membership(self, change: ChatMemberChange) -> None:
        await self.resources.store.record_membership(change)
        log.info(
            "bot membership changed",
            chat_id=change.chat_id,
            old_status=change.old_status,
            new_status=change.new_status,
            by_user_id=change.by_user_id,
        )
        if not change.present:
            # Nothing more can be sent there: drop the chat's pending turns and typing.
            await self.typing.end_each(change.chat_id, await self.turns.forget(change.chat_id))

    async def _migrated(self, message: IncomingMessage) -> None:
        if message.migrate_to_chat_id is not None:
            await self.resources.store.record_migration(message.chat_id, message.migrate_to_chat_id)
        if message.migrate_from_chat_id is not None:
            await self.resources.store.record_migration(
                message.migrate_from_chat_id, message.chat_id
            )

    async def _keep_as_context(self, message: IncomingMessage) -> None:
        """An unaddressed group message: stored for the prompt when context is kept and the chat
        may use the bot; never noted, so it never starts a turn."""
        keep = (
            self.policy.group_context_messages > 0
            and message.kind == "text"
            and bool(message.text)
            and await self.access.allowed(message)
        )
        GROUP_MESSAGES.labels("context" if keep else "ignored").inc()
        if not keep:
            return
        assert message.text is not None
        await self.resources.store.add_message(
            chat_id=message.chat_id,
            user_id=message.user_id,
            role="user",
            text=message.text,
            idempotency_key=f"in:{message_key(message)}",
            telegram_update_id=message.update_id,
            telegram_message_id=message.message_id,
            message_thread_id=message.topic,
            context_only=True,
        )

    async def _command(self, job: Job, message: IncomingMessage, command: Command) -> None:
        """A fixed reply, or (/retry) a marker noted for a turn (see worker/commands.py)."""
        outcome = await self.commands(message, command)
        if isinstance(outcome, Retry):
            await self._converse(message, message.text or "/retry", retry=True)
            return
        await self._reply_now(job, message, outcome.text)

    async def _reply_now(self, job: Job, message: IncomingMessage, text: str) -> None:
        """A fixed reply: straight to delivery, unpaced, outside any turn."""
        reply = ReplyJob(
            key=f"reply:{message_key(message)}",
            chat_id=message.chat_id,
            chat_type=message.chat_type,
            user_id=message.user_id,
            reply_to_message_id=message.message_id,
            started_at=time.time(),
            paced=False,
            text=text,
            message_thread_id=message.topic,
        )
        keys = self.resources.keys
        await self.resources.queue.hand_over(
            job,
            UPDATES_GROUP,
            keys.stream_for("replies", message.chat_id),
            reply.to_payload(),
            reply.key,
        )

    async def _converse(self, message: IncomingMessage, text: str, retry: bool = False) -> None:
        """Store the user's text (in groups: without the bot's mention; after the text they
        replied to, quoted) and note it for a turn. ``retry``: the text is a /retry marker,
        never shown to the model."""
        await self.resources.store.add_message(
            chat_id=message.chat_id,
            user_id=message.user_id,
            role="user",
            text=with_quote(text, message.quoted_text),
            idempotency_key=f"in:{message_key(message)}",
            telegram_update_id=message.update_id,
            telegram_message_id=message.message_id,
            message_thread_id=message.topic,
            retry=retry,
        )
        # The reply is generated when the chat's turn comes (see turns.py), not per message.
        if await self.turns.note_message(message.chat_id, message.message_id, message.topic):
            if self.pacer is not None:
                await self.pacer.message_noted(message.chat_id, message.topic)  # only if soon
            else:
                await self.typing.begin(message.chat_id, message.topic)

    async def _start_turn(self, job: Job, turn: TurnJob) -> None:
        """A claimed turn: hand the chat's history to the ml stage, keyed by the turn."""
        status = await self.turns.status(turn.chat_id, turn.turn)
        if status != "owner":
            if status == "stale":
                # Superseded before generation began: the next turn answers everything.
                more = await self.turns.finish(turn.chat_id, turn.turn, "superseded")
                if not more:
                    await self.typing.end(turn.chat_id, turn.topic)
            await self.resources.queue.ack(job, UPDATES_GROUP)
            return
        chat_type, user_id = await self.resources.store.chat_party(turn.chat_id)
        group = chat_type in ("group", "supergroup")
        thread = turn.topic  # the turn's forum topic: its history, notice and typing
        if self.pacer is not None and not await self.pacer.before_generation(
            job, turn, chat_type, user_id, thread
        ):
            return  # declined: the decline is the turn's reply (worker/capacity.py)
        context_limit = self.policy.group_context_messages if group else 0
        history = await self.resources.store.history(
            turn.chat_id,
            HISTORY_ROWS,
            thread=thread,
            context_limit=context_limit,
            with_senders=group,
        )
        # /retry: its marker and the answer it retries leave the prompt (worker/commands.py).
        history = keep_recent_context(drop_retried(history), context_limit)
        # Coarse bound only (the byte estimate overcounts); ml trims with the real tokenizer.
        history = fit_history(history, approx_tokens, budget=2 * self.resources.settings.n_ctx)
        generate = GenerateJob(
            turn=turn.turn,
            chat_id=turn.chat_id,
            chat_type=chat_type,
            user_id=user_id,
            reply_to_message_id=turn.reply_to,
            started_at=turn.first_at or time.time(),
            # In groups each user turn names its sender, so the model knows who said what.
            turns=[(t.role, t.speaker_text() if group else t.text) for t in history],
            persona=await self.resources.store.chat_persona(turn.chat_id),
        )
        keys = self.resources.keys
        await self.resources.queue.hand_over(
            job,
            UPDATES_GROUP,
            keys.stream_for("generate", turn.chat_id),
            generate.to_payload(),
            generate.key,
            guard=self.turns.guard(turn.chat_id, turn.turn),
        )
