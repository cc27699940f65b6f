"""bench/jobs: no-op jobs per second through aiconv's job layer versus arq, same Redis, same run.

Each side enqueues N jobs, then consumes and acknowledges them with a no-op handler; the figure
is N divided by the time from the first enqueue to the last acknowledgement. Rounds alternate
between the two so drift on the machine affects both alike; the table shows medians.

    python -m bench.jobs [--jobs 5000] [--rounds 3] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid

from redis.asyncio import Redis

from aiconv.jobs.consumer import Consumer, ConsumerOptions
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import Job, JobQueue
from bench.common import Row, median, print_table


async def aiconv_round(redis_url: str, jobs: int) -> float:
    redis = Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}:")
    queue = JobQueue(redis, keys)
    done = asyncio.Event()
    handled = 0

    async def noop(_: Job) -> None:
        nonlocal handled
        handled += 1
        if handled == jobs:
            done.set()

    consumer = Consumer(
        queue,
        keys.generate,
        "bench",
        noop,
        options=ConsumerOptions(concurrency=256, block_ms=100),
    )
    await queue.ensure_group(keys.generate, "bench")
    stop = asyncio.Event()
    started = time.perf_counter()
    await queue.enqueue_many(keys.generate, [{"n": n} for n in range(jobs)])
    running = asyncio.create_task(consumer.run(stop))
    await done.wait()
    await consumer_settled(redis, keys.generate)
    elapsed = time.perf_counter() - started
    stop.set()
    await running
    await redis.delete(keys.generate)
    await redis.aclose()
    return jobs / elapsed


async def consumer_settled(redis: Redis, stream: str) -> None:
    """The handler of the last job has returned; wait for its acknowledgement to land."""
    for _ in range(10_000):
        if not (await redis.xpending(stream, "bench"))["pending"]:
            return
        await asyncio.sleep(0.001)


async def arq_round(redis_url: str, jobs: int) -> float:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    settings = RedisSettings.from_dsn(redis_url)
    queue_name = f"bench-arq-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(settings, default_queue_name=queue_name)

    async def noop(_: dict[str, object]) -> None:
        return None

    started = time.perf_counter()
    # arq has no batch enqueue; concurrent enqueue_job calls are the fastest way it offers.
    await asyncio.gather(*(pool.enqueue_job("noop", _queue_name=queue_name) for _ in range(jobs)))
    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_pool=pool,
        queue_name=queue_name,
        burst=True,
        max_jobs=256,
        poll_delay=0.01,
        keep_result=0,
        handle_signals=False,
    )
    await worker.main()
    elapsed = time.perf_counter() - started
    await worker.close()
    await pool.aclose()
    return jobs / elapsed


async def main(redis_url: str, jobs: int, rounds: int) -> None:
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(rounds):
        ours.append(await aiconv_round(redis_url, jobs))
        theirs.append(await arq_round(redis_url, jobs))
    print(f"bench/jobs: {jobs} no-op jobs per round, {rounds} rounds, Redis {redis_url}")
    print_table(
        "no-op jobs: enqueue -> consume -> ack (aim: >= 5x arq)",
        [Row("jobs/s", median(ours), median(theirs), "jobs/s", baseline_name="arq")],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    options = parser.parse_args()
    logging.getLogger("arq").setLevel(logging.WARNING)  # a line per job would be the benchmark
    asyncio.run(main(options.redis, options.jobs, options.rounds))
