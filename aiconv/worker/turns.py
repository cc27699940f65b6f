"""Turns: one reply at a time per chat, in order, answering a burst of messages once.

A person reads everything that arrived before answering. So a user's message does not queue a
generation directly: it marks the chat as having unanswered messages, due after a short debounce
window. When the chat is due and no turn of it is in flight, one turn is claimed (a Redis lock per
chat, held until the reply is delivered) and a `turn` job is enqueued on the updates stream in the
same Lua script, so a crash cannot lose a claimed turn. A message that arrives while the chat's turn
is still being generated or "typed" makes that turn stale (its generation key is no longer the
chat's latest): it is cancelled and the next turn answers everything. A turn whose first message has
waited longer than `final_after` is final: newer messages no longer cancel it, so a chatty user is
never starved of answers.

Across any number of workers and ml processes, a chat therefore has at most one reply in flight,
and replies leave in the order of the user's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aiconv.jobs.keys import Keys

TICK_SECONDS = 0.1
TURN_LOCK_SECONDS = 900  # safety net only: a turn is released when its reply is settled

log = structlog.get_logger(__name__)

# KEYS: due, first, latest:{chat}, turn:{chat}
# ARGV: chat, now, debounce, final_after, generation key, message id
_NOTE_MESSAGE = """
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
local first = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
local due = math.min(tonumber(ARGV[2]) + tonumber(ARGV[3]), first + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[1], due, ARGV[1])
-- Messages of one chat may be handled out of order by different workers: the latest key only
-- ever moves forward (values end in the message id: gen:CHAT:ID, reset:CHAT:ID).
local current = redis.call('GET', KEYS[3])
local current_id = current and tonumber(string.match(current, ':(%d+)$')) or -1
if redis.call('GET', KEYS[4]) ~= 'final' and tonumber(ARGV[6]) > current_id then
  redis.call('SET', KEYS[3], ARGV[5], 'EX', 86400)
end
"""

# KEYS: due, first, updates stream; ARGV: now, limit, key prefix, lock ttl, final_after
_CLAIM_DUE = """
local chats = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local claimed = 0
for _, chat in ipairs(chats) do
  local turn = ARGV[3] .. 'turn:' .. chat
  if redis.call('EXISTS', turn) == 0 then
    redis.call('ZREM', KEYS[1], chat)
    local latest = redis.call('GET', ARGV[3] .. 'latest:' .. chat)
    if latest and string.sub(latest, 1, 4) == 'gen:' then
      local first = tonumber(redis.call('HGET', KEYS[2], chat) or ARGV[1])
      local mode = 'active'
      if tonumber(ARGV[1]) - first >= tonumber(ARGV[5]) then mode = 'final' end
      redis.call('SET', turn, mode, 'EX', ARGV[4])
      local job = cjson.encode({kind = 'turn', key = 'turn:' .. latest, chat_id = chat,
                                generation_key = latest, mode = mode, first_at = first})
      redis.call('XADD', KEYS[3], '*', 'job', job)
      claimed = claimed + 1
    else
      redis.call('HDEL', KEYS[2], chat)  -- nothing left to answer (e.g. after /reset)
    end
  end
end
return claimed
"""

# KEYS: due, first, turn:{chat}; ARGV: chat, now, delivered (1/0). Returns 1 if more is due.
_FINISH = """
redis.call('DEL', KEYS[3])
local more = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  if more then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  else redis.call('HDEL', KEYS[2], ARGV[1]) end
end
if more then return 1 end
return 0
"""


@dataclass(frozen=True)
class TurnConfig:
    debounce_seconds: float = 1.5
    final_after_seconds: float = 15.0


def generation_key(chat_id: int, message_id: int) -> str:
    return f"gen:{chat_id}:{message_id}"


class Turns:
    def __init__(self, redis: Redis, keys: Keys, config: TurnConfig) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self._note = redis.register_script(_NOTE_MESSAGE)
        self._claim = redis.register_script(_CLAIM_DUE)
        self._finish = redis.register_script(_FINISH)

    async def note_message(self, chat_id: int, message_id: int) -> None:
        """A user's message is stored: the chat is due for a turn after the debounce window."""
        await self._note(
            keys=[
                self.keys.turns_due,
                self.keys.turns_first,
                self.keys.latest(chat_id),
                self.keys.turn(chat_id),
            ],
            args=[
                chat_id,
                time.time(),
                self.config.debounce_seconds,
                self.config.final_after_seconds,
                generation_key(chat_id, message_id),
                message_id,
            ],
        )

    async def forget(self, chat_id: int, reset_key: str) -> None:
        """/reset: nothing unanswered remains, and a turn in flight becomes stale."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.turns_due, str(chat_id))
            pipe.hdel(self.keys.turns_first, str(chat_id))
            pipe.set(self.keys.latest(chat_id), reset_key, ex=86400)
            await pipe.execute()

    async def is_stale(self, chat_id: int, key: str) -> bool:
        latest = await self.redis.get(self.keys.latest(chat_id))
        return latest is not None and latest != key

    async def finish(self, chat_id: int, delivered: bool) -> bool:
        """Release the chat's turn; returns True when newer messages are waiting for the next."""
        more = await self._finish(
            keys=[self.keys.turns_due, self.keys.turns_first, self.keys.turn(chat_id)],
            args=[chat_id, time.time(), 1 if delivered else 0],
        )
        return bool(more)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim due turns (any worker may; the script makes each claim happen once)."""
        keys = [self.keys.turns_due, self.keys.turns_first, self.keys.updates]
        while not stop.is_set():
            try:
                await self._claim(
                    keys=keys,
                    args=[
                        time.time(),
                        200,
                        self.keys.prefix,
                        TURN_LOCK_SECONDS,
                        self.config.final_after_seconds,
                    ],
                )
            except RedisError as error:
                log.warning("turn scheduler cannot reach redis", error=type(error).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
