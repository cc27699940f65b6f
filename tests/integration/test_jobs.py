"""The Redis Streams job layer on a real Redis: idempotent enqueue, atomic hand-over, lanes,
reclaiming a dead consumer's jobs, and the dead-letter streams. On one Redis and on a Redis
Cluster (`both_redis`): the streams used are the last shard's, so on the cluster they are not
shard 0's, and a hand-over stays within one shard as the layout requires."""

from __future__ import annotations

import asyncio
import json

import pytest

from aiconv.jobs.client import RedisClient
from aiconv.jobs.consumer import Consumer, ConsumerOptions, Slots
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import Job, JobQueue
from tests.support.running import running
from tests.support.streams import read_group, stream_entries
from tests.support.waiting import eventually

pytestmark = pytest.mark.both_redis


@pytest.fixture
async def queue(redis: RedisClient, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys)


def last_shard(keys: Keys) -> int:
    return keys.shards - 1


async def run_until(consumer: Consumer, done: asyncio.Event, timeout: float = 15.0) -> None:
    async with running(consumer.run, stop_within=10):
        await asyncio.wait_for(done.wait(), timeout)


async def test_enqueue_with_the_same_key_adds_one_job(queue: JobQueue, redis: RedisClient) -> None:
    stream = queue.keys.updates(last_shard(queue.keys))
    first = await queue.enqueue(stream, {"n": 1}, "update:7")
    second = await queue.enqueue(stream, {"n": 2}, "update:7")
    assert first is not None and second is None
    assert await redis.xlen(stream) == 1
    assert await queue.enqueue(stream, {"n": 3}) is not None  # no key: no deduplication


async def test_hand_over_enqueues_and_acknowledges_together(
    queue: JobQueue, redis: RedisClient
) -> None:
    source, target = (
        queue.keys.updates(last_shard(queue.keys)),
        queue.keys.generate(last_shard(queue.keys)),
    )
    await queue.ensure_group(source, "g")
    await queue.enqueue(source, {"key": "a"})
    [(entry_id, fields)] = await read_group(redis, "g", "c1", source, count=1)
    job = Job(source, entry_id, json.loads(fields["job"]))
    assert (await redis.xpending(source, "g"))["pending"] == 1

    assert await queue.hand_over(job, "g", target, {"key": "b"}, "gen:a") is not None
    assert (await redis.xpending(source, "g"))["pending"] == 0
    assert await redis.xlen(target) == 1
    # A redelivered source job hands over again: acknowledged, but nothing enqueued twice.
    assert await queue.hand_over(job, "g", target, {"key": "b"}, "gen:a") is None
    assert await redis.xlen(target) == 1


async def test_jobs_of_one_lane_run_in_order_and_lanes_run_side_by_side(
    queue: JobQueue,
) -> None:
    stream = queue.keys.replies(last_shard(queue.keys))
    for n in range(6):
        for lane in ("a", "b", "c"):
            await queue.enqueue(stream, {"lane": lane, "n": n})
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    running = 0
    most_at_once = 0
    done = asyncio.Event()

    async def handler(job: Job) -> None:
        nonlocal running, most_at_once
        running += 1
        most_at_once = max(most_at_once, running)
        await asyncio.sleep(0.01 * (5 - job.payload["n"]))  # later jobs finish faster
        seen[job.payload["lane"]].append(job.payload["n"])
        running -= 1
        if sum(map(len, seen.values())) == 18:
            done.set()

    consumer = Consumer(
        queue,
        stream,
        "g",
        handler,
        lane_of=lambda job: job.payload["lane"],
        options=ConsumerOptions(concurrency=8, block_ms=100),
    )
    await run_until(consumer, done)
    assert seen == {lane: list(range(6)) for lane in "abc"}
    assert most_at_once > 1


async def test_a_dead_consumers_job_is_claimed_and_done(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.generate(last_shard(queue.keys))
    await queue.ensure_group(stream, "g")
    await queue.enqueue(stream, {"key": "orphan"})
    await redis.xreadgroup("g", "crashed-consumer", {stream: ">"}, count=1)  # never acked
    done = asyncio.Event()
    handled: list[Job] = []

    async def handler(job: Job) -> None:
        handled.append(job)
        done.set()

    consumer = Consumer(
        queue,
        stream,
        "g",
        handler,
        options=ConsumerOptions(block_ms=50, visibility_timeout=0.2),
    )
    await run_until(consumer, done)
    assert [job.key for job in handled] == ["orphan"]
    assert handled[0].deliveries == 2
    assert (await redis.xpending(stream, "g"))["pending"] == 0


async def test_a_job_that_keeps_failing_moves_to_the_dead_letter_stream(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.generate(last_shard(queue.keys))
    await queue.enqueue(stream, {"key": "poison"})
    attempts = 0

    async def handler(job: Job) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("cannot handle this")

    consumer = Consumer(
        queue,
        stream,
        "g",
        handler,
        options=ConsumerOptions(block_ms=50, visibility_timeout=0.1, max_deliveries=2),
    )
    async with running(consumer.run):
        await eventually(lambda: redis.xlen(queue.keys.dlq(stream)), timeout=15)
    [(_, fields)] = await stream_entries(redis, queue.keys.dlq(stream))
    record = json.loads(fields["job"])
    assert record["payload"] == {"key": "poison"}
    assert "ValueError: cannot handle this" in record["error"]
    assert attempts == 2
    assert (await redis.xpending(stream, "g"))["pending"] == 0


async def test_graceful_stop_leaves_unfinished_jobs_pending(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.replies(last_shard(queue.keys))
    await queue.enqueue(stream, {"key": "slow"})
    started = asyncio.Event()

    async def handler(job: Job) -> None:
        started.set()
        await asyncio.Event().wait()  # never finishes on its own

    consumer = Consumer(
        queue, stream, "g", handler, options=ConsumerOptions(block_ms=50, drain_seconds=0.2)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert (await redis.xpending(stream, "g"))["pending"] == 1


class _AcknowledgesAfterGroupInfo:
    """A Redis client on which every pending entry is acknowledged right after XINFO GROUPS
    answers: the interleaving in which XPENDING's summary has no `min`."""

    def __init__(self, redis: RedisClient, stream: str) -> None:
        self._redis = redis
        self._stream = stream

    async def xinfo_groups(self, stream: str) -> object:
        groups = await self._redis.xinfo_groups(stream)
        pending = await self._redis.xpending_range(stream, "g", min="-", max="+", count=100)
        await self._redis.xack(stream, "g", *[entry["message_id"] for entry in pending])
        return groups

    def __getattr__(self, name: str) -> object:
        return getattr(self._redis, name)


async def test_trim_survives_entries_acknowledged_while_it_reads(
    queue: JobQueue, redis: RedisClient
) -> None:
    stream = queue.keys.generate(last_shard(queue.keys))
    await queue.ensure_group(stream, "g")
    for n in range(4):
        await queue.enqueue(stream, {"n": n})
    await redis.xreadgroup("g", "c", {stream: ">"}, count=3)
    queue.redis = _AcknowledgesAfterGroupInfo(redis, stream)  # type: ignore[assignment]

    assert await queue.trim(
        stream, keep_seconds=-1
    )  # -1: entries of this very millisecond too == 3
    remaining = [json.loads(f["job"])["n"] for _, f in await stream_entries(redis, stream)]
    assert remaining == [3]  # read by nobody yet: kept


# --- payloads sealed with ENCRYPTION_KEY (issue 13, item 4) ------------------------------------


async def test_with_a_key_user_text_never_reaches_redis_in_the_clear(
    redis: RedisClient, keys: Keys
) -> None:
    from aiconv.jobs.codec import JobCodec
    from aiconv.jobs.dlq import DeadLetters
    from aiconv.store.crypto import TextCipher

    codec = JobCodec(TextCipher([bytes(range(32)).hex()]))
    queue = JobQueue(redis, keys, codec)
    source, target = (
        queue.keys.updates(last_shard(queue.keys)),
        queue.keys.generate(last_shard(queue.keys)),
    )
    await queue.enqueue(source, {"key": "u1", "text": "my diary entry"}, "update:1")
    seen: list[dict[str, object]] = []

    async def hand_on(job: Job) -> None:
        seen.append(job.payload)
        await queue.hand_over(job, "g", target, {"key": "g1", "turns": [["user", "my diary"]]})

    done = asyncio.Event()
    consumer = Consumer(queue, source, "g", hand_on, options=ConsumerOptions(block_ms=50))
    task = asyncio.create_task(run_until(consumer, done))
    await eventually(lambda: redis.xlen(target), timeout=15)
    done.set()
    await task
    assert seen == [{"key": "u1", "text": "my diary entry"}]

    async def fail(job: Job) -> None:
        raise ValueError("no")

    dead_consumer = Consumer(
        queue, target, "g", fail, options=ConsumerOptions(block_ms=50, max_deliveries=1)
    )
    done = asyncio.Event()
    task = asyncio.create_task(run_until(dead_consumer, done))
    await eventually(lambda: redis.xlen(queue.keys.dlq(target)), timeout=15)
    done.set()
    await task

    # Every entry the job layer wrote (update, generation, dead letter) is sealed.
    for stream in (source, target, queue.keys.dlq(target)):
        for _, fields in await stream_entries(redis, stream):
            assert fields["job"].startswith("sealed1:") and "diary" not in fields["job"]
    dead = DeadLetters(redis, queue.keys, codec)
    [listed] = await dead.list()
    assert listed.payload == {"key": "g1", "turns": [["user", "my diary"]]}
    await dead.replay(listed.id)
    [*_, (_, fields)] = await stream_entries(redis, target)
    assert fields["job"].startswith("sealed1:")
    assert codec.decode(target, fields["job"]) == listed.payload
    # Without the key a sealed dead letter is listed as unreadable, never an error.
    await queue.hand_over(
        Job(target, "0-1", {}), "g", queue.keys.dlq(target), {"stream": target, "payload": {"a": 1}}
    )
    [unreadable] = await DeadLetters(redis, queue.keys).list()
    assert unreadable.error == "unreadable dead-letter record" and unreadable.payload == {}


async def test_a_sealed_job_that_cannot_be_read_is_dead_lettered(
    redis: RedisClient, keys: Keys
) -> None:
    from aiconv.jobs.codec import JobCodec
    from aiconv.store.crypto import TextCipher

    sealed = JobQueue(redis, keys, JobCodec(TextCipher([bytes(32).hex()])))
    stream = keys.replies(last_shard(keys))
    await sealed.enqueue(stream, {"key": "r1"})
    other = JobQueue(redis, keys, JobCodec(TextCipher([bytes(range(32)).hex()])))
    handled: list[Job] = []

    async def handler(job: Job) -> None:
        handled.append(job)

    consumer = Consumer(other, stream, "g", handler, options=ConsumerOptions(block_ms=50))
    done = asyncio.Event()
    task = asyncio.create_task(run_until(consumer, done))
    await eventually(lambda: redis.xlen(other.keys.dlq(stream)), timeout=15)
    done.set()
    await task
    assert handled == []


# --- a stage's consumers share their slots (one consumer per shard stream) -------------------


async def test_consumers_sharing_slots_never_hold_more_than_their_size_together(
    queue: JobQueue,
) -> None:
    # Two streams (shard 0's and the last shard's on the cluster): each has its own consumer,
    # both on one `Slots(3)`, and work enough to want far more than 3 slots at once.
    streams = (queue.keys.replies(0), queue.keys.generate(last_shard(queue.keys)))
    for stream in streams:
        await queue.enqueue_many(stream, [{"n": n} for n in range(20)])
    slots = Slots(3)
    running_now = most_running = most_held = 0
    finished: list[str] = []
    done = asyncio.Event()

    async def handler(job: Job) -> None:
        nonlocal running_now, most_running, most_held
        running_now += 1
        most_running = max(most_running, running_now)
        most_held = max(most_held, slots.held)
        await asyncio.sleep(0.01)  # the job's work: long enough for the readers to contend
        most_held = max(most_held, slots.held)
        running_now -= 1
        finished.append(job.stream)
        if len(finished) == 40:
            done.set()

    consumers = [
        Consumer(queue, stream, "g", handler, slots=slots, options=ConsumerOptions(block_ms=50))
        for stream in streams
    ]
    async with running(consumers[0].run, stop_within=10), running(consumers[1].run, stop_within=10):
        await asyncio.wait_for(done.wait(), 30)
        assert slots.held <= slots.size
    assert most_held <= 3 and most_running <= 3
    assert most_running == 3  # the slots were used, not merely never exceeded
    # A slot given back goes to the consumer that waited for it: neither stream waits for the
    # other to drain.
    assert set(finished[:20]) == set(streams)


# --- stream gauges: one label per stage, whatever the shards -----------------------------------


async def test_stream_gauges_add_up_every_shard_under_the_stage_label(
    queue: JobQueue, redis: RedisClient
) -> None:
    from aiconv.observability.gauges import refresh_streams
    from aiconv.observability.metrics import DLQ_SIZE, STREAM_LAG, STREAM_LENGTH, STREAM_PENDING

    keys = queue.keys
    # Shard n's replies stream gets n + 2 jobs, of which one is read (pending), the rest unread.
    for shard, stream in enumerate(keys.stage_streams("replies")):
        await queue.ensure_group(stream, keys.group_of(stream))
        await queue.enqueue_many(stream, [{"n": n} for n in range(shard + 2)])
        await read_group(redis, keys.group_of(stream), "c", stream, count=1)
    # One dead letter in shard 0's updates DLQ and one in the last shard's generate DLQ.
    for stream in (keys.updates(0), keys.generate(last_shard(keys))):
        await redis.xadd(keys.dlq(stream), {"job": "{}"})

    await refresh_streams(redis, keys)
    shards = keys.shards
    total = sum(shard + 2 for shard in range(shards))
    assert STREAM_LENGTH.labels("replies")._value.get() == total
    assert STREAM_PENDING.labels("replies")._value.get() == shards
    assert STREAM_LAG.labels("replies")._value.get() == total - shards
    assert DLQ_SIZE._value.get() == 2


async def test_a_hand_over_between_two_shards_is_refused_on_either_kind(queue: JobQueue) -> None:
    # The /v1 stream and a chat stream have different tags on one Redis too: what would fail
    # on a cluster (CROSSSLOT) fails everywhere, before anything is sent.
    source = Job(queue.keys.openai_generate, "1-0", {})
    with pytest.raises(ValueError, match="two hash slots"):
        await queue.hand_over(source, "g", queue.keys.replies(0), {"key": "r"})
    assert await queue.redis.xlen(queue.keys.replies(0)) == 0
