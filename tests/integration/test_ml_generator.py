"""The ml stage on real Redis and the bundled model: replies, cancellation, failures, order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from redis.asyncio import Redis

from aiconv.config import Settings, default_model_path
from aiconv.conversation import texts
from aiconv.conversation.history import Turn
from aiconv.conversation.prompt import build_messages
from aiconv.jobs.keys import Keys
from aiconv.jobs.messages import GenerateJob
from aiconv.jobs.queue import Job, JobQueue
from aiconv.ml.cancel import CancelWatcher
from aiconv.ml.engine import Engine, EngineConfig
from aiconv.ml.generator import GenerateHandler, lane_of
from aiconv.modes.ml import run_ml
from tests.support.streams import stream_entries
from tests.support.waiting import eventually

PERSONA = "You are a helpful assistant."


@pytest.fixture(scope="module")
def engine_options() -> Mapping[str, Any]:
    """The shared `engine` fixture (tests/support/fixtures.py), configured for this module."""
    return {"max_tokens": 300, "parallel": 2, "cache_mb": 32}


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


def job(
    queue: JobQueue, chat_id: int, message_id: int, text: str, persona: str | None = None
) -> Job:
    generate = GenerateJob(
        turn=f"{chat_id}:{message_id}:1",
        chat_id=chat_id,
        chat_type="private",
        user_id=chat_id,
        reply_to_message_id=message_id,
        started_at=0.0,
        turns=[("user", text)],
        persona=persona,
    )
    return Job(stream=queue.keys.generate, id=f"0-{message_id}", payload=generate.to_payload())


async def own_turn(redis: Redis, keys: Keys, chat_id: int, message_id: int) -> str:
    """What a claim does: the turn owns its chat, and is its chat's live turn."""
    turn = f"{chat_id}:{message_id}:1"
    await redis.hset(keys.chat_state(chat_id), "turn", turn)
    await redis.set(keys.chat_live(chat_id), turn)
    return turn


async def replies(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    entries = await stream_entries(redis, keys.replies)
    return [json.loads(fields["job"]) for _id, fields in entries]


async def test_a_generation_job_becomes_a_reply(
    engine: Engine, queue: JobQueue, redis: Redis, watcher: CancelWatcher
) -> None:
    handler = GenerateHandler(engine, queue, queue.keys, PERSONA, watcher)
    await own_turn(redis, queue.keys, 11, 1)
    await handler(job(queue, 11, 1, "Say hello in three words."))
    [reply] = await replies(redis, queue.keys)
    assert reply["key"] == "reply:11:1:1"
    assert reply["turn"] == "11:1:1"
    assert reply["text"].strip()
    assert reply["markdown"] is True  # the model's text: delivery renders its Markdown
    assert not reply.get("cancelled")
    assert reply["stats"]["completion_tokens"] > 0
    assert reply["stats"]["prompt_tokens"] > 0


@pytest.mark.parametrize("persona", [None, "You are a pirate. Answer like one, always."])
async def test_the_chat_s_persona_in_the_job_is_the_system_prompt(
    engine: Engine, queue: JobQueue, redis: Redis, watcher: CancelWatcher, persona: str | None
) -> None:
    """/persona: the job's persona replaces the PERSONA setting; None keeps the setting."""
    handler = GenerateHandler(engine, queue, queue.keys, PERSONA, watcher)
    await own_turn(redis, queue.keys, 16, 1)
    await handler(job(queue, 16, 1, "Hello!", persona=persona))
    [reply] = await replies(redis, queue.keys)
    system = PERSONA if persona is None else persona
    expected = engine.chat_tokens(build_messages(system, [Turn("user", "Hello!")]))
    assert reply["stats"]["prompt_tokens"] == len(expected)


@pytest.mark.parametrize("live", ["superseded", "reset"])
async def test_a_superseded_job_is_cancelled_before_it_starts(
    engine: Engine, queue: JobQueue, redis: Redis, watcher: CancelWatcher, live: str
) -> None:
    await own_turn(redis, queue.keys, 12, 1)
    await redis.set(queue.keys.chat_live(12), live)
    handler = GenerateHandler(engine, queue, queue.keys, PERSONA, watcher)
    await handler(job(queue, 12, 1, "Tell me a story."))
    [reply] = await replies(redis, queue.keys)
    assert reply["cancelled"] is True
    assert reply["text"] == ""


async def test_a_newer_message_cancels_a_running_generation(
    engine: Engine, queue: JobQueue, redis: Redis, watcher: CancelWatcher
) -> None:
    handler = GenerateHandler(engine, queue, queue.keys, PERSONA, watcher)
    await own_turn(redis, queue.keys, 13, 1)  # this job is the live turn: it runs
    running = asyncio.create_task(
        handler(job(queue, 13, 1, "Write a very long story about a dragon and a knight."))
    )
    await eventually(lambda: engine.active > 0, timeout=30)
    await redis.set(queue.keys.chat_live(13), "superseded")  # the user wrote again
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
    await own_turn(redis, queue.keys, 14, 1)
    await handler(job(queue, 14, 1, "Hello?"))
    [reply] = await replies(redis, queue.keys)
    assert reply["text"] == texts.GENERATION_FAILED
    assert not reply.get("cancelled")
    assert reply["markdown"] is False  # a fixed apology, sent as written


def test_lanes_keep_a_chat_in_order_and_let_api_requests_run_freely(queue: JobQueue) -> None:
    assert lane_of(job(queue, 15, 1, "a")) == lane_of(job(queue, 15, 2, "b"))
    assert lane_of(job(queue, 15, 1, "a")) != lane_of(job(queue, 16, 1, "a"))
    api = Job(stream="s", id="0-1", payload={"kind": "openai", "key": "oai:x", "id": "x"})
    assert lane_of(api) is None


async def test_ml_mode_answers_every_chat_with_parallel_slots(
    engine: Engine, queue: JobQueue, redis: Redis, redis_prefix: str
) -> None:
    """Each chat has one turn in flight (worker/turns.py); chats share the engine's slots."""
    settings = Settings(redis_key_prefix=redis_prefix, persona=PERSONA, max_tokens=8)
    chats = [21, 22, 23, 24, 25]
    for chat_id in chats:
        await own_turn(redis, queue.keys, chat_id, 1)
        payload = job(queue, chat_id, 1, "Message 1: hi!").payload
        await queue.enqueue(queue.keys.generate, payload, payload["key"])
    stop = asyncio.Event()
    running = asyncio.create_task(run_ml(engine, queue, settings, stop))
    try:
        await eventually(lambda: _at_least(redis.xlen(queue.keys.replies), len(chats)), timeout=120)
    finally:
        stop.set()
        await running
    got = await replies(redis, queue.keys)
    assert sorted(r["chat_id"] for r in got) == chats
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
    await own_turn(redis, queue.keys, 31, 1)
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
