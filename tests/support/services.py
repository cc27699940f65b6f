"""The real PostgreSQL and Redis the tests run against, and throwaway namespaces on them.

Every run gets a database of its own and every test a Redis key prefix of its own
(`RUN_ID` in both), so runs and tests never see each other's data, on shared servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from redis.asyncio import Redis

from aiconv.store.migrate import apply_migrations, ensure_database

ADMIN_DATABASE_URL = os.environ.get(
    "AICONV_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AICONV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]


def database_url_named(name: str) -> str:
    """The URL of database `name` on the test server (it need not exist yet)."""
    return urlsplit(ADMIN_DATABASE_URL)._replace(path=f"/{name}").geturl()


def new_redis_prefix(label: str | None = None) -> str:
    """A Redis key prefix of this run's own: random, or `label` when a test needs it stable."""
    return f"aiconv-test-{RUN_ID}-{label or uuid.uuid4().hex[:6]}:"


async def drop_database(name: str) -> None:
    """Drop database `name` if it exists, closing whatever connections it still has."""
    query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    async with await psycopg.AsyncConnection.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        await conn.execute(query)


@asynccontextmanager
async def migrated_database(name: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this name, dropped afterwards."""
    url = database_url_named(name)
    await ensure_database(url)
    await apply_migrations(url)
    try:
        yield url
    finally:
        await drop_database(name)


async def delete_prefixed(prefix: str) -> None:
    """Delete every Redis key under a test's prefix."""
    redis = Redis.from_url(REDIS_URL)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
