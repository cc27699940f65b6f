"""Telegram's sending limits, shared by every worker through Redis.

Telegram allows about one message per second in a chat, about 30 per second overall, and 20 per
minute in a group; chat actions ("typing…") count against the bot-wide budget too, and take a
slot only if one comes soon (`try_reserve_global`), so they never delay a message. Each send
reserves the earliest moment all applicable limits allow (GCRA: a "theoretical arrival time" per
limit, kept in Redis) and waits until then, so many workers together never exceed the limits,
and waiting senders keep their order.

The limits' clock is Redis's own (`TIME`, read inside the script), never the calling process's:
every worker compares against the same timestamps, so a worker whose clock runs 30 s ahead
neither makes the others wait 30 s per send nor, running behind, sends early. (Redis >= 5
replicates a script's effects, so reading `TIME` before writing is allowed.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys

# KEYS: one per limit; ARGV: (interval, tolerance) per key. Times are Redis's, in seconds; they
# are stored and returned as "%.6f" strings (tostring would keep 14 digits, Lua-to-Redis
# conversion would truncate to an integer). Returns the seconds to wait before sending. An
# optional last ARGV, a longest acceptable wait: beyond it nothing is reserved and -1 returned.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = now
for i, key in ipairs(KEYS) do
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  local earliest = math.max(now, tat - tolerance)
  if earliest > start then start = earliest end
end
local max_wait = ARGV[2 * #KEYS + 1]
if max_wait and start - now > tonumber(max_wait) then return '-1' end
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', key) or '0')
  local next_tat = math.max(tat, start) + interval
  redis.call('SET', key, string.format('%.6f', next_tat),
             'PX', math.ceil((next_tat - now) * 1000) + 1000)
end
return string.format('%.6f', start - now)
"""


@dataclass(frozen=True)
class RateLimits:
    global_per_second: float = 30.0
    chat_per_second: float = 1.0
    group_per_minute: float = 20.0
    group_burst: int = 3


@dataclass(eq=False)  # a service: compared by identity
class SendLimiter:
    redis: RedisClient
    keys: Keys
    limits: RateLimits

    def __post_init__(self) -> None:
        self._reserve = self.redis.register_script(_RESERVE)

    async def wait_for_slot(self, chat_id: int, chat_type: str | None) -> None:
        """Sleep until this chat may send its next message."""
        # The chat's own slot first, possibly seconds ahead; the global slot only once that
        # has come, so one chat's queue never holds back the others.
        seconds = await self.reserve_chat(chat_id, chat_type)
        if seconds > 0:
            await asyncio.sleep(seconds)
        seconds = await self.reserve_global()
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def reserve_chat(self, chat_id: int, chat_type: str | None) -> float:
        """Seconds until the chat's (and its group's) limits allow one more message."""
        keys = [self.keys.chat_rate(chat_id)]
        args: list[float] = [1.0 / self.limits.chat_per_second, 0.0]
        if chat_type in ("group", "supergroup"):
            interval = 60.0 / self.limits.group_per_minute
            keys.append(self.keys.group_rate(chat_id))
            args += [interval, interval * (self.limits.group_burst - 1)]
        return max(0.0, float(await self._reserve(keys=keys, args=args)))

    async def reserve_global(self) -> float:
        """Seconds until the bot-wide limit allows one more message."""
        keys = [self.keys.global_rate]
        args = [1.0 / self.limits.global_per_second, 0.0]
        return max(0.0, float(await self._reserve(keys=keys, args=args)))

    async def try_reserve_global(self, max_wait: float) -> float | None:
        """A bot-wide slot within `max_wait` seconds (the seconds to wait), or None and nothing
        reserved: for calls worth making only soon (a chat action), which then yield the budget
        to messages."""
        keys = [self.keys.global_rate]
        args = [1.0 / self.limits.global_per_second, 0.0, max_wait]
        seconds = float(await self._reserve(keys=keys, args=args))
        return None if seconds < 0 else seconds
