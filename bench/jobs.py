"""bench/jobs: no-op jobs per second through aiconv's job layer versus arq, same Redis, same run;
and, with --cluster, aiconv's job layer on a Redis Cluster beside it on the single Redis.

Each side enqueues N jobs, then consumes and acknowledges them with a no-op handler; the figure
is N divided by the time from the first enqueue to the last acknowledgement. Rounds alternate
between the sides so drift on the machine affects them alike; the table shows medians.

On a cluster the jobs are spread evenly over the shards' streams of one stage and worked as
aiconv works them: one consumer per shard stream, all sharing one `Slots` (the stage's
concurrency), so the figure includes the cluster client's routing and the slot sharing.

    python -m bench.jobs [--jobs 5000] [--rounds 3] [--redis redis://127.0.0.1:6379/0]
                         [--cluster 127.0.0.1:7101,... [--shards 3]]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from aiconv.jobs.client import RedisClient
from aiconv.jobs.consumer import Consumer, ConsumerOptions, Slots
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import Job, JobQueue
from bench.common import Row, median, print_table

CONCURRENCY = 256
ARQ_ENQUEUES_AT_ONCE = 64
# A connection for every job that may acknowledge at once (per node on a cluster): redis-py 8
# bounds a pool to 100 connections by default and refuses one past it instead of waiting.
CONNECTIONS = 2 * CONCURRENCY
Connect = Callable[[], RedisClient]


def single(redis_url: str) -> Connect:
    return lambda: Redis.from_url(redis_url, decode_responses=True, max_connections=CONNECTIONS)


def cluster(nodes: str) -> Connect:
    startup = [
        ClusterNode(host, int(port))
        for host, _, port in (n.rpartition(":") for n in nodes.split(","))
    ]
    return lambda: RedisCluster(
        startup_nodes=startup, decode_responses=True, max_connections=CONNECTIONS
    )


async def aiconv_round(connect: Connect, shards: int, jobs: int) -> float:
    redis = connect()
    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}:", shards)
    queue = JobQueue(redis, keys)
    streams = keys.stage_streams("generate")
    done = asyncio.Event()
    handled = 0

    async def noop(_: Job) -> None:
        nonlocal handled
        handled += 1
        if handled == jobs:
            done.set()

    slots = Slots(CONCURRENCY)  # the stage's, shared by its consumers as aiconv's stages do
    consumers = [
        Consumer(
            queue,
            stream,
            "bench",
            noop,
            slots=slots,
            options=ConsumerOptions(concurrency=CONCURRENCY, block_ms=100),
        )
        for stream in streams
    ]
    for stream in streams:
        await queue.ensure_group(stream, "bench")
    stop = asyncio.Event()
    started = time.perf_counter()
    # Jobs spread evenly over the shards, as chats are.
    await asyncio.gather(
        *(
            queue.enqueue_many(stream, [{"n": n} for n in range(shard, jobs, shards)])
            for shard, stream in enumerate(streams)
        )
    )
    running = [asyncio.create_task(consumer.run(stop)) for consumer in consumers]
    await done.wait()
    await consumers_settled(redis, streams)
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*running)
    for stream in streams:  # one key per DEL: on a cluster they lie in different slots
        await redis.delete(stream)
    await redis.aclose()
    return jobs / elapsed


async def consumers_settled(redis: RedisClient, streams: tuple[str, ...]) -> None:
    """The handler of the last job has returned; wait for the acknowledgements to land."""
    for _ in range(10_000):
        pending = [(await redis.xpending(stream, "bench"))["pending"] for stream in streams]
        if not any(pending):
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
    # arq has no batch enqueue; concurrent enqueue_job calls are the fastest way it offers. At
    # most ARQ_ENQUEUES_AT_ONCE: each holds a pooled connection (WATCH), and redis-py 8 refuses
    # one past the pool's 100 instead of waiting for it.
    at_once = asyncio.Semaphore(ARQ_ENQUEUES_AT_ONCE)

    async def enqueue() -> None:
        async with at_once:
            await pool.enqueue_job("noop", _queue_name=queue_name)

    await asyncio.gather(*(enqueue() for _ in range(jobs)))
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


async def main(
    redis_url: str, jobs: int, rounds: int, cluster_nodes: str | None, shards: int
) -> None:
    ours: list[float] = []
    theirs: list[float] = []
    on_cluster: list[float] = []
    for _ in range(rounds):
        ours.append(await aiconv_round(single(redis_url), 1, jobs))
        theirs.append(await arq_round(redis_url, jobs))
        if cluster_nodes:
            on_cluster.append(await aiconv_round(cluster(cluster_nodes), shards, jobs))
    print(f"bench/jobs: {jobs} no-op jobs per round, {rounds} rounds, Redis {redis_url}")
    print_table(
        "no-op jobs: enqueue -> consume -> ack (aim: >= 5x arq)",
        [Row("jobs/s", median(ours), median(theirs), "jobs/s", baseline_name="arq")],
    )
    if cluster_nodes:
        print(f"Redis Cluster {cluster_nodes}, {shards} shards")
        print_table(
            "no-op jobs on a Redis Cluster: one consumer per shard stream, shared slots",
            [
                Row(
                    "jobs/s",
                    median(on_cluster),
                    median(ours),
                    "jobs/s",
                    baseline_name="aiconv on one Redis",
                )
            ],
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--cluster", metavar="HOST:PORT,...", help="also run aiconv's side on this Redis Cluster"
    )
    parser.add_argument("--shards", type=int, default=3, help="shards on the cluster (default 3)")
    options = parser.parse_args()
    logging.getLogger("arq").setLevel(logging.WARNING)  # a line per job would be the benchmark
    asyncio.run(main(options.redis, options.jobs, options.rounds, options.cluster, options.shards))
