"""The long-lived clients of one process: made once, passed in, closed by whoever opened them.

Invariant: a process has one Redis client and at most one PostgreSQL pool, whatever modes it
runs (`aiconv all` runs three). Nothing below a mode makes its own client: the web app, the
worker, ml, the gauges and the ops port all take the `Resources` their process opened. Two
clients of one server in one process double the connections, split the metrics of the pool and,
when one of them is never closed, leak sockets at every restart of a mode.

Making and opening are two steps because a granian web worker builds its Starlette app (which
needs the clients to build its routes) outside an event loop, and opens and closes the clients
in the app's lifespan: `make_resources` connects nothing; `Resources.open` / `close` (or
`open_resources`, both at once) do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import httpx
from psycopg_pool import AsyncConnectionPool
from redis.asyncio.cluster import RedisCluster

from aiconv.config import Settings
from aiconv.jobs.client import RedisClient, connect, keys_for
from aiconv.jobs.codec import JobCodec
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import JobQueue
from aiconv.store.crypto import TextCipher
from aiconv.store.db import ReadRouter, make_pool
from aiconv.store.repository import Store
from aiconv.telegram.client import BotClient

POOL_NAME = "aiconv"
T = TypeVar("T")


class NotMade(RuntimeError):
    """The resources were made without a client (the database, Telegram), and something asked
    for it: a wiring error, found at the first use."""


def made(client: T | None, what: str) -> T:
    if client is None:
        raise NotMade(f"these resources were made without {what}")
    return client


@dataclass
class Resources:
    """One process's clients: Redis (with its job queue), and where the process needs them
    PostgreSQL and the Bot API (over one HTTP client). `store`, `http` and `bot` raise NotMade
    where they were not made."""

    settings: Settings
    redis: RedisClient
    queue: JobQueue
    store_if_made: Store | None
    http_if_made: httpx.AsyncClient | None
    # Lag-tolerant reads (admin statistics, exports, business gauges): the replica when one is
    # configured and current, else the primary. None where the database was not made.
    reads: ReadRouter | None = None

    def __post_init__(self) -> None:
        self.bot_if_made = (
            BotClient(
                self.http_if_made, self.settings.telegram_api_url, self.settings.telegram_bot_token
            )
            if self.http_if_made is not None
            else None
        )

    @property
    def keys(self) -> Keys:
        return self.queue.keys

    @property
    def store(self) -> Store:
        return made(self.store_if_made, "the database (database=False)")

    @property
    def http(self) -> httpx.AsyncClient:
        return made(self.http_if_made, "the HTTP client (telegram=False)")

    @property
    def bot(self) -> BotClient:
        return made(self.bot_if_made, "the Bot API client (telegram=False)")

    @property
    def pool(self) -> AsyncConnectionPool | None:
        """The PostgreSQL pool, or None when the process runs without the database."""
        return self.store_if_made.pool if self.store_if_made is not None else None

    async def ping_redis(self) -> object:
        """The readiness check of Redis: one PING, or on a cluster one to every primary (a
        primary that does not answer leaves its shards' chats unserved: not ready)."""
        return await ping(self.redis)

    async def open(self) -> None:
        # The pool opens without waiting: a database outage is waited out by its users, never a
        # reason not to start (the web mode's webhook does not need PostgreSQL at all).
        if self.pool is not None:
            await self.pool.open(wait=False)
        if self.reads is not None:
            await self.reads.open()

    async def close(self) -> None:
        if self.http_if_made is not None:
            await self.http_if_made.aclose()
        if self.reads is not None:
            await self.reads.close()
        if self.pool is not None:
            await self.pool.close()
        await self.redis.aclose()


async def ping(redis: RedisClient) -> object:
    """PING one Redis, or every primary of a cluster (raises when one does not answer)."""
    if isinstance(redis, RedisCluster):
        return await redis.ping(target_nodes=RedisCluster.PRIMARIES)
    return await redis.ping()


def make_resources(
    settings: Settings,
    *,
    database: bool = True,
    telegram: bool = True,
    pool_size: int | None = None,
    pool_name: str = POOL_NAME,
) -> Resources:
    """The clients, unconnected. Without `database` no pool is made at all (`store` raises);
    without `telegram` no HTTP client (`http` and `bot` raise): an unused one still costs its
    TLS context, about 2 MB in each web worker."""
    redis = connect(settings)
    cipher = TextCipher.from_setting(settings.encryption_key)
    store = reads = None
    if database:
        size = pool_size or settings.db_pool_size
        pool = make_pool(settings.database_url, size, pool_name)
        store = Store(pool, cipher)
        reads = ReadRouter.for_primary(
            pool, settings.database_replica_url, settings.replica_max_lag_seconds, size
        )
    http = None
    if telegram:
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
    return Resources(
        settings=settings,
        redis=redis,
        queue=JobQueue(redis, keys_for(settings), JobCodec(cipher)),
        store_if_made=store,
        http_if_made=http,
        reads=reads,
    )


@asynccontextmanager
async def open_resources(
    settings: Settings,
    *,
    database: bool = True,
    telegram: bool = True,
    pool_size: int | None = None,
    pool_name: str = POOL_NAME,
) -> AsyncIterator[Resources]:
    """Make and open the clients; close them when the block ends."""
    resources = make_resources(
        settings, database=database, telegram=telegram, pool_size=pool_size, pool_name=pool_name
    )
    try:
        await resources.open()
        yield resources
    finally:
        await resources.close()
