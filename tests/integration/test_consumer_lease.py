"""The owned Redis lease on a real Redis, and the shared backoff and interruptible sleep. The
lease and the scheduler's leadership run on one Redis and on a Redis Cluster (`both_redis`)."""

from __future__ import annotations

import asyncio
import time

import pytest

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.lease import Lease
from aiconv.jobs.retry import Backoff, sleep_or_stop
from tests.support.waiting import eventually

pytestmark = pytest.mark.both_redis


async def test_only_one_owner_holds_a_lease_and_only_it_renews_or_releases(
    redis: RedisClient, redis_prefix: str
) -> None:
    key = f"{redis_prefix}lease"
    first = Lease(redis, key, "first", ttl_seconds=30)
    second = Lease(redis, key, "second", ttl_seconds=30)

    assert await first.acquire() and first.held
    assert await first.acquire()  # taking it again while ours is a renewal
    assert not await second.acquire() and not second.held
    assert not await second.renew()
    assert not await second.release()
    assert await redis.get(key) == "first"  # untouched by the other owner

    assert await first.renew()
    assert 0 < await redis.pttl(key) <= 30_000
    assert await first.release() and not first.held
    assert await redis.get(key) is None
    assert not await first.release()  # nothing of ours left to release

    assert await second.hold()
    assert not await first.hold()


async def test_a_stalled_holder_cannot_touch_its_successors_lease(
    redis: RedisClient, redis_prefix: str
) -> None:
    key = f"{redis_prefix}lease"
    stalled = Lease(redis, key, "stalled", ttl_seconds=0.2)
    successor = Lease(redis, key, "successor", ttl_seconds=30)
    assert await stalled.acquire()
    await eventually(successor.acquire, timeout=10)  # once the stalled holder's lease expired
    assert not await stalled.renew() and not stalled.held
    assert not await stalled.release()
    assert await redis.get(key) == "successor"


def test_lease_rejects_a_non_positive_ttl(redis: RedisClient) -> None:
    with pytest.raises(ValueError):
        Lease(redis, "k", "me", ttl_seconds=0)


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(0.5, 4.0)
    ceilings = []
    for _ in range(8):
        ceiling = backoff.ceiling()
        ceilings.append(ceiling)
        assert 0 <= backoff.next() <= ceiling
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5
    delays = [Backoff(1.0, 1.0).next() for _ in range(200)]
    assert min(delays) < 0.25 < 0.75 < max(delays)  # spread over the whole range
    backoff.attempt = 10_000
    assert backoff.next() <= 4.0  # no overflow after very many attempts


async def test_sleep_or_stop_ends_early_when_stopped() -> None:
    stop = asyncio.Event()
    assert await sleep_or_stop(stop, 0.01) is False
    assert await sleep_or_stop(stop, -1) is False

    async def stop_soon() -> None:
        await asyncio.sleep(0)
        stop.set()

    started = time.monotonic()
    setter = asyncio.create_task(stop_soon())
    assert await sleep_or_stop(stop, 60) is True
    assert time.monotonic() - started < 30
    await setter
    assert await sleep_or_stop(stop, 60) is True  # already set: returns at once


async def test_one_scheduler_leads_and_hands_over_when_it_stops(
    redis: RedisClient, keys: Keys
) -> None:
    from aiconv.worker.scheduler import EmbeddedScheduler

    # No scheduled jobs: only leadership is exercised, so no database is needed.
    first = EmbeddedScheduler(redis, keys, None, "first", [])  # type: ignore[arg-type]
    second = EmbeddedScheduler(redis, keys, None, "second", [])  # type: ignore[arg-type]
    refused = 0
    hold = second._lease.hold

    async def counted_hold() -> bool:
        nonlocal refused
        held = await hold()
        refused += not held
        return held

    second._lease.hold = counted_hold  # type: ignore[method-assign]
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    running_first = asyncio.create_task(first.run(stop_first))
    try:
        await eventually(lambda: first.leading, timeout=10)
        running_second = asyncio.create_task(second.run(stop_second))
        try:
            await eventually(lambda: refused > 0, timeout=10)  # it tried while `first` led
            assert not second.leading
            stop_first.set()
            await asyncio.wait_for(running_first, 10)
            assert not first.leading
            # The lease was released, not left to expire: the next round of `second` takes it.
            await eventually(lambda: second.leading, timeout=30)
            assert await redis.get(keys.scheduler_leader) == "second"
        finally:
            stop_second.set()
            await asyncio.wait_for(running_second, 10)
    finally:
        stop_first.set()
        await asyncio.wait_for(running_first, 10)
    assert await redis.get(keys.scheduler_leader) is None
