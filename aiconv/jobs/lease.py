"""A Redis lease with an owner: at most one holder at a time, and only the holder ends it.

The lease is one key whose value is the owner's identity, with an expiry (PX) kept by Redis, so
no process's clock matters. It is taken with SET NX PX; renewing and releasing run as Lua scripts
that first check the value is still ours, so a holder that stalled past its expiry can neither
extend nor delete the lease a successor has meanwhile taken. A holder that dies simply lets the
lease expire. Holders renew well within the expiry (every third of it, say) and treat a failed
renewal as having lost the lease.
"""

from __future__ import annotations

from aiconv.jobs.client import RedisClient

# KEYS: lease; ARGV: owner, ttl ms. 1 when the lease is now ours (taken, or ours already).
_ACQUIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
# KEYS: lease; ARGV: owner, ttl ms. 1 when renewed, 0 when the lease is not ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lease; ARGV: owner. 1 when released, 0 when it was not ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """An owned, expiring lease on one Redis key.

    `held` is what this process last learned: True after a successful acquire or renew, False
    after a refused one, after a release, or when a call failed (a Redis error propagates, and
    the caller must then assume the lease lost).
    """

    def __init__(self, redis: RedisClient, key: str, owner: str, ttl_seconds: float) -> None:
        if ttl_seconds <= 0:
            raise ValueError("a lease needs a positive ttl")
        self.redis = redis
        self.key = key
        self.owner = owner
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.held = False
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take the lease if free (or extend it if ours already). True when it is ours."""
        self.held = False
        self.held = bool(await self._acquire(keys=[self.key], args=[self.owner, self.ttl_ms]))
        return self.held

    async def renew(self) -> bool:
        """Extend the lease by its ttl if it is still ours. False when it is not (lost)."""
        self.held = False
        self.held = bool(await self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))
        return self.held

    async def release(self) -> bool:
        """End the lease if it is ours; someone else's lease is left alone."""
        self.held = False
        return bool(await self._release(keys=[self.key], args=[self.owner]))

    async def hold(self) -> bool:
        """Renew when held, otherwise try to take it: one call per round of a leader loop."""
        if self.held and await self.renew():
            return True
        return await self.acquire()
