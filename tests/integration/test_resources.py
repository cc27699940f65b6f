"""One owner per resource (issue 14, item 1): a process opens one Redis client and at most one
PostgreSQL pool, whatever modes it runs, and closes them.

Against the real Redis, PostgreSQL, model and Bot API double: `aiconv all`'s modes run in this
process until every readiness check passes; the clients made meanwhile are counted where they
are constructed, so a mode that makes its own is caught wherever it does. On a Redis Cluster
the one client is a `RedisCluster` (which makes a `Redis` per node inside it, not counted: those
are its connections, not clients of a mode), and a plain `Redis` made anywhere is a mode that
ignored the cluster settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from aiconv.config import Settings
from aiconv.modes.process import IN_PROCESS_MODES, run_modes
from aiconv.resources import NotMade, Resources, open_resources
from aiconv.testing.botapi import BotApiDouble
from tests.support.ports import free_port
from tests.support.redis_targets import RedisTarget
from tests.support.waiting import eventually

JWT_KEY = "Rq3vX9tLw2Kp8ZmB5nYc7HdF4jGs6QaE"  # the admin API on: the web app wants the database


def count_clients(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    made: Counter[str] = Counter()
    redis_init, pool_init = Redis.__init__, AsyncConnectionPool.__init__
    cluster_init = RedisCluster.__init__

    def redis(self: Redis, *args: object, **kwargs: object) -> None:
        if type(self) is Redis:  # not a pipeline, which shares its client's connections
            made["redis"] += 1
        redis_init(self, *args, **kwargs)  # type: ignore[arg-type]

    def cluster(self: RedisCluster, *args: object, **kwargs: object) -> None:
        if type(self) is RedisCluster:
            made["cluster"] += 1
        cluster_init(self, *args, **kwargs)  # type: ignore[arg-type]

    def pool(self: AsyncConnectionPool, *args: object, **kwargs: object) -> None:
        made["pool"] += 1
        pool_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Redis, "__init__", redis)
    monkeypatch.setattr(AsyncConnectionPool, "__init__", pool)
    monkeypatch.setattr(RedisCluster, "__init__", cluster)
    return made


def one_client(target: RedisTarget) -> dict[str, int]:
    return {"cluster": 1} if target.cluster else {"redis": 1}


@pytest.mark.both_redis
async def test_all_modes_in_one_process_share_one_redis_client_and_one_pool(
    monkeypatch: pytest.MonkeyPatch, database_url: str, redis_prefix: str, redis_target: RedisTarget
) -> None:
    async with BotApiDouble() as double:
        settings = dataclasses.replace(
            Settings.from_env({**redis_target.env(), "REDIS_KEY_PREFIX": redis_prefix}),
            database_url=database_url,
            telegram_api_url=double.url,
            telegram_bot_token=double.token,
            jwt_secret_key=JWT_KEY,
            metrics_port=free_port(),
            port=free_port(),
            n_ctx=512,
            ml_parallel=1,
            ml_prefix_cache_mb=0,
        )
        made = count_clients(monkeypatch)
        stop = asyncio.Event()
        seen: list[Resources] = []

        async def when_ready(resources: Resources) -> None:
            seen.append(resources)
            async with httpx.AsyncClient() as http:

                async def ready() -> bool:
                    url = f"http://127.0.0.1:{settings.metrics_port}/ready"
                    try:
                        return (await http.get(url)).status_code == 200
                    except httpx.TransportError:  # the ops port is not bound yet
                        return False

                await eventually(ready, timeout=120)
                # The web app's routes answer too, on the process's clients.
                health = await http.get(f"http://127.0.0.1:{settings.port}/ready")
                assert health.status_code == 200
            stop.set()

        await asyncio.wait_for(run_modes(settings, IN_PROCESS_MODES, stop, when_ready), 180)
    assert dict(made) == {**one_client(redis_target), "pool": 1}
    [resources] = seen
    assert resources.pool is not None and resources.pool.closed  # closed by whoever opened it


@pytest.mark.both_redis
async def test_resources_without_the_database_make_no_pool_and_without_telegram_no_client(
    monkeypatch: pytest.MonkeyPatch, redis_prefix: str, redis_target: RedisTarget
) -> None:
    settings = Settings.from_env({**redis_target.env(), "REDIS_KEY_PREFIX": redis_prefix})
    made = count_clients(monkeypatch)
    async with open_resources(settings, database=False, telegram=False) as resources:
        assert await resources.ping_redis()
        assert resources.pool is None
        with pytest.raises(NotMade, match="without the database"):
            _ = resources.store
        with pytest.raises(NotMade, match="without the Bot API client"):
            _ = resources.bot
    assert dict(made) == one_client(redis_target)
