"""An outside service's outage is waited out on a real Redis: it never uses up a job's attempts,
while the job's own failures still do. Single Redis only: nothing here differs on a cluster
(tests/integration/test_jobs.py runs the consumer on both)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from aiconv.jobs.client import RedisClient
from aiconv.jobs.consumer import Consumer, ConsumerOptions
from aiconv.jobs.errors import DependencyUnavailable
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import Job, JobQueue
from tests.support.running import running
from tests.support.waiting import eventually


@pytest.fixture
async def queue(redis: RedisClient, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys)


def waiting(stream_label: str) -> float:
    labels = {"stream": stream_label, "outcome": "waiting"}
    return REGISTRY.get_sample_value("aiconv_jobs_total", labels) or 0.0


async def test_an_outage_does_not_use_up_attempts_but_failures_do(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.replies(0)
    await queue.enqueue(stream, {"key": "reply"})
    # Telegram down for a while (more tries than max_deliveries), one definite failure, down
    # again, a second definite failure, then it works: two failures out of three allowed.
    script: list[type[Exception] | None] = [
        *[DependencyUnavailable] * 6,
        ValueError,
        *[DependencyUnavailable] * 6,
        ValueError,
        None,
    ]
    calls = 0
    done = asyncio.Event()

    async def handler(job: Job) -> None:
        nonlocal calls
        outcome = script[calls]
        calls += 1
        if outcome is DependencyUnavailable:
            raise DependencyUnavailable("telegram", "502 Bad Gateway")
        if outcome is not None:
            raise outcome("bad request")
        done.set()

    consumer = Consumer(
        queue,
        stream,
        "g",
        handler,
        options=ConsumerOptions(
            block_ms=100, max_deliveries=3, retry_base_seconds=0.01, retry_max_seconds=0.05
        ),
    )
    before = waiting(consumer.stream_label)
    async with running(consumer.run):
        await asyncio.wait_for(done.wait(), 30)
        await eventually(
            lambda: _settled(redis, stream), timeout=30
        )  # acknowledged, not dead-lettered
    assert calls == len(script)
    assert await redis.xlen(queue.keys.dlq(stream)) == 0
    assert waiting(consumer.stream_label) - before == 12


async def _settled(redis: RedisClient, stream: str) -> bool:
    return int((await redis.xpending(stream, "g"))["pending"]) == 0


def test_dependency_unavailable_names_the_service() -> None:
    error = DependencyUnavailable("telegram", "502 Bad Gateway")
    assert error.service == "telegram"
    assert str(error) == "telegram unavailable: 502 Bad Gateway"
