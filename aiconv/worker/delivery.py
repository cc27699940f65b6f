"""Delivery of a reply: split, paced like a person typing, each part sent once, then stored.

A part Telegram accepted is recorded at once, before anything else can fail: in this process's
memory and in Redis (`sent_parts`, keyed by the reply). A handler run again after any failure
(PostgreSQL down while storing, Redis blip, crash and redelivery to another worker) finds the
record and does not send that part again; PostgreSQL gets the part when it can. A send whose answer
was lost after the request went out (read timeout) may have been shown to the user: it is counted
as sent and never resent (at most once per part), and the metric aiconv_reply_parts_uncertain_total
says how often that happens.

Outages of Telegram (5xx, network errors, 429) are waited out here, with backoff and a metric, and
use up none of the job's attempts: only a definite refusal (4xx) fails the job. A turn's reply is
sent only while the turn owns its chat (worker/turns.py), and releases the turn when it is done.

In a forum, a reply goes to its topic (`message_thread_id`; for a turn's reply, the topic its
turn id names: turns are per topic). Stored parts carry their topic and the user they
answer, whose daily token quota they count against (worker/access.py).

A generated reply is the model's Markdown, sent as text plus message entities
(telegram/formatting.py): code blocks, bold, links render, and the stored part is the text as
shown. Parts are cut with their entities re-based (telegram/split.py), deterministically, so a
redelivered reply has the same parts. Telegram refusing a part's entities (400) sends that part
again as plain text: formatting never costs a reply. Fixed texts (greetings, notices) are sent
as they are, unformatted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict

import structlog

from aiconv.conversation import texts
from aiconv.conversation.pacing import PacingConfig, plan_delivery
from aiconv.jobs.keys import REPLIES_GROUP
from aiconv.jobs.messages import ReplyJob, turn_topic
from aiconv.jobs.queue import DONE_TTL_SECONDS, Job
from aiconv.jobs.retry import Backoff
from aiconv.observability.metrics import (
    MESSAGES_SENT,
    REPLIES,
    REPLY_FORMAT_FALLBACKS,
    REPLY_LATENCY,
    REPLY_PARTS_UNCERTAIN,
    TELEGRAM_SEND_RETRIES,
    TYPING_SECONDS,
)
from aiconv.resources import Resources
from aiconv.store.repository import GenerationStats
from aiconv.telegram.client import BadRequest, Forbidden, NetworkError, RetryAfter, ServerError
from aiconv.telegram.formatting import Entity, FormattedText, MarkdownRenderer
from aiconv.telegram.split import split_formatted
from aiconv.worker.rate_limit import SendLimiter
from aiconv.worker.turns import Outcome, Turns
from aiconv.worker.typing_keeper import TypingKeeper

__all__ = ["REPLIES_GROUP", "DeliveryHandler", "UserBlockedBot"]

TELEGRAM_TEXT_LIMIT = 4096
UNPACED = PacingConfig(enabled=False)
OUTAGE_BACKOFF_CAP_SECONDS = 30.0
UNKNOWN_MESSAGE_ID = 0  # recorded for a part whose sendMessage answer was lost
REMEMBERED_PARTS = 10_000  # parts this process remembers having sent (LRU)

log = structlog.get_logger(__name__)


class UserBlockedBot(Exception):
    """403 from Telegram: this chat's replies cannot be delivered until the user writes again."""


class DeliveryHandler:
    def __init__(
        self,
        resources: Resources,
        typing: TypingKeeper,
        turns: Turns,
        limiter: SendLimiter,
    ) -> None:
        self.resources = resources
        self.typing = typing
        self.turns = turns
        self.limiter = limiter
        self.renderer = MarkdownRenderer()
        self.rng = random.Random()
        self._sent: OrderedDict[str, int] = OrderedDict()  # part key -> Telegram message id

    async def __call__(self, job: Job) -> None:
        reply = ReplyJob.from_payload(job.payload)
        if reply.turn is not None:
            status = await self.turns.status(reply.chat_id, reply.turn)
            if status == "lost":
                log.info("reply of a released turn dropped", chat_id=reply.chat_id)
                return
            if reply.cancelled:
                # A newer message or /reset superseded this generation: nothing to send.
                await self._settle(reply, "superseded")
                return
        outcome = await self._deliver(reply)
        if reply.turn is not None and outcome is not None:
            await self._settle(reply, outcome)

    async def _deliver(self, reply: ReplyJob) -> Outcome | None:
        """Send the reply's parts; the turn's outcome, or None if the turn was lost meanwhile."""
        chat_id = reply.chat_id
        parts = self.parts_of(reply)
        pacing = self.resources.settings.pacing if reply.paced else UNPACED
        elapsed = time.time() - (reply.started_at or time.time())
        plans = plan_delivery(
            [p.text for p in parts], pacing, already_elapsed=elapsed, rng=self.rng
        )
        reply_to = reply.reply_to_message_id if reply.chat_type != "private" else None
        thread = reply.message_thread_id
        if thread is None and reply.turn is not None:
            thread = turn_topic(reply.turn)  # a turn answers in its conversation's topic
            if thread is None and reply.chat_type == "supergroup":
                # A turn claimed before turns were per topic names none: its message's topic.
                thread = await self.resources.store.thread_of(chat_id, reply.reply_to_message_id)
        bound = log.bind(chat_id=chat_id, job_key=reply.key)
        sent_record = self.resources.keys.sent_parts(chat_id, reply.key)
        sent_any = False
        try:
            for index, plan in enumerate(plans):
                part_key = f"{reply.key}:{index}"
                known = await self._already_sent(sent_record, part_key, index)
                if known is not None:
                    await self._store_part(reply, index, plan.text, known, thread)
                    sent_any = True
                    continue
                if index > 0 and reply.paced:
                    await self.typing.send_now(chat_id, thread)
                if plan.wait_seconds > 0:
                    await asyncio.sleep(plan.wait_seconds)  # the human pace itself
                TYPING_SECONDS.observe(plan.wait_seconds)
                if reply.turn is not None:
                    status = await self.turns.status(chat_id, reply.turn)
                    if status == "lost":
                        bound.warning("turn released while typing; the rest is not sent")
                        return None
                    if status == "stale" and not sent_any:
                        # The user wrote again while we were "typing": answer everything at once.
                        bound.info("reply superseded before sending")
                        REPLIES.labels("superseded").inc()
                        return "superseded"
                message_id = await self._send(
                    chat_id,
                    reply.chat_type,
                    parts[index],
                    reply_to if index == 0 else None,
                    thread,
                )
                await self._record_sent(sent_record, part_key, index, message_id)
                MESSAGES_SENT.inc()
                if index == 0 and reply.paced:
                    REPLY_LATENCY.observe(time.time() - (reply.started_at or time.time()))
                sent_any = True
                await self._store_part(reply, index, plan.text, message_id, thread)
        except UserBlockedBot:
            bound.info("user blocked the bot; reply and pending work dropped")
            REPLIES.labels("blocked").inc()
            if reply.user_id is not None:
                await self.resources.store.mark_bot_blocked(reply.user_id)
            # Nothing more can be sent to the chat: its pending turns and typing, in every topic.
            await self.typing.end_each(chat_id, await self.turns.forget(chat_id))
            return "dropped"
        REPLIES.labels("delivered").inc()
        bound.info(
            "reply delivered",
            parts=len(plans),
            latency_seconds=round(time.time() - (reply.started_at or time.time()), 3),
        )
        return "delivered"

    def parts_of(self, reply: ReplyJob) -> list[FormattedText]:
        """The reply's messages: generated text rendered from Markdown, fixed texts as they
        are; never none (an empty generation says that something went wrong)."""
        formatted = (
            self.renderer.render(reply.text)
            if reply.markdown and not reply.notice
            else FormattedText.plain(reply.text)
        )
        return split_formatted(formatted, TELEGRAM_TEXT_LIMIT) or [
            FormattedText.plain(texts.GENERATION_FAILED)
        ]

    async def _settle(self, reply: ReplyJob, outcome: Outcome) -> None:
        assert reply.turn is not None
        more = await self.turns.finish(reply.chat_id, reply.turn, outcome)
        if not more:
            await self.typing.end(reply.chat_id, turn_topic(reply.turn))

    async def _already_sent(self, record: str, part_key: str, index: int) -> int | None:
        """The Telegram id of a part sent before (by this process, any worker, or stored)."""
        if part_key in self._sent:
            return self._sent[part_key]
        recorded = await self.resources.redis.hget(record, str(index))
        if recorded is not None:
            return int(recorded)
        stored = await self.resources.store.message_by_key(part_key)
        if stored is not None:
            return stored.telegram_message_id or UNKNOWN_MESSAGE_ID
        return None

    async def _record_sent(self, record: str, part_key: str, index: int, message_id: int) -> None:
        """Remember a sent part here at once, then in Redis (waiting out a Redis outage)."""
        self._sent[part_key] = message_id
        self._sent.move_to_end(part_key)
        while len(self._sent) > REMEMBERED_PARTS:
            self._sent.popitem(last=False)
        async with self.resources.redis.pipeline(transaction=True) as pipe:
            pipe.hset(record, str(index), message_id)
            pipe.expire(record, DONE_TTL_SECONDS)
            await pipe.execute()

    async def _store_part(
        self, reply: ReplyJob, index: int, text: str, message_id: int, thread: int | None
    ) -> None:
        if reply.notice:
            return  # a busy notice answers nothing and is no part of the conversation's history
        await self.resources.store.add_message(
            chat_id=reply.chat_id,
            user_id=reply.user_id,
            message_thread_id=thread,
            role="assistant",
            text=text,
            idempotency_key=f"{reply.key}:{index}",
            telegram_message_id=message_id or None,
            reply_to_message_id=reply.reply_to_message_id,
            stats=_stats(reply.stats) if index == 0 else None,
        )

    async def _send(
        self,
        chat_id: int,
        chat_type: str | None,
        part: FormattedText,
        reply_to: int | None,
        thread: int | None = None,
    ) -> int:
        """sendMessage within Telegram's limits; outages and 429s are waited out, however long."""
        backoff = Backoff(0.5, OUTAGE_BACKOFF_CAP_SECONDS)
        entities: tuple[Entity, ...] = part.entities
        while True:
            await self.limiter.wait_for_slot(chat_id, chat_type)
            try:
                return await self.resources.bot.send_message(
                    chat_id,
                    part.text,
                    reply_to=reply_to,
                    entities=[e.to_api() for e in entities],
                    message_thread_id=thread,
                )
            except RetryAfter as error:
                TELEGRAM_SEND_RETRIES.labels("rate_limited").inc()
                log.warning("telegram rate limit", chat_id=chat_id, retry_after=error.retry_after)
                await asyncio.sleep(error.retry_after)
            except NetworkError as error:
                if error.maybe_processed:
                    # Telegram may have shown it: resending could show it twice.
                    REPLY_PARTS_UNCERTAIN.inc()
                    log.warning("sendMessage answer lost; part counted as sent", chat_id=chat_id)
                    return UNKNOWN_MESSAGE_ID
                TELEGRAM_SEND_RETRIES.labels("network").inc()
                await self._wait_out(chat_id, error, backoff)
            except ServerError as error:
                TELEGRAM_SEND_RETRIES.labels("server_error").inc()
                await self._wait_out(chat_id, error, backoff)
            except BadRequest as error:
                description = error.description.lower()
                if reply_to is not None and "message to be replied not found" in description:
                    reply_to = None  # the user deleted the message we answer
                elif entities and _about_entities(description):
                    # Telegram refused the formatting: the same text, plain, still answers.
                    REPLY_FORMAT_FALLBACKS.labels("rejected").inc()
                    log.warning("entities refused; part sent as plain text", chat_id=chat_id)
                    entities = ()
                else:
                    raise
            except Forbidden as error:
                raise UserBlockedBot from error

    async def _wait_out(self, chat_id: int, error: Exception, backoff: Backoff) -> None:
        delay = backoff.next()
        log.warning(
            "telegram unavailable, waiting",
            chat_id=chat_id,
            error=type(error).__name__,
            retry_in=round(delay, 2),
        )
        await asyncio.sleep(delay)


def _about_entities(description: str) -> bool:
    """A 400 about the entities (Telegram: "can't parse entities", "entity ... ends after the
    end of the text", "unsupported ... entity", ...), not about the chat or the text itself."""
    return "entit" in description


def _stats(raw: dict[str, object]) -> GenerationStats:
    def number(name: str) -> float | None:
        value = raw.get(name)
        return float(value) if isinstance(value, int | float) else None

    prompt, completion = number("prompt_tokens"), number("completion_tokens")
    return GenerationStats(
        prompt_tokens=int(prompt) if prompt is not None else None,
        completion_tokens=int(completion) if completion is not None else None,
        generation_seconds=number("generation_seconds"),
        first_token_seconds=number("first_token_seconds"),
    )
