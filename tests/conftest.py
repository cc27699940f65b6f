"""Shared fixtures: a database and a Redis key prefix of this run's own, on the real servers."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest
from redis.asyncio import Redis

from aiconv.store.migrate import apply_migrations, ensure_database

ADMIN_DATABASE_URL = os.environ.get(
    "AICONV_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AICONV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]


def _database_url(name: str) -> str:
    return urlsplit(ADMIN_DATABASE_URL)._replace(path=f"/{name}").geturl()


@contextmanager
def migrated_database(name: str) -> Iterator[str]:
    """A fresh, migrated database of this name, dropped afterwards."""
    url = _database_url(name)
    asyncio.run(ensure_database(url))
    asyncio.run(apply_migrations(url))
    yield url
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The test run's own database."""
    with migrated_database(f"aiconv_test_{RUN_ID}") as url:
        yield url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"aiconv-test-{RUN_ID}-{uuid.uuid4().hex[:6]}:"
    yield prefix
    asyncio.run(delete_prefixed(prefix))


async def delete_prefixed(prefix: str) -> None:
    """Delete every Redis key under a test's prefix."""
    redis = Redis.from_url(REDIS_URL)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()
