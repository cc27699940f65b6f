"""Streamed drafts (REPLY_STYLE=draft): a private chat sees its answer being written.

Telegram's `sendMessageDraft` (Bot API 9.3, https://core.telegram.org/bots/api#sendmessagedraft)
"streams a partial message to a user while the message is being generated": `chat_id` (the
target *private* chat), optional `message_thread_id`, `draft_id` (non-zero; changes of a draft
with the same id are animated), `text` (1-4096 characters after entities parsing), optional
`parse_mode` or `entities`; it returns True. The draft is an ephemeral preview (about 30 s):
the answer itself must still be sent with `sendMessage`, which the existing delivery does.
Groups and supergroups cannot get drafts: their replies keep the "typing…" of typing_keeper.py.
A draft shows the model's Markdown rendered as the reply will be (entities, never parse_mode),
and of a text longer than one message, the part being written.
No rate limit of its own is documented, so every draft is counted like a message: it takes the
chat's own slot (Telegram: about one message a second per chat) and a slot of the bot-wide
budget (about 30 a second), the latter only if one is free soon (`try_reserve_global`, as chat
actions do): a draft is a courtesy, messages come first.

Who does what:
- ml (`DraftProgress`) writes the text so far of a private chat's reply into the chat's
  `chat_draft` hash, at most every DRAFT_INTERVAL_SECONDS, and marks the chat due in its
  shard's `drafts_due` set. ml never calls Telegram.
- the worker (`DraftSender`) claims due chats and sends their newest text, at most one draft
  per chat per DRAFT_INTERVAL_SECONDS.
- when the generation ends, ml *closes* the draft before handing the reply on to delivery.

Invariant: no draft is sent after the chat's final message. The claim (a script on the chat's
keys: its draft hash, its shard's due set, its send rate, one hash slot) refuses a closed draft,
reserves the chat's send slot, and marks the draft's call in flight (a lease longer than the
call's HTTP timeout). Closing returns how long a claimed call may still be in flight, and ml
waits until it has returned (or its lease has passed) before handing the reply over; so the
final message is queued only after every draft's call has finished, and its chat slot comes at
least a chat interval after the last draft's.

Drafts are per conversation, like turns (jobs/messages.py `conversation_id`): a private chat's
topics each have their own draft hash, the due set's members are conversation ids, and a topic's
drafts carry its `message_thread_id`. Below, "chat" means conversation; the send rate stays the
chat's.

Times are Redis's (`TIME` inside the scripts), never a process's own clock, as in
typing_keeper.py.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass, field

import structlog
from redis.exceptions import RedisError

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.lua import REDIS_NOW
from aiconv.jobs.messages import (
    conversation_id,
    parse_conversation,
    turn_topic,
)
from aiconv.jobs.retry import repeat_every
from aiconv.observability.metrics import DRAFTS
from aiconv.telegram.client import BotClient, TelegramError
from aiconv.telegram.formatting import FormattedText, MarkdownRenderer
from aiconv.telegram.split import split_formatted
from aiconv.worker.rate_limit import SendLimiter

DRAFT_TEXT_LIMIT = 4096  # Bot API: 1-4096 characters after entities parsing
TICK_SECONDS = 0.25
DUE_BATCH = 100  # chats claimed per shard and tick
# Drafts in progress at once per worker: each needs a Redis connection now and then, from a
# pool shared with the worker's other work.
CONCURRENT_SENDS = 32
GLOBAL_MAX_WAIT_SECONDS = 0.5  # a bot-wide slot later than this is not worth a draft
CHAT_MAX_WAIT_SECONDS = 0.25  # nor a chat slot later than this (the next tick tries again)
CALL_TIMEOUT_SECONDS = 5.0  # one sendMessageDraft's HTTP timeout
CALL_LEASE_SECONDS = CALL_TIMEOUT_SECONDS + 2.0  # a claimed call counts as in flight this long
DRAFT_TTL_SECONDS = 900  # a draft hash whose generation died is forgotten
CLOSED_TTL_SECONDS = 120  # a closed draft is kept a while: a redelivered job publishes nothing
CLOSE_POLL_SECONDS = 0.05

log = structlog.get_logger(__name__)

# ml: the text so far of a turn's reply. A new turn replaces the hash; a closed one takes
# nothing more. KEYS: draft, due; ARGV: conversation, turn, text, ttl
_PUBLISH = (
    REDIS_NOW
    + """
if redis.call('HGET', KEYS[1], 'turn') ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'turn', ARGV[2], 'seq', 0, 'shown', 0)
elseif redis.call('HEXISTS', KEYS[1], 'closed') == 1 then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'text', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], 'NX', string.format('%.6f', now), ARGV[1])
return 1
"""
)

# Worker: the shard's chats whose next draft is due, with their due times (chat, time, ...).
# KEYS: due; ARGV: limit
_DUE = (
    REDIS_NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now),
                  'WITHSCORES', 'LIMIT', 0, ARGV[1])
"""
)

# Worker: claim one chat's draft (its call now in flight, under a lease). Nothing new, closed
# or gone: the chat leaves the due set. Another worker's call in flight: not now. The chat's
# send slot not free within max_wait (a message just went): due again when it is.
# KEYS: draft, due, chat rate; ARGV: conversation, max wait, lease
# Returns {turn, text, seq} or false.
_CLAIM = (
    REDIS_NOW
    + """
local d = redis.call('HMGET', KEYS[1], 'turn', 'seq', 'shown', 'closed', 'busy', 'text')
if not d[1] or d[4] or tonumber(d[2]) <= tonumber(d[3]) then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
if tonumber(d[5] or '0') > now then return false end
local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
if tat - now > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], string.format('%.6f', tat), ARGV[1])
  return false
end
redis.call('HSET', KEYS[1], 'busy', string.format('%.6f', now + tonumber(ARGV[3])))
return {d[1], d[6], d[2]}
"""
)

# Worker: a claimed draft got its slot of the bot-wide budget; unless closed meanwhile, it
# takes the chat's send slot (the GCRA state SendLimiter.reserve_chat keeps in the same key,
# in the same format), counts as shown, and the chat's next draft is due an interval later.
# A claim that got no bot-wide slot does not come here: the chat keeps its score, so the
# longest waiting chats are claimed first and each gets its turn when the budget is short.
# KEYS: draft, due, chat rate; ARGV: conversation, turn, seq, interval, chat interval
# Returns the seconds to wait for the chat's slot, or -1: send nothing.
_TAKE = (
    REDIS_NOW
    + """
if redis.call('HGET', KEYS[1], 'turn') ~= ARGV[2] or redis.call('HEXISTS', KEYS[1], 'closed') == 1
then
  return '-1'
end
local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
local start = math.max(now, tat)
local next_tat = start + tonumber(ARGV[5])
redis.call('SET', KEYS[3], string.format('%.6f', next_tat),
           'PX', math.ceil((next_tat - now) * 1000) + 1000)
if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[1], 'shown') or '0') then
  redis.call('HSET', KEYS[1], 'shown', ARGV[3])
end
local next_due = math.max(now + tonumber(ARGV[4]), next_tat)
redis.call('ZADD', KEYS[2], string.format('%.6f', next_due), ARGV[1])
return string.format('%.6f', start - now)
"""
)

# Worker: the claimed call returned (or was never made). KEYS: draft; ARGV: turn
_RETURNED = """
if redis.call('HGET', KEYS[1], 'turn') == ARGV[1] then redis.call('HDEL', KEYS[1], 'busy') end
"""

# ml: the turn's generation is over; no draft may be claimed any more. Returns the seconds a
# claimed call may still be in flight ("0.000000": none). KEYS: draft, due;
# ARGV: conversation, turn, ttl
_CLOSE = (
    REDIS_NOW
    + """
if redis.call('HGET', KEYS[1], 'turn') ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'turn', ARGV[2], 'seq', 0, 'shown', 0)
end
redis.call('HSET', KEYS[1], 'closed', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
local busy = tonumber(redis.call('HGET', KEYS[1], 'busy') or '0')
return string.format('%.6f', math.max(0, busy - now))
"""
)


def draft_id(turn: str) -> int:
    """The turn's draft id: stable across processes, non-zero (as the Bot API requires), and
    a positive 31-bit integer, so that any client parses it."""
    return zlib.crc32(turn.encode()) % 0x7FFFFFFF + 1


def draft_part(formatted: FormattedText) -> FormattedText | None:
    """What a draft shows of the text so far: the part being written (the final reply is
    split into messages of DRAFT_TEXT_LIMIT the same way), or None while there is no text."""
    parts = split_formatted(formatted, DRAFT_TEXT_LIMIT)
    if not parts or not parts[-1].text.strip():
        return None
    return parts[-1]


@dataclass
class ProgressThrottle:
    """When ml writes a chat's progress: the first text at once, then at most once per
    `interval` (the worker cannot show it more often anyway)."""

    interval: float
    _written_at: float | None = field(default=None, init=False)

    def due(self, now: float) -> bool:
        return self._written_at is None or now - self._written_at >= self.interval

    def written(self, now: float) -> None:
        self._written_at = now


class DraftProgress:
    """ml's side: one turn's text so far, for the worker to show; closed before the reply is
    handed over. Redis trouble loses drafts, never the reply."""

    def __init__(self, redis: RedisClient, keys: Keys, interval: float) -> None:
        self.keys = keys
        self.interval = interval
        self._publish = redis.register_script(_PUBLISH)
        self._close = redis.register_script(_CLOSE)

    def throttle(self) -> ProgressThrottle:
        return ProgressThrottle(self.interval)

    async def publish(self, chat_id: int, turn: str, text: str) -> None:
        if not text.strip():
            return
        try:
            keys, conversation = self._target(chat_id, turn)
            await self._publish(keys=keys, args=[conversation, turn, text, DRAFT_TTL_SECONDS])
        except RedisError as error:
            log.info("draft not published", chat_id=chat_id, error=type(error).__name__)

    async def close(self, chat_id: int, turn: str) -> None:
        """No more drafts for this turn; returns once none is in flight (or its lease ended)."""
        deadline = time.monotonic() + CALL_LEASE_SECONDS
        keys, conversation = self._target(chat_id, turn)
        try:
            while True:
                pending = float(
                    await self._close(keys=keys, args=[conversation, turn, CLOSED_TTL_SECONDS])
                )
                left = deadline - time.monotonic()
                if pending <= 0 or left <= 0:
                    return
                # A draft's call is in flight: the reply must not overtake it.
                await asyncio.sleep(min(CLOSE_POLL_SECONDS, pending, left))
        except RedisError as error:
            log.info("draft not closed", chat_id=chat_id, error=type(error).__name__)

    def _target(self, chat_id: int, turn: str) -> tuple[list[str], str]:
        """The draft of the turn's conversation and its shard's due set; the conversation."""
        topic = turn_topic(turn)
        keys = [
            self.keys.chat_draft(chat_id, topic),
            self.keys.drafts_due(self.keys.shard_of(chat_id)),
        ]
        return keys, conversation_id(chat_id, topic)


@dataclass(eq=False)  # a service: compared by identity
class DraftSender:
    """The worker's side: sends the due chats' newest drafts, within Telegram's limits."""

    redis: RedisClient
    keys: Keys
    bot: BotClient
    limiter: SendLimiter
    interval: float
    renderer: MarkdownRenderer = field(default_factory=MarkdownRenderer)

    def __post_init__(self) -> None:
        register = self.redis.register_script
        self._due = register(_DUE)
        self._claim = register(_CLAIM)
        self._take = register(_TAKE)
        self._returned = register(_RETURNED)
        self._sending = asyncio.Semaphore(CONCURRENT_SENDS)

    async def run(self, stop: asyncio.Event) -> None:
        await repeat_every(stop, TICK_SECONDS, self.send_due, "drafts cannot reach redis")

    async def send_due(self) -> None:
        """One round over every shard: each due chat's newest text, as a draft."""
        found = await asyncio.gather(
            *(
                self._due(keys=[self.keys.drafts_due(shard)], args=[DUE_BATCH])
                for shard in self.keys.all_shards
            )
        )
        due = [
            (float(at), _text(conversation))
            for members in found
            for conversation, at in zip(members[::2], members[1::2], strict=True)
        ]
        # The longest waiting first, whatever their shard (the semaphore keeps this order): when
        # the bot-wide budget is short, no chat and no shard is left behind.
        await asyncio.gather(*(self._send_chat(c) for _, c in sorted(due)))

    async def _send_chat(self, conversation: str) -> None:
        chat_id, topic = parse_conversation(conversation)
        async with self._sending:
            keys = [
                self.keys.chat_draft(chat_id, topic),
                self.keys.drafts_due(self.keys.shard_of(chat_id)),
                self.keys.chat_rate(chat_id),
            ]
            claimed = await self._claim(
                keys=keys, args=[conversation, CHAT_MAX_WAIT_SECONDS, CALL_LEASE_SECONDS]
            )
            if not claimed:
                return
            turn, text, seq = (_text(value) for value in claimed)
            try:
                await self._send(chat_id, topic, keys, turn, text, seq)
            finally:
                # Shielded: a call that was made must be seen to have returned, even on shutdown.
                await asyncio.shield(self._returned(keys=keys[:1], args=[turn]))

    async def _send(
        self, chat_id: int, topic: int | None, keys: list[str], turn: str, text: str, seq: str
    ) -> None:
        part = draft_part(self.renderer.render(text))
        if part is not None:
            seconds = await self.limiter.try_reserve_global(GLOBAL_MAX_WAIT_SECONDS)
            if seconds is None:
                DRAFTS.labels("skipped").inc()
                return  # the bot-wide budget is taken (messages come first): tried again soon
            if seconds > 0:
                await asyncio.sleep(seconds)  # our reserved slot
        chat_interval = 1.0 / self.limiter.limits.chat_per_second
        wait = float(
            await self._take(
                keys=keys,
                args=[conversation_id(chat_id, topic), turn, seq, self.interval, chat_interval],
            )
        )
        if wait < 0 or part is None:
            return  # closed meanwhile (or nothing to show yet)
        try:
            if wait > 0:
                await asyncio.sleep(wait)  # the chat's reserved slot
            await self.bot.send_message_draft(
                chat_id,
                draft_id(turn),
                part.text,
                entities=[entity.to_api() for entity in part.entities],
                message_thread_id=topic,
                http_timeout=CALL_TIMEOUT_SECONDS,
            )
            DRAFTS.labels("sent").inc()
        except TelegramError as error:
            DRAFTS.labels("failed").inc()
            log.info("draft failed", chat_id=chat_id, error=type(error).__name__)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
