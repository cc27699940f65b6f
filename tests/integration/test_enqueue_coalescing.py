"""Coalesced enqueues (jobs/queue.py): concurrent callers share pipelines, yet each enqueue stays
atomic and answers for itself — a duplicate key in the same pipeline is still refused, an error
reaches every caller of the failed round trip, a caller that gives up leaves the others intact."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import ENQUEUE_BATCH, JobQueue


@pytest.fixture
async def queue(redis: Redis, redis_prefix: str) -> JobQueue:
    return JobQueue(redis, Keys(redis_prefix))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=st.lists(st.one_of(st.none(), st.integers(0, 15)), min_size=1, max_size=60))
async def test_concurrent_enqueues_add_each_key_once(
    queue: JobQueue, redis: Redis, keys: list[int | None]
) -> None:
    stream = queue.keys.updates + ":" + str(id(keys))  # a stream of this example's own
    prefix = f"p{id(keys)}:"
    answers = await asyncio.gather(
        *(
            queue.enqueue(stream, {"n": i}, None if k is None else f"{prefix}{k}")
            for i, k in enumerate(keys)
        )
    )
    added = [a for a in answers if a is not None]
    expected = sum(1 for k in keys if k is None) + len({k for k in keys if k is not None})
    assert len(added) == expected == await redis.xlen(stream)
    assert len(set(added)) == len(added)
    # The first caller of each key is the one that added it (the pipeline keeps call order).
    first_of = {k: i for i, k in reversed(list(enumerate(keys))) if k is not None}
    for i, (k, answer) in enumerate(zip(keys, answers, strict=True)):
        assert (answer is not None) == (k is None or first_of[k] == i)
    await redis.delete(
        stream, *[queue.keys.done(f"{prefix}{k}") for k in set(keys) if k is not None]
    )


async def test_more_than_one_pipeline_of_callers_are_all_answered(
    queue: JobQueue, redis: Redis
) -> None:
    stream = queue.keys.updates
    answers = await asyncio.gather(
        *(queue.enqueue(stream, {"n": i}, f"k{i}") for i in range(2 * ENQUEUE_BATCH + 7))
    )
    assert all(a is not None for a in answers)
    assert await redis.xlen(stream) == 2 * ENQUEUE_BATCH + 7


async def test_every_caller_of_a_failed_round_trip_gets_the_error(redis_prefix: str) -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=1)
    queue = JobQueue(unreachable, Keys(redis_prefix))
    try:
        answers = await asyncio.gather(
            *(queue.enqueue(queue.keys.updates, {"n": i}, f"k{i}") for i in range(5)),
            return_exceptions=True,
        )
    finally:
        await unreachable.aclose()
    assert all(isinstance(a, (RedisConnectionError, OSError)) for a in answers), answers


async def test_a_caller_that_gives_up_leaves_the_others_answered(
    queue: JobQueue, redis: Redis
) -> None:
    stream = queue.keys.updates
    quitter = asyncio.create_task(queue.enqueue(stream, {"n": 0}, "quit"))
    others = [asyncio.create_task(queue.enqueue(stream, {"n": i}, f"k{i}")) for i in range(1, 6)]
    quitter.cancel()
    answers = await asyncio.gather(*others)
    assert all(a is not None for a in answers)
    with pytest.raises(asyncio.CancelledError):
        await quitter
    # Whether the quitter's job was sent before it gave up is not its to know; the others' are.
    assert await redis.xlen(stream) in (5, 6)


async def test_a_flushed_script_cache_is_reloaded(queue: JobQueue, redis: Redis) -> None:
    stream = queue.keys.updates
    assert await queue.enqueue(stream, {"n": 1}, "before") is not None
    await redis.script_flush()  # as after a Redis restart
    answers = await asyncio.gather(
        *(queue.enqueue(stream, {"n": i}, f"after{i}") for i in range(3))
    )
    assert all(a is not None for a in answers)
    assert await redis.xlen(stream) == 4
