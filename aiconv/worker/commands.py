"""What each bot command does, and the command menu registered at start.

Invariants:
- A command answers with one fixed reply, outside any turn, except /retry: /retry is stored as
  a marker message (messages.retry) and noted like any user message, so its answer is a turn of
  the turn protocol (worker/turns.py). One turn at a time per chat and "noted > answered" decide
  when it is answered, exactly as for text: /retry racing a new message, a redelivered /retry,
  two /retry in a row, all end in one answer per turn, never two at once. Nothing already sent
  is edited or deleted; the model's history just loses the answer the marker retries, the
  newest one of a turn that began before it (conversation.history.drop_retried).
- /retry counts against USER_DAILY_TOKENS like a message, and is refused when there is no user
  message to answer again (since the last /reset, in this topic).
- /persona is stored per chat in PostgreSQL (chats.persona, encrypted like message text) and
  carried in each generation job, so it applies from the next turn on. Everyone may see it; in
  groups only administrators may change it (an anonymous administrator writes as the group
  itself, `sender_chat`, which only administrators can). Whether a user is an administrator
  comes from getChatMember, remembered in Redis for ADMIN_CACHE_SECONDS under the chat's hash
  tag; a failed getChatMember refuses the change (nothing cached), it never lets it through.
- The command menu (setMyCommands) is registered once per process start, in the background and
  retried with backoff (observability.loops.supervised), only when getMyCommands differs: a
  Telegram outage never delays start-up, and a fleet of workers restarting does not rewrite it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from aiconv.conversation import notices, texts
from aiconv.conversation.commands import Command, menu
from aiconv.conversation.history import drop_retried
from aiconv.observability.metrics import ADMIN_CHECKS, COMMAND_MENU, COMMANDS
from aiconv.resources import Resources
from aiconv.telegram.client import BotClient, TelegramError
from aiconv.telegram.models import BotCommand, IncomingMessage
from aiconv.worker.access import AccessGate
from aiconv.worker.turns import Turns
from aiconv.worker.typing_keeper import TypingKeeper

HISTORY_ROWS = 60  # as many rows as a turn reads: enough to find the message to answer again

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Reply:
    """Answer the command with this text, now."""

    text: str


@dataclass(frozen=True)
class Retry:
    """Store the command as a /retry marker and note it for a turn."""


Outcome = Reply | Retry

PersonaAction = Literal["show", "reset", "set"]


def persona_action(args: str) -> PersonaAction:
    """What `/persona <args>` asks for: nothing shows it, "reset" (any case) restores it."""
    if not args.strip():
        return "show"
    if args.strip().lower() == "reset":
        return "reset"
    return "set"


class CommandHandler:
    def __init__(
        self, resources: Resources, turns: Turns, typing: TypingKeeper, access: AccessGate
    ) -> None:
        self.resources = resources
        self.turns = turns
        self.typing = typing
        self.access = access

    async def __call__(self, message: IncomingMessage, command: Command) -> Outcome:
        name = command.name if command.known else "unknown"
        outcome, label = await self._run(message, command)
        COMMANDS.labels(name, label).inc()
        return outcome

    async def _run(self, message: IncomingMessage, command: Command) -> tuple[Outcome, str]:
        name = command.name
        if name == "start":
            return Reply(texts.greeting(message.first_name)), "ok"
        if name == "help":
            return Reply(texts.help_text()), "ok"
        if name == "reset":
            await self.resources.store.reset_history(message.chat_id)
            # The whole chat's history is reset, so every topic's pending turn goes with it.
            await self.typing.end_each(message.chat_id, await self.turns.forget(message.chat_id))
            return Reply(texts.RESET_DONE), "ok"
        if name == "persona":
            return await self._persona(message, command.args)
        if name == "stats":
            return await self._stats(message), "ok"
        if name == "retry":
            return await self._retry(message)
        return Reply(texts.UNKNOWN_COMMAND), "ok"

    async def _persona(self, message: IncomingMessage, args: str) -> tuple[Outcome, str]:
        action = persona_action(args)
        if action == "show":
            custom = await self.resources.store.chat_persona(message.chat_id)
            shown = custom if custom is not None else self.resources.settings.persona
            return Reply(texts.persona_shown(shown, custom is not None)), "ok"
        # Only a group's administrators can write anonymously, as the group itself.
        if message.is_group and message.sender_chat_id != message.chat_id:
            admin = await self.is_admin(message.chat_id, message.user_id)
            if admin is None:
                return Reply(texts.PERSONA_UNCHECKED), "unchecked"
            if not admin:
                return Reply(texts.PERSONA_ADMINS_ONLY), "refused"
        limit = self.resources.settings.persona_max_chars
        if action == "set" and len(args) > limit:
            return Reply(texts.persona_too_long(len(args), limit)), "too_long"
        if action == "reset":
            await self.resources.store.set_chat_persona(message.chat_id, None)
            return Reply(texts.PERSONA_RESET), "ok"
        await self.resources.store.set_chat_persona(message.chat_id, args)
        log.info("persona set", chat_id=message.chat_id, length=len(args))  # never the text
        return Reply(texts.PERSONA_SET), "ok"

    async def is_admin(self, chat_id: int, user_id: int | None) -> bool | None:
        """Whether the user administers the chat; None when Telegram could not say."""
        if user_id is None:
            return False  # an anonymous sender (a channel posting) cannot be checked
        key = self.resources.keys.chat_admin(chat_id, user_id)
        cached = await self.resources.redis.get(key)
        if cached is not None:
            ADMIN_CHECKS.labels("cache").inc()
            return cached in (b"1", "1")
        try:
            member = await self.resources.bot.get_chat_member(chat_id, user_id)
        except TelegramError as error:
            ADMIN_CHECKS.labels("failed").inc()
            log.warning("getChatMember failed", chat_id=chat_id, error=type(error).__name__)
            return None
        ADMIN_CHECKS.labels("asked").inc()
        ttl = self.resources.settings.admin_cache_seconds
        if ttl > 0:
            await self.resources.redis.set(key, "1" if member.is_admin else "0", ex=ttl)
        return member.is_admin

    async def _stats(self, message: IncomingMessage) -> Outcome:
        stats = await self.resources.store.chat_stats(message.chat_id)
        quota = await self.access.quota(message)
        return Reply(
            texts.stats_text(
                stats.messages_today,
                stats.messages_total,
                stats.tokens_today,
                stats.tokens_total,
                (quota.used, quota.limit) if quota.limit > 0 else None,
            )
        )

    async def _retry(self, message: IncomingMessage) -> tuple[Outcome, str]:
        quota = await self.access.quota(message)
        if quota.exhausted:
            return Reply(notices.quota_used(quota.limit)), "quota"
        history = await self.resources.store.history(
            message.chat_id, HISTORY_ROWS, thread=message.topic if message.is_group else None
        )
        if not any(t.role == "user" and not t.context_only for t in drop_retried(history)):
            return Reply(texts.NOTHING_TO_RETRY), "nothing"
        return Retry(), "ok"


class CommandMenu:
    """Registers the bot's command menu with Telegram (see the module docstring)."""

    def __init__(self, bot: BotClient) -> None:
        self.bot = bot
        self.commands = [BotCommand(name, description) for name, description in menu()]
        self.registered = False

    async def register(self) -> None:
        """One attempt; raises TelegramError when it fails (the caller retries)."""
        if await self.bot.get_my_commands() == self.commands:
            COMMAND_MENU.labels("unchanged").inc()
        else:
            await self.bot.set_my_commands(self.commands)
            COMMAND_MENU.labels("set").inc()
            log.info("command menu registered", commands=len(self.commands))
        self.registered = True
