"""Keeps "typing…" visible in a chat while its reply is really being written or typed.

Telegram shows a chat action for about 5 s, so it must be repeated. The chats to keep typing live
in Redis (a sorted set of when each chat's next action is due, and a deadline per chat), so
whichever worker is alive sends the action, once per chat per interval, and a crashed worker's
chats keep "typing" until their deadline passes.

Typing is shown only while a reply is being written: a chat whose turn waits in a long queue for
the model is *scheduled* (`begin_in`): its first action is due when its generation is expected to
start (the worker's estimate, aiconv/conversation/capacity.py), and ml pulls that forward when the
generation really starts (`TypingSignal`). A person with many people writing to them does not
show "typing…" to all of them for minutes, and the Bot API budget goes to replies (at 1000
waiting users, keeping all of them typing was 30 calls per reply).

Every action takes a slot of the bot-wide Bot API budget shared with messages (worker/rate_limit.py)
only if one is free within ACTION_MAX_WAIT_SECONDS; otherwise it is skipped (a late action is
useless, and messages come first).

The sets are per shard (aiconv/jobs/keys.py): a chat's due time and deadline live in its shard's
pair, so each script and `end`'s MULTI touch one hash slot on a Redis Cluster; the keeper's tick
claims due chats in every shard.

Every time in that shared state is Redis's (`TIME`, read inside the scripts), never a worker's
own clock: with clocks that disagree, one worker would see another's chats due at once (two
actions in a row) or never, and drop a chat long before or after its deadline. (Redis >= 5
replicates a script's effects, so reading `TIME` before writing is allowed.)

Typing is per conversation (jobs/messages.py `conversation_id`: a chat, or one forum topic of it),
like turns: the sets' members are conversation ids, and a topic's action carries its
`message_thread_id`, or Telegram would show it in the General topic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.lua import REDIS_NOW
from aiconv.jobs.messages import conversation_id, parse_conversation
from aiconv.jobs.retry import repeat_every
from aiconv.observability.metrics import CHAT_ACTIONS
from aiconv.telegram.client import BotClient, TelegramError
from aiconv.worker.rate_limit import SendLimiter

INTERVAL_SECONDS = 4.0  # under Telegram's ~5 s display time
GIVE_UP_SECONDS = 300.0  # a reply that never comes must not leave a chat typing forever
TICK_SECONDS = 0.25
ACTION_MAX_WAIT_SECONDS = 1.0  # an action later than this is not worth a slot of the budget

log = structlog.get_logger(__name__)

# Times are written as "%.6f" strings (tostring keeps 14 digits).

# A chat's next action is due `delay` from now (an interval after one just sent, or when its
# generation is expected to start), and it stops give_up after that. With 'soonest', an action
# already due sooner (the chat is typing) and a later deadline are kept.
# KEYS: due, deadline; ARGV: conversation, delay, give_up, 'soonest' or ''
_BEGIN = (
    REDIS_NOW
    + """
local at = now + tonumber(ARGV[2])
local deadline = at + tonumber(ARGV[3])
if ARGV[4] == 'soonest' then
  deadline = math.max(deadline, tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0'))
  redis.call('ZADD', KEYS[1], 'LT', string.format('%.6f', at), ARGV[1])
else
  redis.call('ZADD', KEYS[1], string.format('%.6f', at), ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], string.format('%.6f', deadline))
"""
)

# ml started generating a chat's reply: its held-back typing is due now (only for a chat the
# worker is keeping, so a /reset or a delivered reply is never undone). KEYS: due, deadline;
# ARGV: conversation, give_up
_GENERATION_STARTED = (
    REDIS_NOW
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], string.format('%.6f', now + tonumber(ARGV[2])))
redis.call('ZADD', KEYS[1], 'LT', string.format('%.6f', now), ARGV[1])
return 1
"""
)

# Claims the chats whose action is due and pushes each one's next due time forward, so that of
# all workers polling, exactly one sends each action. KEYS: due, deadline; ARGV: interval, limit
# Returns the conversations claimed.
_CLAIM_DUE = (
    REDIS_NOW
    + """
local next_due = string.format('%.6f', now + tonumber(ARGV[1]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now),
                       'LIMIT', 0, ARGV[2])
local claimed = {}
for _, chat in ipairs(due) do
  local deadline = tonumber(redis.call('HGET', KEYS[2], chat) or '0')
  if deadline > now then
    redis.call('ZADD', KEYS[1], next_due, chat)
    table.insert(claimed, chat)
  else
    redis.call('ZREM', KEYS[1], chat)
    redis.call('HDEL', KEYS[2], chat)
  end
end
return claimed
"""
)


@dataclass(eq=False)  # a service: compared by identity
class TypingKeeper:
    redis: RedisClient
    keys: Keys
    bot: BotClient
    limiter: SendLimiter | None = None

    def __post_init__(self) -> None:
        self._begin = self.redis.register_script(_BEGIN)
        self._claim = self.redis.register_script(_CLAIM_DUE)

    async def begin(self, chat_id: int, thread: int | None = None) -> None:
        """Work on a reply for this chat (in forum topic `thread`) started: show typing now and
        keep it up."""
        await self.send_now(chat_id, thread)
        await self._schedule(chat_id, INTERVAL_SECONDS, thread=thread)

    async def begin_in(self, chat_id: int, delay: float, thread: int | None = None) -> None:
        """The reply's generation is expected to start in `delay` seconds: typing from then on
        (or from when ml starts it, if sooner; at the next tick if the delay is not positive).
        A chat already typing keeps typing, without an extra action."""
        await self._schedule(chat_id, max(delay, 0.0), soonest=True, thread=thread)

    async def _schedule(
        self, chat_id: int, delay: float, soonest: bool = False, thread: int | None = None
    ) -> None:
        await self._begin(
            keys=_typing_keys(self.keys, self.keys.shard_of(chat_id)),
            args=[
                conversation_id(chat_id, thread),
                delay,
                GIVE_UP_SECONDS,
                "soonest" if soonest else "",
            ],
        )

    async def end(self, chat_id: int, thread: int | None = None) -> None:
        """The chat's (or its forum topic `thread`'s) reply is done: no more typing there."""
        await self.end_each(chat_id, [thread])

    async def end_each(self, chat_id: int, threads: Iterable[int | None]) -> None:
        """No more typing in any of these conversations of the chat (a /reset, a chat that
        removed or blocked the bot: every topic `Turns.forget` returned)."""
        due, deadline = _typing_keys(self.keys, self.keys.shard_of(chat_id))
        conversations = [conversation_id(chat_id, thread) for thread in threads]
        if not conversations:
            return
        async with self.redis.pipeline(transaction=True) as pipe:  # one shard: one slot
            pipe.zrem(due, *conversations)
            pipe.hdel(deadline, *conversations)
            await pipe.execute()

    async def send_now(self, chat_id: int, thread: int | None = None) -> None:
        """One typing action within the shared budget; a failure never blocks the reply."""
        try:
            if self.limiter is not None:
                wait = await self.limiter.try_reserve_global(ACTION_MAX_WAIT_SECONDS)
                if wait is None:
                    CHAT_ACTIONS.labels("skipped").inc()
                    return  # the budget is taken by messages: they come first
                if wait > 0:
                    await asyncio.sleep(wait)  # our reserved slot
            await self.bot.send_chat_action(chat_id, "typing", message_thread_id=thread)
            CHAT_ACTIONS.labels("sent").inc()
        except TelegramError as error:
            CHAT_ACTIONS.labels("failed").inc()
            log.info("typing action failed", chat_id=chat_id, error=type(error).__name__)
        except RedisError as error:
            CHAT_ACTIONS.labels("failed").inc()
            log.info("typing action skipped", chat_id=chat_id, error=type(error).__name__)

    async def run(self, stop: asyncio.Event) -> None:
        await repeat_every(stop, TICK_SECONDS, self._send_due, "typing keeper cannot reach redis")

    async def _send_due(self) -> None:
        """Send "typing…" to every chat whose next action is due (at most 100 a shard a tick)."""
        claimed = await asyncio.gather(
            *(
                self._claim(keys=_typing_keys(self.keys, shard), args=[INTERVAL_SECONDS, 100])
                for shard in self.keys.all_shards
            )
        )
        due = [parse_conversation(c) for answer in claimed for c in answer]
        if due:
            await asyncio.gather(*(self.send_now(chat, thread) for chat, thread in due))


class TypingSignal:
    """ml's side: a chat's generation started, so its held-back "typing…" is due now."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.keys = keys
        self._started = redis.register_script(_GENERATION_STARTED)

    async def generation_started(self, chat_id: int, topic: int | None = None) -> None:
        try:
            await self._started(
                keys=_typing_keys(self.keys, self.keys.shard_of(chat_id)),
                args=[conversation_id(chat_id, topic), GIVE_UP_SECONDS],
            )
        except RedisError as error:  # typing is a courtesy: the reply goes on without it
            log.info("typing not signalled", chat_id=chat_id, error=type(error).__name__)


def _typing_keys(keys: Keys, shard: int) -> list[str]:
    """One shard's due set and deadlines: the keys of every typing script, in one slot."""
    return [keys.typing_due(shard), keys.typing_deadline(shard)]
