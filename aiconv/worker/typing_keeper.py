"""Keeps "typing…" visible in every chat whose reply is being worked on.

Telegram shows a chat action for about 5 s, so it must be repeated. The chats awaiting a reply live
in Redis (a sorted set of when each chat's next action is due, and a deadline per chat), so
whichever worker is alive sends the action, once per chat per interval, and a crashed worker's
chats keep "typing" until their deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aiconv.jobs.keys import Keys
from aiconv.telegram.client import BotClient, TelegramError

INTERVAL_SECONDS = 4.0  # under Telegram's ~5 s display time
GIVE_UP_SECONDS = 300.0  # a reply that never comes must not leave a chat typing forever
TICK_SECONDS = 0.25

log = structlog.get_logger(__name__)

# Claims the chats whose action is due and pushes each one's next due time forward, so that of
# all workers polling, exactly one sends each action. KEYS: due, deadline; ARGV: now, next, limit
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local claimed = {}
for _, chat in ipairs(due) do
  local deadline = tonumber(redis.call('HGET', KEYS[2], chat) or '0')
  if deadline > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], chat)
    table.insert(claimed, chat)
  else
    redis.call('ZREM', KEYS[1], chat)
    redis.call('HDEL', KEYS[2], chat)
  end
end
return claimed
"""


class TypingKeeper:
    def __init__(self, redis: Redis, keys: Keys, bot: BotClient) -> None:
        self.redis = redis
        self.bot = bot
        self.keys = keys
        self._claim = redis.register_script(_CLAIM_DUE)

    async def begin(self, chat_id: int) -> None:
        """Work on a reply for this chat started: show typing now and keep it up."""
        await self.send_now(chat_id)
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.typing_deadline, str(chat_id), now + GIVE_UP_SECONDS)
            pipe.zadd(self.keys.typing_due, {str(chat_id): now + INTERVAL_SECONDS})
            await pipe.execute()

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
                now = time.time()
                chats = await self._claim(keys=keys, args=[now, now + INTERVAL_SECONDS, 100])
                if chats:
                    await asyncio.gather(*(self.send_now(int(chat)) for chat in chats))
            except RedisError as error:
                log.warning("typing keeper cannot reach redis", error=type(error).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
