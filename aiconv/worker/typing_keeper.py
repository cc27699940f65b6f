"""Keeps "typing…" visible in every chat whose reply is being worked on.

Telegram shows a chat action for about 5 s, so it must be repeated. The chats awaiting a reply live
in Redis (a sorted set of when each chat's next action is due, and a deadline per chat), so
whichever worker is alive sends the action, once per chat per interval, and a crashed worker's
chats keep "typing" until their deadline passes.

Every time in that shared state is Redis's (`TIME`, read inside the scripts), never a worker's
own clock: with clocks that disagree, one worker would see another's chats due at once (two
actions in a row) or never, and drop a chat long before or after its deadline. (Redis >= 5
replicates a script's effects, so reading `TIME` before writing is allowed.)
"""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aiconv.jobs.keys import Keys
from aiconv.jobs.retry import sleep_or_stop
from aiconv.telegram.client import BotClient, TelegramError

INTERVAL_SECONDS = 4.0  # under Telegram's ~5 s display time
GIVE_UP_SECONDS = 300.0  # a reply that never comes must not leave a chat typing forever
TICK_SECONDS = 0.25

log = structlog.get_logger(__name__)

# Redis's clock, in seconds; times are written as "%.6f" strings (tostring keeps 14 digits).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# A chat's action was just sent: the next is due an interval from now, and it stops at the
# deadline. KEYS: due, deadline; ARGV: chat, interval, give_up
_BEGIN = (
    _NOW
    + """
redis.call('HSET', KEYS[2], ARGV[1], string.format('%.6f', now + tonumber(ARGV[3])))
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[2])), ARGV[1])
"""
)

# Claims the chats whose action is due and pushes each one's next due time forward, so that of
# all workers polling, exactly one sends each action. KEYS: due, deadline; ARGV: interval, limit
_CLAIM_DUE = (
    _NOW
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


class TypingKeeper:
    def __init__(self, redis: Redis, keys: Keys, bot: BotClient) -> None:
        self.redis = redis
        self.bot = bot
        self.keys = keys
        self._begin = redis.register_script(_BEGIN)
        self._claim = redis.register_script(_CLAIM_DUE)

    async def begin(self, chat_id: int) -> None:
        """Work on a reply for this chat started: show typing now and keep it up."""
        await self.send_now(chat_id)
        await self._begin(
            keys=[self.keys.typing_due, self.keys.typing_deadline],
            args=[str(chat_id), INTERVAL_SECONDS, GIVE_UP_SECONDS],
        )

    async def end(self, chat_id: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.typing_due, str(chat_id))
            pipe.hdel(self.keys.typing_deadline, str(chat_id))
            await pipe.execute()

    async def send_now(self, chat_id: int) -> None:
        """One typing action; a failure never blocks the reply itself."""
        try:
            await self.bot.send_chat_action(chat_id, "typing")
        except TelegramError as error:
            log.info("typing action failed", chat_id=chat_id, error=type(error).__name__)

    async def run(self, stop: asyncio.Event) -> None:
        keys = [self.keys.typing_due, self.keys.typing_deadline]
        while not stop.is_set():
            try:
                chats = await self._claim(keys=keys, args=[INTERVAL_SECONDS, 100])
                if chats:
                    await asyncio.gather(*(self.send_now(int(chat)) for chat in chats))
            except RedisError as error:
                log.warning("typing keeper cannot reach redis", error=type(error).__name__)
            await sleep_or_stop(stop, TICK_SECONDS)
