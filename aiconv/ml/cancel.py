"""Cancelling generations nobody will read: a stale chat turn, an abandoned API request.

A chat's `live` key (jobs/keys.py `chat_live`) holds the id of its turn in flight until a newer
message or /reset supersedes it (worker/turns.py): a generation for any other value is stale.
The web writes `{prefix}oai:{id}:cancel` when an API client goes away.

One watcher task checks every watched generation once per interval, off the decode loop: a
decode step never waits for Redis. The check is a non-transactional pipeline of GETs, not an
MGET: the watched keys belong to different chats, so on a Redis Cluster to different hash
slots, where a multi-key command is refused. On one Redis the pipeline is still one round trip;
on a cluster, one per node holding a watched key (redis-py sends them side by side).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisClusterException, RedisError

from aiconv.jobs.client import RedisClient
from aiconv.jobs.retry import sleep_or_stop

if TYPE_CHECKING:
    from aiconv.ml.engine import Generation

__all__ = ["CancelWatcher", "is_stale"]

CHECK_INTERVAL_SECONDS = 0.25
# A cluster client raises RedisClusterException (no RedisError) when it reaches no node.
_REDIS_FAILURES = (RedisError, RedisClusterException)

log = structlog.get_logger(__name__)


def is_stale(latest: str | bytes | None, job_key: str) -> bool:
    """A missing value means not stale; any other value than the job's own key means stale."""
    if latest is None:
        return False
    value = latest.decode() if isinstance(latest, bytes) else latest
    return value != job_key


@dataclass(eq=False)
class _Watch:
    key: str  # the Redis key to read
    expected: str | None  # None: any value cancels; else: any other value than this cancels
    generation: Generation


class CancelWatcher:
    def __init__(self, redis: RedisClient, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self.redis = redis
        self.interval = interval
        self._watches: set[_Watch] = set()
        self._wake = asyncio.Event()

    async def stale(self, key: str, expected: str | None) -> bool:
        """One immediate check (before a generation starts)."""
        try:
            value = await self.redis.get(key)
        except _REDIS_FAILURES:
            return False
        return self._cancels(value, expected)

    @staticmethod
    def _cancels(value: str | bytes | None, expected: str | None) -> bool:
        if expected is None:
            return value is not None
        return is_stale(value, expected)

    @contextlib.contextmanager
    def watch(self, key: str, expected: str | None, generation: Generation) -> Iterator[None]:
        entry = _Watch(key, expected, generation)
        self._watches.add(entry)
        self._wake.set()
        try:
            yield
        finally:
            self._watches.discard(entry)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self._watches:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            await self.check()
            await sleep_or_stop(stop, self.interval)

    async def check(self) -> None:
        watches = [w for w in self._watches if not w.generation.cancelled]
        if not watches:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for watch in watches:
                    pipe.get(watch.key)
                values = await pipe.execute()
        except _REDIS_FAILURES as error:
            log.warning("cannot check for stale generations", error=type(error).__name__)
            return
        for watch, value in zip(watches, values, strict=True):
            if self._cancels(value, watch.expected):
                watch.generation.cancel()
