"""Who may use the bot, and how much: checked by the worker before anything is queued.

* Allow-list (ACCESS_MODE=allowlist): a user or chat listed in ALLOWED_USER_IDS / ALLOWED_CHAT_IDS
  or granted through the admin API (PostgreSQL, so a grant or revocation holds at once for every
  worker). Anyone else gets one polite refusal per chat and UTC day, and nothing is stored for or
  generated from their messages.
* Burst guard (USER_MESSAGES_PER_MINUTE): a user's messages in a chat over the last 60 s, a
  sliding window in Redis. A message over the limit is not stored and not answered; the user is
  told once a minute to slow down. The window's members are message ids, so a redelivered update
  is not counted twice.
* Daily tokens (USER_DAILY_TOKENS): the tokens generated for a user since UTC midnight, summed
  from the counts stored with every reply. A user at or over the quota gets one message a day
  saying it resets at 00:00 UTC. The quota is checked before a turn is queued, so the turn that
  crosses it is finished (a reply's length is unknown until it is written).

Every "once" is a Redis `SET NX` with an expiry computed from Redis `TIME` inside a script, so
workers racing on the same user agree and no process's clock matters. Keys live under the chat's
hash tag (aiconv.jobs.keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiconv.conversation.policy import ChatPolicy
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.observability.metrics import ACCESS_REFUSED
from aiconv.store.repository import Store
from aiconv.telegram.models import IncomingMessage

BURST_WINDOW_SECONDS = 60
SECONDS_PER_DAY = 86_400

Burst = Literal["ok", "over", "over_first"]

# KEYS: notice. Returns 1 when set now (tell the user), 0 when told already today (UTC).
_ONCE_TODAY = """
local now = tonumber(redis.call('TIME')[1])
local until_midnight = 86400 - (now % 86400)
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', until_midnight) then return 1 end
return 0
"""

# KEYS: window (sorted set), notice. ARGV: limit, message id, window seconds.
# Returns 1: within the limit (counted); 0: over it, already told; -1: over it, tell the user.
_BURST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  if redis.call('SET', KEYS[2], '1', 'NX', 'EX', window) then return -1 end
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], window + 1)
return 1
"""


@dataclass(frozen=True)
class Quota:
    used: int
    limit: int

    @property
    def exhausted(self) -> bool:
        return self.limit > 0 and self.used >= self.limit


@dataclass(eq=False)  # a service: compared by identity
class AccessGate:
    redis: RedisClient
    keys: Keys
    store: Store
    policy: ChatPolicy

    def __post_init__(self) -> None:
        self._once_today = self.redis.register_script(_ONCE_TODAY)
        self._burst = self.redis.register_script(_BURST)

    async def allowed(self, message: IncomingMessage) -> bool:
        if self.policy.allowed_by_settings(message.user_id, message.chat_id):
            return True
        return await self.store.access_granted(message.user_id, message.chat_id)

    async def first_notice_today(self, message: IncomingMessage, reason: str) -> bool:
        """True once per chat, user, reason and UTC day: the caller tells the user then."""
        ACCESS_REFUSED.labels(reason).inc()
        key = self.keys.access_notice(message.chat_id, message.user_id or 0, reason)
        return bool(await self._once_today(keys=[key]))

    async def burst(self, message: IncomingMessage) -> Burst:
        limit = self.policy.user_messages_per_minute
        if limit <= 0:
            return "ok"
        user = message.user_id or 0
        result = int(
            await self._burst(
                keys=[
                    self.keys.user_burst(message.chat_id, user),
                    self.keys.access_notice(message.chat_id, user, "burst"),
                ],
                args=[limit, message.message_id, BURST_WINDOW_SECONDS],
            )
        )
        if result == 1:
            return "ok"
        ACCESS_REFUSED.labels("burst").inc()
        return "over_first" if result == -1 else "over"

    async def quota(self, message: IncomingMessage) -> Quota:
        limit = self.policy.user_daily_tokens
        if limit <= 0 or message.user_id is None:
            return Quota(0, 0)
        return Quota(await self.store.tokens_today(message.user_id), limit)
