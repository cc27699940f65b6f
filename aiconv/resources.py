"""The long-lived clients a mode needs, opened and closed together (lifespan-owned)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from aiconv.config import Settings
from aiconv.jobs.codec import JobCodec
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import JobQueue
from aiconv.store.crypto import TextCipher
from aiconv.store.db import ReadRouter, make_pool
from aiconv.store.repository import Store
from aiconv.telegram.client import BotClient


@dataclass
class Resources:
    settings: Settings
    redis: Redis
    queue: JobQueue
    store: Store
    http: httpx.AsyncClient
    bot: BotClient
    reads: ReadRouter | None = None  # lag-tolerant reads (replica when configured), else primary

    @property
    def keys(self) -> Keys:
        return self.queue.keys


def make_redis(settings: Settings) -> Redis:
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=3,
        socket_timeout=15,  # above the longest XREADGROUP block
        health_check_interval=15,
    )


@asynccontextmanager
async def open_resources(settings: Settings, *, database: bool = True) -> AsyncIterator[Resources]:
    redis = make_redis(settings)
    cipher = TextCipher.from_setting(settings.encryption_key)
    pool = make_pool(settings.database_url, settings.db_pool_size)
    reads = ReadRouter.for_primary(
        pool, settings.database_replica_url, settings.replica_max_lag_seconds, settings.db_pool_size
    )
    if database:
        await pool.open(wait=False)
        await reads.open()
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )
    try:
        yield Resources(
            settings=settings,
            redis=redis,
            queue=JobQueue(redis, Keys(settings.redis_key_prefix), JobCodec(cipher)),
            store=Store(pool, cipher),
            http=http,
            bot=BotClient(http, settings.telegram_api_url, settings.telegram_bot_token),
            reads=reads,
        )
    finally:
        await http.aclose()
        if database:
            await reads.close()
            await pool.close()
        await redis.aclose()
