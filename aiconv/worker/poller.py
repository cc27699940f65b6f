"""Long polling (getUpdates) for installs without a public HTTPS endpoint.

Telegram allows one getUpdates consumer per bot, so pollers elect one holder of a Redis lock; the
offset lives in Redis too, so a successor resumes where the last holder stopped. Each update is
enqueued with its update_id as idempotency key before the offset moves past it: a crash between
the two re-reads the update and the enqueue is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog
from redis.exceptions import RedisError

from aiconv.resources import Resources
from aiconv.telegram.client import RetryAfter, TelegramError
from aiconv.telegram.models import InvalidUpdate, parse_update
from aiconv.worker.updates import count_update, update_payload

ALLOWED_UPDATES = ["message"]
LOCK_TTL_MS = 60_000

log = structlog.get_logger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Poller:
    def __init__(self, resources: Resources, poll_timeout: int = 25) -> None:
        self.r = resources
        self.poll_timeout = poll_timeout
        token = resources.settings.require_bot_token()
        self.lock_key = resources.keys.poller_lock(token)
        self.offset_key = resources.keys.poller_offset(token)
        self.holder = uuid.uuid4().hex
        self._renew = resources.redis.register_script(_RENEW)
        self._release = resources.redis.register_script(_RELEASE)

    async def run(self, stop: asyncio.Event) -> None:
        leading = False
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    leading = await self._hold_lock(leading)
                    if not leading:
                        await _wait(stop, 5.0)
                        continue
                    await self._poll_once(stop)
                    backoff = 0.5
                except RetryAfter as error:
                    await _wait(stop, error.retry_after)
                except (TelegramError, RedisError, OSError) as error:
                    log.warning(
                        "polling failed, retrying",
                        error=type(error).__name__,
                        detail=str(error)[:200],
                        retry_in=backoff,
                    )
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            if leading:
                with contextlib.suppress(RedisError):
                    await self._release(keys=[self.lock_key], args=[self.holder])

    async def _hold_lock(self, leading: bool) -> bool:
        redis = self.r.redis
        if leading and await self._renew(keys=[self.lock_key], args=[self.holder, LOCK_TTL_MS]):
            return True
        if await redis.set(self.lock_key, self.holder, nx=True, px=LOCK_TTL_MS):
            log.info("this process is now the poller")
            # A webhook and getUpdates exclude each other at Telegram.
            await self.r.bot.delete_webhook()
            return True
        return False

    async def _poll_once(self, stop: asyncio.Event) -> None:
        raw_offset = await self.r.redis.get(self.offset_key)
        offset = int(raw_offset) if raw_offset else None
        poll = asyncio.ensure_future(
            self.r.bot.get_updates(offset, self.poll_timeout, ALLOWED_UPDATES)
        )
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([poll, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not poll.done():
            poll.cancel()
            return
        updates = poll.result()
        for update in updates:
            update_id = update.get("update_id")
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                continue
            added = await self.r.queue.enqueue(
                self.r.keys.updates, update_payload(update), f"update:{update_id}"
            )
            with contextlib.suppress(InvalidUpdate):
                count_update(parse_update(update), added is not None)
            await self.r.redis.set(self.offset_key, update_id + 1)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
