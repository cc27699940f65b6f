"""The ml stage on real Redis and the bundled model: replies, cancellation, failures, order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from aiconv.config import Settings, default_model_path
from aiconv.conversation import texts
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import Job, JobQueue
from aiconv.ml.cancel import CancelWatcher, latest_key
from aiconv.ml.engine import Engine, EngineConfig
from aiconv.ml.generator import GenerateHandler, lane_of
from aiconv.ml.main import run_ml
from tests.e2e.harness import eventually

PERSONA = "You are a helpful assistant."


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    config = EngineConfig(
        model_path=default_model_path(),
        n_ctx=1024,
        n_threads=2,
        max_tokens=300,
        temperature=0.0,
        parallel=2,
        cache_mb=32,
    )
    engine = Engine.open(config)
    yield engine
    engine.close()


@pytest.fixture
async def queue(redis: Redis, redis_prefix: str) -> JobQueue:
    return JobQueue(redis, Keys(redis_prefix))


@pytest.fixture
async def watcher(redis: Redis) -> AsyncIterator[CancelWatcher]:
    watcher = CancelWatcher(redis, interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    yield watcher
    stop.set()
    await task


def job(queue: JobQueue, chat_id: int, message_id: int, text: str) -> Job:
    payload = {
        "key": f"gen:{chat_id}:{message_id}",
        "chat_id": chat_id,
        "chat_type": "private",
        "user_id": chat_id,
        "reply_to_message_id": message_id,
        "update_id": message_id,
        "started_at": 0.0,
        "turns": [["user", text]],
    }
    return Job(stream=queue.keys.generate, id=f"0-{message_id}", payload=payload)


async def replies(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    entries = await redis.xrange(keys.replies)
    return [json.loads(fields["job"]) for _id, fields in entries]


async def test_a_generation_job_becomes_a_reply(
    engine: Engine, queue: JobQueue, redis: Redis, watcher: CancelWatcher
) -> None:
    handler = GenerateHandler(engine, queue, queue.keys, PERSONA, watcher)
    await handler(job(queue, 11, 1, "Say hello in three words."))
    [reply] = await replies(redis, queue.keys)
    assert reply["key"] == "reply:11:1"
    assert reply["text"].strip()
    assert not reply.get("cancelled")
    assert reply["stats"]["completion_tokens"] > 0
    assert reply["stats"]["prompt_tokens"] > 0


@pytest.mark.parametrize("latest", ["gen:12:2", "reset:12:99"])
async def test_a_superseded_job_is_cancelled_before_it_starts(
    engine: Engine, queue: JobQueue, redis: Redis, watcher: CancelWatcher, latest: str
) -> None:
    await redis.set(latest_key(queue.keys, 12), latest)
    handler = GenerateHandler(engine, queue, queue.keys, PERSONA, watcher)
    await handler(job(queue, 12, 1, "Tell me a story."))
    [reply] = await replies(redis, queue.keys)
    assert reply["cancelled"] is True
    assert reply["text"] == ""


async def test_a_newer_message_cancels_a_running_generation(
    engine: Engine, queue: JobQueue, redis: Redis, watcher: CancelWatcher
) -> None:
    handler = GenerateHandler(engine, queue, queue.keys, PERSONA, watcher)
    await redis.set(latest_key(queue.keys, 13), "gen:13:1")  # this job is the latest: it runs
    running = asyncio.create_task(
        handler(job(queue, 13, 1, "Write a very long story about a dragon and a knight."))
    )
    await eventually(lambda: engine.active > 0, timeout=30)
    await redis.set(latest_key(queue.keys, 13), "gen:13:2")  # the user wrote again
    await running
    [reply] = await replies(redis, queue.keys)
    assert reply["cancelled"] is True
    assert reply["text"] == ""
    assert reply["stats"]["finish_reason"] == "cancelled"
    assert reply["stats"]["completion_tokens"] < engine.config.max_tokens


async def test_a_failed_generation_answers_with_an_apology(
    queue: JobQueue, redis: Redis, watcher: CancelWatcher
) -> None:
    broken = Engine.open(EngineConfig(model_path=default_model_path(), n_ctx=256, n_threads=1))
    broken.close()  # every submit now fails
    handler = GenerateHandler(broken, queue, queue.keys, PERSONA, watcher)
    await handler(job(queue, 14, 1, "Hello?"))
    [reply] = await replies(redis, queue.keys)
    assert reply["text"] == texts.GENERATION_FAILED
    assert not reply.get("cancelled")


def test_lanes_keep_a_chat_in_order_and_let_api_requests_run_freely(queue: JobQueue) -> None:
    assert lane_of(job(queue, 15, 1, "a")) == lane_of(job(queue, 15, 2, "b"))
    assert lane_of(job(queue, 15, 1, "a")) != lane_of(job(queue, 16, 1, "a"))
    api = Job(stream="s", id="0-1", payload={"kind": "openai", "key": "oai:x", "id": "x"})
    assert lane_of(api) is None


async def test_ml_mode_answers_each_chat_in_order_with_parallel_slots(
    engine: Engine, queue: JobQueue, redis: Redis, redis_prefix: str
) -> None:
    settings = Settings(redis_key_prefix=redis_prefix, persona=PERSONA, max_tokens=8)
    chats = {21: 3, 22: 3, 23: 2}
    for message_id in range(1, 4):
        for chat_id, count in chats.items():
            if message_id <= count:
                payload = job(queue, chat_id, message_id, f"Message {message_id}: hi!").payload
                await queue.enqueue(queue.keys.generate, payload, payload["key"])
    stop = asyncio.Event()
    running = asyncio.create_task(run_ml(engine, queue, settings, stop))
    try:
        total = sum(chats.values())
        await eventually(lambda: redis.xlen(queue.keys.replies), timeout=120)
        await eventually(lambda: _at_least(redis.xlen(queue.keys.replies), total), timeout=120)
    finally:
        stop.set()
        await running
    got = await replies(redis, queue.keys)
    for chat_id, count in chats.items():
        order = [r["reply_to_message_id"] for r in got if r["chat_id"] == chat_id]
        assert order == list(range(1, count + 1))
    assert all(r["text"].strip() for r in got)


async def _at_least(count: Any, wanted: int) -> bool:
    return int(await count) >= wanted


async def test_a_dead_decode_loop_answers_with_an_apology_and_stops_the_ml_mode(
    queue: JobQueue, redis: Redis, redis_prefix: str
) -> None:
    engine = Engine.open(EngineConfig(model_path=default_model_path(), n_ctx=256, n_threads=1))

    def broken(batch: object) -> None:
        raise RuntimeError("a bug in the decode loop")

    engine.context.decode = broken  # type: ignore[method-assign]
    payload = job(queue, 31, 1, "Hello?").payload
    await queue.enqueue(queue.keys.generate, payload, payload["key"])
    settings = Settings(redis_key_prefix=redis_prefix, persona=PERSONA)
    try:
        with pytest.raises(RuntimeError, match="decode loop failed"):
            await run_ml(engine, queue, settings, asyncio.Event())
    finally:
        engine.close()
    [reply] = await replies(redis, queue.keys)
    assert reply["text"] == texts.GENERATION_FAILED
