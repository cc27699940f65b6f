"""Delivery of a reply: split, paced like a person typing, sent once, stored with its id."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import structlog

from aiconv.conversation import texts
from aiconv.conversation.pacing import PacingConfig, plan_delivery
from aiconv.jobs.consumer import Backoff
from aiconv.jobs.queue import Job
from aiconv.observability.metrics import (
    MESSAGES_SENT,
    REPLIES,
    REPLY_LATENCY,
    TYPING_SECONDS,
)
from aiconv.resources import Resources
from aiconv.store.repository import GenerationStats
from aiconv.telegram.client import BadRequest, Forbidden, NetworkError, RetryAfter, ServerError
from aiconv.telegram.split import split_message
from aiconv.worker.rate_limit import SendLimiter
from aiconv.worker.turns import Turns
from aiconv.worker.typing_keeper import TypingKeeper

REPLIES_GROUP = "delivery"
MAX_SEND_ATTEMPTS = 6
TELEGRAM_TEXT_LIMIT = 4096
UNPACED = PacingConfig(enabled=False)

log = structlog.get_logger(__name__)


class UserBlockedBot(Exception):
    """403 from Telegram: this chat's replies can never be delivered."""


class DeliveryHandler:
    def __init__(
        self,
        resources: Resources,
        typing: TypingKeeper,
        turns: Turns,
        limiter: SendLimiter,
        parse_mode: str | None = None,
    ) -> None:
        self.r = resources
        self.typing = typing
        self.turns = turns
        self.limiter = limiter
        self.parse_mode = parse_mode
        self.rng = random.Random()

    async def __call__(self, job: Job) -> None:
        p = job.payload
        chat_id = int(p["chat_id"])
        paced = bool(p.get("paced"))
        if p.get("cancelled"):
            # A newer message or /reset superseded this generation: nothing to send.
            await self._settle_turn(chat_id, delivered=False)
            return
        parts = split_for_telegram(str(p.get("text", ""))) or [texts.GENERATION_FAILED]
        pacing = self.r.settings.pacing if paced else UNPACED
        elapsed = time.time() - float(p.get("started_at", time.time()))
        plans = plan_delivery(parts, pacing, already_elapsed=elapsed, rng=self.rng)
        reply_to = p.get("reply_to_message_id") if p.get("chat_type") != "private" else None
        bound = log.bind(chat_id=chat_id, job_key=job.key)
        generation_key = "gen:" + job.key.removeprefix("reply:")
        sent_any = False
        try:
            for index, plan in enumerate(plans):
                part_key = f"{job.key}:{index}"
                if await self.r.store.message_by_key(part_key) is not None:
                    sent_any = True
                    continue  # sent by an earlier delivery of this job
                if index > 0 and paced:
                    await self.typing.send_now(chat_id)
                if plan.wait_seconds > 0:
                    await asyncio.sleep(plan.wait_seconds)  # the human pace itself
                TYPING_SECONDS.observe(plan.wait_seconds)
                if paced and not sent_any and await self.turns.is_stale(chat_id, generation_key):
                    # The user wrote again while we were "typing": answer everything at once.
                    bound.info("reply superseded before sending")
                    REPLIES.labels("superseded").inc()
                    await self._settle_turn(chat_id, delivered=False)
                    return
                message_id = await self._send(
                    chat_id, p.get("chat_type"), plan.text, reply_to if index == 0 else None
                )
                await self.r.store.add_message(
                    chat_id=chat_id,
                    role="assistant",
                    text=plan.text,
                    idempotency_key=part_key,
                    telegram_message_id=message_id,
                    reply_to_message_id=p.get("reply_to_message_id"),
                    stats=_stats(p.get("stats")) if index == 0 else None,
                )
                MESSAGES_SENT.inc()
                if index == 0 and paced:
                    REPLY_LATENCY.observe(time.time() - float(p.get("started_at", time.time())))
                sent_any = True
            REPLIES.labels("delivered").inc()
            bound.info(
                "reply delivered",
                parts=len(plans),
                latency_seconds=round(time.time() - float(p.get("started_at", 0)), 3),
            )
        except UserBlockedBot:
            bound.info("user blocked the bot; reply and pending work dropped")
            REPLIES.labels("blocked").inc()
            if p.get("user_id") is not None:
                await self.r.store.set_user_blocked(int(p["user_id"]), True)
            await self.turns.forget(chat_id, f"blocked:{job.key}")
        if paced:
            await self._settle_turn(chat_id, delivered=True)

    async def _settle_turn(self, chat_id: int, delivered: bool) -> None:
        more = await self.turns.finish(chat_id, delivered)
        if not more:
            await self.typing.end(chat_id)

    async def _send(
        self, chat_id: int, chat_type: str | None, text: str, reply_to: int | None
    ) -> int:
        """sendMessage within Telegram's limits, waiting out 429s, retrying transient failures."""
        backoff = Backoff(0.5, 10.0)
        parse_mode = self.parse_mode
        for attempt in range(1, MAX_SEND_ATTEMPTS + 1):
            await self.limiter.wait_for_slot(chat_id, chat_type)
            try:
                return await self.r.bot.send_message(
                    chat_id, text, reply_to_message_id=reply_to, parse_mode=parse_mode
                )
            except RetryAfter as error:
                log.warning("telegram rate limit", chat_id=chat_id, retry_after=error.retry_after)
                await asyncio.sleep(error.retry_after)
            except (ServerError, NetworkError) as error:
                if attempt == MAX_SEND_ATTEMPTS:
                    raise
                log.warning(
                    "telegram send failed, retrying",
                    chat_id=chat_id,
                    error=type(error).__name__,
                    attempt=attempt,
                )
                await asyncio.sleep(backoff.next())
            except BadRequest as error:
                description = error.description.lower()
                if parse_mode is not None and "can't parse entities" in description:
                    parse_mode = None  # the model wrote broken markup: send it as plain text
                elif reply_to is not None and "message to be replied not found" in description:
                    reply_to = None  # the user deleted the message we answer
                else:
                    raise
            except Forbidden as error:
                raise UserBlockedBot from error
        raise RuntimeError(f"sendMessage to chat {chat_id} still rate-limited after retries")


def split_for_telegram(text: str) -> list[str]:
    """Parts within Telegram's 4096 limit, which counts UTF-16 code units, not characters."""
    parts = []
    for part in split_message(text, TELEGRAM_TEXT_LIMIT):
        if len(part.encode("utf-16-le")) // 2 <= TELEGRAM_TEXT_LIMIT:
            parts.append(part)
        else:  # astral characters (emoji) count twice
            parts.extend(split_message(part, TELEGRAM_TEXT_LIMIT // 2))
    return parts


def _stats(raw: Any) -> GenerationStats:
    stats = raw if isinstance(raw, dict) else {}
    return GenerationStats(
        prompt_tokens=stats.get("prompt_tokens"),
        completion_tokens=stats.get("completion_tokens"),
        generation_seconds=stats.get("generation_seconds"),
        first_token_seconds=stats.get("first_token_seconds"),
    )
