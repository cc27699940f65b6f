"""Coalesced enqueues (jobs/queue.py): concurrent callers share pipelines, yet each enqueue stays
atomic and answers for itself — a duplicate key in the same pipeline is still refused, an error
reaches every caller of the failed round trip, a caller that gives up leaves the others intact,
a script the server does not know is loaded again. On one Redis and on a Redis Cluster
(`both_redis`), where one pipeline holds enqueues to every shard and is split by node."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from aiconv.jobs.client import RedisClient
from aiconv.jobs.errors import REDIS_OUTAGES
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import _HAND_OVER, ENQUEUE_BATCH, JobQueue
from tests.support.redis_targets import RedisTarget

pytestmark = pytest.mark.both_redis


@pytest.fixture
async def queue(redis: RedisClient, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(idempotency=st.lists(st.one_of(st.none(), st.integers(0, 15)), min_size=1, max_size=60))
async def test_concurrent_enqueues_add_each_key_once(
    queue: JobQueue, redis: RedisClient, idempotency: list[int | None]
) -> None:
    # A stream of this example's own, in the last shard (its tag kept: the marker shares its slot).
    stream = f"{queue.keys.updates(queue.keys.shards - 1)}:{id(idempotency)}"
    prefix = f"p{id(idempotency)}:"
    answers = await asyncio.gather(
        *(
            queue.enqueue(stream, {"n": i}, None if k is None else f"{prefix}{k}")
            for i, k in enumerate(idempotency)
        )
    )
    added = [a for a in answers if a is not None]
    unique = {k for k in idempotency if k is not None}
    expected = sum(1 for k in idempotency if k is None) + len(unique)
    assert len(added) == expected == await redis.xlen(stream)
    assert len(set(added)) == len(added)
    # The first caller of each key is the one that added it (the pipeline keeps call order).
    first_of = {k: i for i, k in reversed(list(enumerate(idempotency))) if k is not None}
    for i, (k, answer) in enumerate(zip(idempotency, answers, strict=True)):
        assert (answer is not None) == (k is None or first_of[k] == i)
    for key in (stream, *[queue.keys.done(stream, f"{prefix}{k}") for k in unique]):
        await redis.delete(key)  # one at a time: on a cluster a DEL of many keys is one slot


async def test_more_than_one_pipeline_of_callers_are_all_answered(
    queue: JobQueue, redis: RedisClient
) -> None:
    # Spread over every shard's stream: on a cluster each pipeline goes to several nodes.
    streams = queue.keys.stage_streams("updates")
    total = 2 * ENQUEUE_BATCH + 7
    answers = await asyncio.gather(
        *(queue.enqueue(streams[i % len(streams)], {"n": i}, f"k{i}") for i in range(total))
    )
    assert all(a is not None for a in answers)
    lengths = [await redis.xlen(stream) for stream in streams]
    assert lengths == [len(range(shard, total, len(streams))) for shard in range(len(streams))]
    # The same keys again, in a second round of pipelines: each one refused in its own shard.
    again = await asyncio.gather(
        *(queue.enqueue(streams[i % len(streams)], {"n": i}, f"k{i}") for i in range(total))
    )
    assert again == [None] * total


async def test_every_caller_of_a_failed_round_trip_gets_the_error(
    keys: Keys, redis_target: RedisTarget
) -> None:
    unreachable: RedisClient
    if redis_target.cluster:
        unreachable = RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", 9)], socket_connect_timeout=1
        )
    else:
        unreachable = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=1)
    queue = JobQueue(unreachable, keys)
    try:
        answers = await asyncio.gather(
            *(queue.enqueue(keys.updates(0), {"n": i}, f"k{i}") for i in range(5)),
            return_exceptions=True,
        )
    finally:
        await unreachable.aclose()
    # An outage as the consumers know it (waited out, never a job's fault).
    assert all(isinstance(a, (*REDIS_OUTAGES, OSError)) for a in answers), answers


async def test_a_caller_that_gives_up_leaves_the_others_answered(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.updates(queue.keys.shards - 1)
    quitter = asyncio.create_task(queue.enqueue(stream, {"n": 0}, "quit"))
    others = [asyncio.create_task(queue.enqueue(stream, {"n": i}, f"k{i}")) for i in range(1, 6)]
    quitter.cancel()
    answers = await asyncio.gather(*others)
    assert all(a is not None for a in answers)
    with pytest.raises(asyncio.CancelledError):
        await quitter
    # Whether the quitter's job was sent before it gave up is not its to know; the others' are.
    assert await redis.xlen(stream) in (5, 6)


async def test_a_script_the_server_lacks_is_loaded_again(
    queue: JobQueue, redis: RedisClient
) -> None:
    streams = queue.keys.stage_streams("updates")
    assert await queue.enqueue(streams[0], {"n": 1}, "before") is not None
    # A script no server has loaded, as after a restart or on a replica a failover promoted
    # (without flushing the script cache of servers other suites share).
    queue._hand_over = redis.register_script(f"{_HAND_OVER}\n-- {uuid.uuid4()}")
    answers = await asyncio.gather(
        *(queue.enqueue(streams[i % len(streams)], {"n": i}, f"after{i}") for i in range(6))
    )
    assert all(a is not None for a in answers)
    assert sum([await redis.xlen(stream) for stream in streams]) == 7
    # Loaded now: the next round trip runs it at once.
    assert await queue.enqueue(streams[0], {"n": 7}, "later") is not None
