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

from aiconv.jobs.lease import Lease
from aiconv.jobs.retry import Backoff, sleep_or_stop
from aiconv.resources import Resources
from aiconv.telegram.client import RetryAfter, TelegramError
from aiconv.telegram.models import InvalidUpdate, parse_update
from aiconv.worker.updates import count_update, update_payload, updates_stream

ALLOWED_UPDATES = ["message", "my_chat_member"]  # my_chat_member: added to / removed from a chat
LOCK_TTL_MS = 60_000

log = structlog.get_logger(__name__)


class Poller:
    def __init__(self, resources: Resources, poll_timeout: int = 25) -> None:
        self.resources = resources
        self.poll_timeout = poll_timeout
        token = resources.settings.require_bot_token()
        self.lock_key = resources.keys.poller_lock(token)
        self.offset_key = resources.keys.poller_offset(token)
        self.holder = uuid.uuid4().hex
        self.lock = Lease(resources.redis, self.lock_key, self.holder, LOCK_TTL_MS / 1000)

    async def run(self, stop: asyncio.Event) -> None:
        leading = False
        backoff = Backoff(0.5, 30.0)
        try:
            while not stop.is_set():
                try:
                    leading = await self._hold_lock(leading)
                    if not leading:
                        await sleep_or_stop(stop, 5.0)
                        continue
                    await self._poll_once(stop)
                    backoff.reset()
                except RetryAfter as error:
                    await sleep_or_stop(stop, error.retry_after)
                except (TelegramError, RedisError, OSError) as error:
                    delay = backoff.next()
                    log.warning(
                        "polling failed, retrying",
                        error=type(error).__name__,
                        detail=str(error)[:200],
                        retry_in=round(delay, 2),
                    )
                    await sleep_or_stop(stop, delay)
        finally:
            if self.lock.held:
                with contextlib.suppress(RedisError):
                    await self.lock.release()

    async def _hold_lock(self, leading: bool) -> bool:
        if leading and await self.lock.renew():
            return True
        # Taking it again when ours already only extends it: a failed deleteWebhook below is
        # retried next round rather than leaving this process holding a lock it does not use.
        if await self.lock.acquire():
            log.info("this process is now the poller")
            # A webhook and getUpdates exclude each other at Telegram.
            await self.resources.bot.delete_webhook()
            return True
        return False

    async def _poll_once(self, stop: asyncio.Event) -> None:
        raw_offset = await self.resources.redis.get(self.offset_key)
        offset = int(raw_offset) if raw_offset else None
        poll = asyncio.ensure_future(
            self.resources.bot.get_updates(offset, self.poll_timeout, ALLOWED_UPDATES)
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
            payload = update_payload(update)
            added = await self.resources.queue.enqueue(
                updates_stream(self.resources.keys, payload), payload, f"update:{update_id}"
            )
            with contextlib.suppress(InvalidUpdate):
                count_update(parse_update(update), added is not None)
            await self.resources.redis.set(self.offset_key, update_id + 1)
