"""Gauges read from Redis and the pool, refreshed by every process so none goes stale.

Stream figures come straight from Redis, added up per stage over the shards (a stage's metrics
keep one label however many shards there are); the business figures (active users,
conversations) are computed once per interval by the scheduler and shared through a Redis hash,
so every process exports the same values and a dashboard's max() is always current. The read
replica's lag (and whether it answers) is measured by every process with a replica configured,
each interval, so the lag alert fires even while no lag-tolerant read happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import structlog
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError, ResponseError

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.lag import group_lag
from aiconv.observability.metrics import (
    ACTIVE_USERS,
    CONVERSATIONS,
    DB_POOL_CONNECTIONS,
    DLQ_SIZE,
    STORED_MESSAGES,
    STREAM_LAG,
    STREAM_LENGTH,
    STREAM_OLDEST_PENDING_AGE,
    STREAM_PENDING,
)
from aiconv.store.db import ReadRouter

REFRESH_SECONDS = 15.0

log = structlog.get_logger(__name__)


def business_key(keys: Keys) -> str:
    return keys.business_gauges


async def refresh_streams(redis: RedisClient, keys: Keys) -> None:
    """Length, lag and pending of every job stream, added up per stage over its shards (the
    labels stay "updates", "generate", "generate:openai", "replies" whatever the shards); the
    oldest pending age is the oldest of them. The dead-letter size adds up every stream's."""
    figures: dict[str, StreamFigures] = {}
    for stream in keys.job_streams:
        stage = figures.setdefault(keys.label(stream), StreamFigures())
        stage.add(await _stream_figures(redis, stream))
    for label, stage in figures.items():
        STREAM_LENGTH.labels(label).set(stage.length)
        STREAM_LAG.labels(label).set(stage.lag)
        STREAM_PENDING.labels(label).set(stage.pending)
        STREAM_OLDEST_PENDING_AGE.labels(label).set(stage.oldest_pending_age)
    dead = 0
    for dlq in keys.dlqs:  # one XLEN each: they lie in many slots
        dead += int(await redis.xlen(dlq))
    DLQ_SIZE.set(dead)


@dataclass
class StreamFigures:
    length: int = 0
    lag: int = 0
    pending: int = 0
    oldest_pending_age: float = 0.0

    def add(self, other: StreamFigures) -> None:
        self.length += other.length
        self.lag += other.lag
        self.pending += other.pending
        self.oldest_pending_age = max(self.oldest_pending_age, other.oldest_pending_age)


async def _stream_figures(redis: RedisClient, stream: str) -> StreamFigures:
    figures = StreamFigures(length=int(await redis.xlen(stream)))
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        groups = []  # the stream does not exist yet
    for group in groups:
        figures.lag += await group_lag(redis, stream, group)
        figures.pending += int(group["pending"])
        if int(group["pending"]):
            summary = await redis.xpending(stream, group["name"])
            # XINFO and XPENDING are two reads: the jobs may be acknowledged in between,
            # and then the summary has no oldest entry (min is None).
            oldest = summary.get("min")
            if oldest:
                oldest_ms = int(str(oldest).split("-")[0])
                age = time.time() - oldest_ms / 1000
                figures.oldest_pending_age = max(figures.oldest_pending_age, age)
    return figures


async def refresh_business(redis: RedisClient, keys: Keys) -> None:
    figures = await redis.hgetall(business_key(keys))
    for field, value in figures.items():
        kind, _, label = str(field).partition(":")
        gauge = {
            "active_users": ACTIVE_USERS,
            "conversations": CONVERSATIONS,
            "messages": STORED_MESSAGES,
        }.get(kind)
        if gauge is not None:
            gauge.labels(label).set(float(value))


def refresh_pool(pool: AsyncConnectionPool) -> None:
    stats = pool.get_stats()
    DB_POOL_CONNECTIONS.labels("size").set(stats.get("pool_size", 0))
    DB_POOL_CONNECTIONS.labels("idle").set(stats.get("pool_available", 0))
    DB_POOL_CONNECTIONS.labels("waiting").set(stats.get("requests_waiting", 0))


async def run_gauges(
    redis: RedisClient,
    keys: Keys,
    pool: AsyncConnectionPool | None,
    stop: asyncio.Event,
    reads: ReadRouter | None = None,
) -> None:
    while not stop.is_set():
        try:
            await refresh_streams(redis, keys)
            await refresh_business(redis, keys)
        except (RedisError, OSError) as error:
            log.debug("gauges not refreshed", error=type(error).__name__)
        if pool is not None:
            refresh_pool(pool)
        if reads is not None:
            await reads.refresh_lag()  # sets the replica gauges; never raises for the replica
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REFRESH_SECONDS)
