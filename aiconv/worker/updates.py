"""Conversation logic for one incoming update: commands, storage, and a chat's claimed turns.

A user's text is stored in PostgreSQL first, then noted for a turn (worker/turns.py): a crash in
between leaves a stored, un-noted message, which the recovery sweep notes. A claimed turn reads the
chat's history and hands it to ml, guarded by the turn: a turn that no longer owns its chat hands
nothing on.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from aiconv.conversation import texts
from aiconv.conversation.commands import parse_command
from aiconv.conversation.history import approx_tokens, fit_history
from aiconv.jobs.keys import UPDATES_GROUP
from aiconv.jobs.messages import GenerateJob, ReplyJob, TurnJob, UpdateJob, chat_of
from aiconv.jobs.queue import Job
from aiconv.observability.metrics import UPDATES_RECEIVED
from aiconv.resources import Resources
from aiconv.telegram.models import IncomingMessage, Update, parse_update
from aiconv.worker.capacity import Pacer
from aiconv.worker.turns import Turns
from aiconv.worker.typing_keeper import TypingKeeper

HISTORY_ROWS = 60  # rows read per turn; the ml mode trims them to the context exactly

log = structlog.get_logger(__name__)

__all__ = ["UPDATES_GROUP", "UpdateHandler", "chat_lane", "update_payload"]


def update_payload(update: dict[str, Any]) -> dict[str, Any]:
    """The job the web and the poller enqueue for one Telegram update."""
    message = update.get("message")
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
    chat_id = chat_of(job.payload)
    return str(chat_id) if chat_id is not None else None


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
        self.r = resources
        self.typing = typing
        self.turns = turns
        self.bot_username = bot_username
        self.pacer = pacer  # None: typing from the first message, no notices, no declines

    async def __call__(self, job: Job) -> None:
        if job.payload.get("kind") == "turn":
            await self._start_turn(job, TurnJob.from_payload(job.payload))
            return
        update = parse_update(UpdateJob.from_payload(job.payload).update)
        message = update.message
        if message is None:
            return  # an update kind aiconv does not act on (edits, joins, ...)
        bound = log.bind(update_id=update.update_id, chat_id=message.chat_id)
        if not await self.r.store.record_sender(message):
            bound.info("update from a blocked user ignored")
            return
        if message.kind != "text" or not message.text:
            bound.info("non-text message", kind=message.kind)
            await self._reply_now(job, message, texts.TEXT_ONLY)
            return
        command = parse_command(message.text, self.bot_username)
        if command is not None:
            bound.info("command", command=command.name)
            await self._command(job, message, command.name)
            return
        await self._converse(message)

    async def _command(self, job: Job, message: IncomingMessage, name: str) -> None:
        if name == "start":
            reply = texts.greeting(message.first_name)
        elif name == "help":
            reply = texts.help_text()
        elif name == "reset":
            await self.r.store.reset_history(message.chat_id)
            await self.turns.forget(message.chat_id)
            await self.typing.end(message.chat_id)
            reply = texts.RESET_DONE
        else:
            reply = texts.UNKNOWN_COMMAND
        await self._reply_now(job, message, reply)

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
        )
        await self.r.queue.hand_over(
            job, UPDATES_GROUP, self.r.keys.replies, reply.to_payload(), reply.key
        )

    async def _converse(self, message: IncomingMessage) -> None:
        assert message.text is not None
        await self.r.store.add_message(
            chat_id=message.chat_id,
            user_id=message.user_id,
            role="user",
            text=message.text,
            idempotency_key=f"in:{message_key(message)}",
            telegram_update_id=message.update_id,
            telegram_message_id=message.message_id,
        )
        # The reply is generated when the chat's turn comes (see turns.py), not per message.
        if await self.turns.note_message(message.chat_id, message.message_id):
            if self.pacer is not None:
                await self.pacer.message_noted(message.chat_id)  # typing only if soon
            else:
                await self.typing.begin(message.chat_id)

    async def _start_turn(self, job: Job, turn: TurnJob) -> None:
        """A claimed turn: hand the chat's history to the ml stage, keyed by the turn."""
        status = await self.turns.status(turn.chat_id, turn.turn)
        if status != "owner":
            if status == "stale":
                # Superseded before generation began: the next turn answers everything.
                more = await self.turns.finish(turn.chat_id, turn.turn, "superseded")
                if not more:
                    await self.typing.end(turn.chat_id)
            await self.r.queue.ack(job, UPDATES_GROUP)
            return
        chat_type, user_id = await self.r.store.chat_party(turn.chat_id)
        if self.pacer is not None and not await self.pacer.before_generation(
            job, turn, chat_type, user_id
        ):
            return  # declined: the decline is the turn's reply (worker/capacity.py)
        history = await self.r.store.history(turn.chat_id, HISTORY_ROWS)
        # Coarse bound only (the byte estimate overcounts); ml trims with the real tokenizer.
        history = fit_history(history, approx_tokens, budget=2 * self.r.settings.n_ctx)
        generate = GenerateJob(
            turn=turn.turn,
            chat_id=turn.chat_id,
            chat_type=chat_type,
            user_id=user_id,
            reply_to_message_id=turn.reply_to,
            started_at=turn.first_at or time.time(),
            turns=[(t.role, t.text) for t in history],
        )
        await self.r.queue.hand_over(
            job,
            UPDATES_GROUP,
            self.r.keys.generate,
            generate.to_payload(),
            generate.key,
            guard=self.turns.guard(turn.chat_id, turn.turn),
        )
