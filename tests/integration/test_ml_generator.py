"""The ml stage on real Redis and the bundled model: replies, cancellation, failures, order.

On both kinds of Redis (the model is loaded once per module, so the cluster run costs only the
generations): on a cluster a chat's generate and replies streams lie in its shard's slot, the
reply must be handed over there, and the ml mode reads every shard's stream and the /v1 stream
with one shared set of slots."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from aiconv.config import Settings, default_model_path
from aiconv.conversation import texts
from aiconv.conversation.history import Turn
from aiconv.conversation.prompt import build_messages
from aiconv.jobs.client import RedisClient
from aiconv.jobs.consumer import Consumer
from aiconv.jobs.keys import Keys
from aiconv.jobs.messages import GenerateJob
from aiconv.jobs.queue import Job, JobQueue
from aiconv.ml.cancel import CancelWatcher
from aiconv.ml.engine import Engine, EngineConfig
from aiconv.ml.generator import GenerateHandler, lane_of
from aiconv.modes.ml import run_ml
from tests.support.streams import stream_entries
from tests.support.waiting import eventually

pytestmark = pytest.mark.both_redis

PERSONA = "You are a helpful assistant."


@pytest.fixture(scope="module")
def engine_options() -> Mapping[str, Any]:
    """The shared `engine` fixture (tests/support/fixtures.py), configured for this module."""
    return {"max_tokens": 300, "parallel": 2, "cache_mb": 32}


@pytest.fixture
async def queue(redis: RedisClient, keys: Keys) -> JobQueue:
    return JobQueue(redis, keys)


@pytest.fixture
async def watcher(redis: RedisClient) -> AsyncIterator[CancelWatcher]:
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
    stream = queue.keys.stream_for("generate", chat_id)
    return Job(stream=stream, id=f"0-{message_id}", payload=generate.to_payload())


async def own_turn(redis: RedisClient, keys: Keys, chat_id: int, message_id: int) -> str:
    """What a claim does: the turn owns its chat, and is its chat's live turn."""
    turn = f"{chat_id}:{message_id}:1"
    await redis.hset(keys.chat_state(chat_id), "turn", turn)
    await redis.set(keys.chat_live(chat_id), turn)
    return turn


async def replies(redis: RedisClient, keys: Keys) -> list[dict[str, Any]]:
    """Every shard's replies; each must be on its chat's shard (where delivery takes it)."""
    found = []
    for shard in keys.all_shards:
        for _id, fields in await stream_entries(redis, keys.replies(shard)):
            reply = json.loads(fields["job"])
            assert keys.shard_of(reply["chat_id"]) == shard, reply
            found.append(reply)
    return found


async def reply_count(redis: RedisClient, keys: Keys) -> int:
    return sum([await redis.xlen(stream) for stream in keys.stage_streams("replies")])


async def test_a_generation_job_becomes_a_reply(
    engine: Engine, queue: JobQueue, redis: RedisClient, watcher: CancelWatcher
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
    engine: Engine, queue: JobQueue, redis: RedisClient, watcher: CancelWatcher, persona: str | None
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
    engine: Engine, queue: JobQueue, redis: RedisClient, watcher: CancelWatcher, live: str
) -> None:
    await own_turn(redis, queue.keys, 12, 1)
    await redis.set(queue.keys.chat_live(12), live)
    handler = GenerateHandler(engine, queue, queue.keys, PERSONA, watcher)
    await handler(job(queue, 12, 1, "Tell me a story."))
    [reply] = await replies(redis, queue.keys)
    assert reply["cancelled"] is True
    assert reply["text"] == ""


async def test_a_newer_message_cancels_a_running_generation(
    engine: Engine, queue: JobQueue, redis: RedisClient, watcher: CancelWatcher
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
    queue: JobQueue, redis: RedisClient, watcher: CancelWatcher
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
    engine: Engine,
    queue: JobQueue,
    redis: RedisClient,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each chat has one turn in flight (worker/turns.py); chats share the engine's slots, and
    so do /v1 requests: one consumer per shard stream and one for /v1, one set of slots."""
    started: list[Consumer] = []
    run_consumer = Consumer.run

    async def recorded(self: Consumer, stop: asyncio.Event) -> None:
        started.append(self)
        await run_consumer(self, stop)

    monkeypatch.setattr(Consumer, "run", recorded)
    keys = queue.keys
    settings = Settings(redis_key_prefix=redis_prefix, persona=PERSONA, max_tokens=8)
    chats = [21, 22, 23, 24, 25]
    assert {keys.shard_of(chat_id) for chat_id in chats} == set(keys.all_shards)
    for chat_id in chats:
        await own_turn(redis, keys, chat_id, 1)
        payload = job(queue, chat_id, 1, "Message 1: hi!").payload
        await queue.enqueue(keys.stream_for("generate", chat_id), payload, payload["key"])
    api: dict[str, Any] = {
        "kind": "openai",
        "key": "oai:a1",
        "id": "a1",
        "reader": "r1",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}],
    }
    await queue.enqueue(keys.openai_generate, api, api["key"])
    answer = keys.api_response("r1", "a1")
    stop = asyncio.Event()
    running = asyncio.create_task(run_ml(engine, queue, settings, stop))
    try:
        await eventually(lambda: _at_least(reply_count(redis, keys), len(chats)), timeout=120)
        await eventually(lambda: _ends_with(redis, answer, "done"), timeout=60)
    finally:
        stop.set()
        await running
    got = await replies(redis, keys)
    assert sorted(r["chat_id"] for r in got) == chats
    assert all(r["text"].strip() for r in got)
    streams = sorted(consumer.stream for consumer in started)
    assert streams == sorted([*keys.stage_streams("generate"), keys.openai_generate])
    [_shared] = {id(consumer.slots) for consumer in started}  # one Slots for them all
    assert started[0].slots.size == engine.context.n_seq


async def _at_least(count: Any, wanted: int) -> bool:
    return int(await count) >= wanted


async def _ends_with(redis: RedisClient, stream: str, kind: str) -> bool:
    entries = await stream_entries(redis, stream)
    return bool(entries) and json.loads(entries[-1][1]["event"])["type"] == kind


async def test_a_dead_decode_loop_answers_with_an_apology_and_stops_the_ml_mode(
    queue: JobQueue, redis: RedisClient, redis_prefix: str
) -> None:
    engine = Engine.open(EngineConfig(model_path=default_model_path(), n_ctx=256, n_threads=1))

    def broken(batch: object) -> None:
        raise RuntimeError("a bug in the decode loop")

    engine.context.decode = broken  # type: ignore[method-assign]
    await own_turn(redis, queue.keys, 31, 1)
    payload = job(queue, 31, 1, "Hello?").payload
    await queue.enqueue(queue.keys.stream_for("generate", 31), payload, payload["key"])
    settings = Settings(redis_key_prefix=redis_prefix, persona=PERSONA)
    try:
        with pytest.raises(RuntimeError, match="decode loop failed"):
            await run_ml(engine, queue, settings, asyncio.Event())
    finally:
        engine.close()
    [reply] = await replies(redis, queue.keys)
    assert reply["text"] == texts.GENERATION_FAILED
