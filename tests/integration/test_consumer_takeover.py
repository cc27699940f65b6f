"""Taking over a dead consumer's jobs on a real Redis: whatever the live consumers' load, never a
live job (graceful drain included), and dead consumers leave the group. On one Redis and on a
Redis Cluster (`both_redis`), on the last shard's streams (not shard 0's on the cluster)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from aiconv.jobs.client import RedisClient
from aiconv.jobs.consumer import Consumer, ConsumerOptions
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import Job, JobQueue
from tests.support.running import running
from tests.support.streams import read_group, stream_entries
from tests.support.waiting import eventually

pytestmark = pytest.mark.both_redis

GROUP = "g"


@pytest.fixture
async def queue(redis: RedisClient, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys)


def last_shard(keys: Keys) -> int:
    return keys.shards - 1


async def owners(redis: RedisClient, stream: str) -> Counter[str]:
    """Pending entries per consumer."""
    pending = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10_000)
    return Counter(str(entry["consumer"]) for entry in pending)


@pytest.mark.parametrize("free_slots", [0, 2])
async def test_a_dead_consumers_jobs_are_all_claimed_whatever_the_load(
    queue: JobQueue, redis: RedisClient, free_slots: int
) -> None:
    stream = queue.keys.generate(last_shard(queue.keys))
    busy_jobs, orphans, visibility = 40, 25, 1.5
    release = asyncio.Semaphore(0)
    started = 0
    handled: Counter[str] = Counter()

    async def handler(job: Job) -> None:
        nonlocal started
        if job.payload["kind"] == "busy":
            started += 1
            await release.acquire()
        handled[job.key] += 1

    live = Consumer(
        queue,
        stream,
        GROUP,
        handler,
        options=ConsumerOptions(
            concurrency=busy_jobs, block_ms=100, visibility_timeout=visibility, claim_batch=10
        ),
    )
    async with running(live.run):
        try:
            # The live consumer is saturated by slow jobs whose (fresh) entries come first in
            # the pending list: a claim that scans from 0-0 with COUNT = free slots never gets
            # past them.
            await live.ready.wait()
            for n in range(busy_jobs):
                await queue.enqueue(stream, {"kind": "busy", "key": f"busy-{n}"})
            await eventually(lambda: started == busy_jobs, timeout=30)
            for n in range(orphans):
                await queue.enqueue(stream, {"kind": "orphan", "key": f"orphan-{n}"})
            read = await read_group(redis, GROUP, "crashed", stream, count=100)
            assert len(read) == orphans  # the dead consumer took them all, then died
            for _ in range(free_slots):
                release.release()
            begun = time.monotonic()

            # Every orphan leaves the dead consumer within the visibility timeout and a few
            # seconds (generous here for a loaded machine), whether or not a slot is free for it.
            await eventually(lambda: _none_left(redis, stream, "crashed"), timeout=visibility + 15)
            assert time.monotonic() - begun < visibility + 15
            assert (await owners(redis, stream)).keys() <= {live.name}

            for _ in range(busy_jobs):
                release.release()
            await eventually(lambda: len(handled) == busy_jobs + orphans, timeout=30)
        finally:
            for _ in range(busy_jobs):
                release.release()  # before the consumer is told to stop: none is left held
    assert set(handled.values()) == {1}  # each job ran exactly once
    assert (await redis.xpending(stream, GROUP))["pending"] == 0


async def _none_left(redis: RedisClient, stream: str, consumer: str) -> bool:
    return (await owners(redis, stream))[consumer] == 0


async def test_heartbeats_last_through_the_drain_so_no_job_runs_twice(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.replies(last_shard(queue.keys))
    visibility = 1.5
    await queue.enqueue(stream, {"key": "slow"})
    runs: list[str] = []
    started = asyncio.Event()
    finish = asyncio.Event()

    def handler_for(who: str):  # type: ignore[no-untyped-def]
        async def handler(job: Job) -> None:
            runs.append(who)
            started.set()
            await finish.wait()

        return handler

    options = ConsumerOptions(block_ms=100, visibility_timeout=visibility, drain_seconds=60)
    draining = Consumer(queue, stream, GROUP, handler_for("draining"), options=options)
    other = Consumer(queue, stream, GROUP, handler_for("other"), options=options)
    stop = asyncio.Event()
    task = asyncio.create_task(draining.run(stop))
    try:
        await asyncio.wait_for(started.wait(), 30)
        stop.set()  # a rolling update: the consumer drains its slow job...
        # ...for several visibility timeouts, while another consumer looks for abandoned jobs.
        deadline = time.monotonic() + 4 * visibility
        while time.monotonic() < deadline:
            await other._claim_abandoned()
            assert runs == ["draining"]
            await asyncio.sleep(0.2)
        assert not task.done()
        finish.set()
        await asyncio.wait_for(task, 30)
    finally:
        finish.set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, *other._tasks.values()), 30)
    assert runs == ["draining"]
    assert (await redis.xpending(stream, GROUP))["pending"] == 0


async def test_dead_consumers_with_nothing_pending_leave_the_group(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.updates(last_shard(queue.keys))
    await queue.ensure_group(stream, GROUP)
    await redis.xgroup_createconsumer(stream, GROUP, "dead-idle")
    await queue.enqueue(stream, {"key": "held"})
    await redis.xreadgroup(GROUP, "dead-holding", {stream: ">"}, count=1)

    async def handler(job: Job) -> None:
        pass

    live = Consumer(
        queue,
        stream,
        GROUP,
        handler,
        # Long visibility: the held job stays with its consumer for the whole test.
        options=ConsumerOptions(block_ms=100, visibility_timeout=60, forget_consumers_after=0.5),
    )

    async def names() -> set[str]:
        return {str(c["name"]) for c in await redis.xinfo_consumers(stream, GROUP)}

    async with running(live.run):
        await eventually(lambda: _lacks(names, "dead-idle"), timeout=30)
    # A consumer with pending entries is kept: they would be lost with it.
    assert "dead-holding" in await names()
    assert (await redis.xpending(stream, GROUP))["pending"] == 1


async def _lacks(names, name: str) -> bool:  # type: ignore[no-untyped-def]
    return name not in await names()


async def test_a_job_redelivered_by_crashes_too_often_is_dead_lettered_unrun(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.generate(last_shard(queue.keys))
    await queue.ensure_group(stream, GROUP)
    entry_id = await queue.enqueue(stream, {"key": "crashes-workers"})
    assert entry_id is not None
    await redis.xreadgroup(GROUP, "crashed-1", {stream: ">"}, count=1)
    # Delivered three times already, each time to a consumer that died before acknowledging.
    await redis.xclaim(
        stream, GROUP, "crashed-3", min_idle_time=0, message_ids=[entry_id], retrycount=3
    )
    runs = 0

    async def handler(job: Job) -> None:
        nonlocal runs
        runs += 1

    live = Consumer(
        queue,
        stream,
        GROUP,
        handler,
        options=ConsumerOptions(block_ms=100, visibility_timeout=0.2, max_deliveries=3),
    )
    async with running(live.run):
        await eventually(lambda: redis.xlen(queue.keys.dlq(stream)), timeout=30)
    [(_, fields)] = await stream_entries(redis, queue.keys.dlq(stream))
    record = json.loads(fields["job"])
    assert record["deliveries"] == 4
    assert "delivered too many times" in record["error"]
    assert runs == 0
    assert (await redis.xpending(stream, GROUP))["pending"] == 0
