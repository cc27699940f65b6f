"""Capacity-aware pacing against the real Redis: what ml publishes, what the worker reads, and
the turn's two new transitions (a busy notice, a decline). The Bot API double records typing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from aiconv.conversation import texts
from aiconv.conversation.capacity import MlCapacity
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import GENERATE_GROUP, UPDATES_GROUP, Keys, Stage
from aiconv.jobs.messages import ReplyJob, TurnJob
from aiconv.jobs.queue import Job, JobQueue
from aiconv.ml import stats
from aiconv.ml.stats import CapacityPublisher, Throughput
from aiconv.telegram.client import BotClient
from aiconv.testing.botapi import BotApiDouble
from aiconv.worker.capacity import CapacityView, Pacer, PacingPolicy
from aiconv.worker.rate_limit import RateLimits, SendLimiter
from aiconv.worker.turns import TurnConfig, Turns, notice_key
from aiconv.worker.typing_keeper import TypingKeeper, TypingSignal
from tests.support.streams import read_group, stream_entries
from tests.support.waiting import eventually

TOKEN = "123456:TEST-TOKEN"
CHAT = 5151


def chat_stream(keys: Keys, stage: Stage, chat: int = CHAT) -> str:
    """One stage's stream in the chat's shard."""
    return keys.stream(stage, keys.shard_of(chat))


@pytest.fixture
async def double() -> AsyncIterator[BotApiDouble]:
    async with BotApiDouble(token=TOKEN) as d:
        yield d


@pytest.fixture
async def bot(double: BotApiDouble) -> AsyncIterator[BotClient]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        yield BotClient(http, double.url, TOKEN)


async def publish(redis: RedisClient, keys: Keys, name: str, capacity: MlCapacity) -> None:
    """What an ml instance's publisher writes, with a TTL long enough for one test."""
    await redis.hset(keys.ml_capacity(name), mapping=capacity.to_fields())  # type: ignore[arg-type]
    await redis.expire(keys.ml_capacity(name), 600)
    await redis.zadd(keys.ml_instances, {name: 1.0})


async def backlog(redis: RedisClient, keys: Keys, waiting: int, stream: str = "") -> None:
    """`waiting` generation jobs nobody has read: the model's queue (CHAT's shard's stream
    unless `stream` says otherwise)."""
    stream = stream or chat_stream(keys, "generate")
    queue = JobQueue(redis, keys)
    await queue.ensure_group(stream, GENERATE_GROUP)
    for n in range(waiting):
        await redis.xadd(stream, {"job": json.dumps({"kind": "chat", "n": n})})


# --- what ml publishes ------------------------------------------------------------------------


async def test_ml_publishes_its_measured_capacity_and_it_vanishes_when_it_stops(
    redis: RedisClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    throughput = Throughput(slots=4)
    for _ in range(3):
        throughput.started()
    throughput.ended(2.0, 40, finished=True)
    throughput.ended(4.0, 80, finished=True)
    throughput.ended(0.1, 0, finished=False)  # cancelled: says nothing of a slot's speed
    throughput.started()
    publisher = CapacityPublisher(redis, keys, "ml-a", throughput)
    await publisher.publish()
    view = CapacityView(redis, keys)
    snapshot = await view.snapshot()
    [seen] = snapshot.instances
    assert seen.slots == 4 and seen.busy == 1
    assert seen.seconds_per_generation == pytest.approx(3.0)
    assert seen.tokens_per_second > 0 and seen.turns_per_second > 0
    assert await redis.pttl(keys.ml_capacity("ml-a")) > 0  # a dead instance expires
    await publisher.withdraw()
    fresh = CapacityView(redis, keys)
    assert (await fresh.snapshot()).instances == ()


async def test_an_expired_publication_is_not_counted(redis: RedisClient, keys: Keys) -> None:
    await publish(redis, keys, "alive", MlCapacity(slots=2, seconds_per_generation=1.0))
    await redis.zadd(keys.ml_instances, {"dead": 1.0})  # its hash has expired
    [alive] = (await CapacityView(redis, keys).snapshot()).instances
    assert alive.slots == 2


async def test_the_wait_counts_the_unread_generation_jobs(redis: RedisClient, keys: Keys) -> None:
    await publish(redis, keys, "ml", MlCapacity(slots=2, busy=2, seconds_per_generation=10.0))
    await backlog(redis, keys, 9)
    snapshot = await CapacityView(redis, keys).snapshot()
    assert snapshot.waiting == 9
    estimate = snapshot.estimate()
    assert estimate.measured and estimate.seconds == pytest.approx(50.0)  # (9 + 1) * 10 / 2


@pytest.mark.both_redis
async def test_the_wait_counts_the_generation_jobs_of_every_shard_and_of_the_api(
    redis: RedisClient, keys: Keys
) -> None:
    await publish(redis, keys, "ml", MlCapacity(slots=2, busy=2, seconds_per_generation=10.0))
    for shard in keys.all_shards:
        await backlog(redis, keys, 2, keys.generate(shard))
    await backlog(redis, keys, 3, keys.openai_generate)  # /v1 requests share ml's slots
    for chat in (1, 2, 7):  # shards 2, 1 and 0 of the cluster's 3
        await redis.zadd(keys.turns_due(keys.shard_of(chat)), {str(chat): 0.0})
    snapshot = await CapacityView(redis, keys).snapshot()
    assert snapshot.waiting == 2 * keys.shards + 3
    assert snapshot.due == 3


# --- typing -----------------------------------------------------------------------------------


async def test_typing_held_back_is_not_sent_until_the_generation_starts(
    redis: RedisClient, keys: Keys, bot: BotClient, double: BotApiDouble
) -> None:
    keeper = TypingKeeper(redis, keys, bot)
    stop = asyncio.Event()
    running = asyncio.create_task(keeper.run(stop))
    try:
        await keeper.begin_in(CHAT, 600.0)  # a long queue ahead
        await keeper.begin_in(CHAT + 1, 0.0)  # a free slot: typing now
        await double.wait_for(lambda: bool(double.calls_of("sendChatAction", CHAT + 1)), 10)
        # The keeper has run since: the held-back chat got nothing.
        assert double.calls_of("sendChatAction", CHAT) == []
        await TypingSignal(redis, keys).generation_started(CHAT)  # ml picked it up early
        await double.wait_for(lambda: bool(double.calls_of("sendChatAction", CHAT)), 10)
    finally:
        stop.set()
        await running


async def test_a_generation_never_restarts_typing_the_worker_ended(
    redis: RedisClient, keys: Keys, bot: BotClient
) -> None:
    keeper = TypingKeeper(redis, keys, bot)
    await keeper.begin_in(CHAT, 600.0)
    await keeper.end(CHAT)  # /reset
    await TypingSignal(redis, keys).generation_started(CHAT)
    assert await redis.zscore(keys.typing_due(keys.shard_of(CHAT)), str(CHAT)) is None


async def test_chat_actions_yield_the_bot_api_budget_to_messages(
    redis: RedisClient, keys: Keys, bot: BotClient, double: BotApiDouble
) -> None:
    limiter = SendLimiter(redis, keys, RateLimits(global_per_second=1.0))
    keeper = TypingKeeper(redis, keys, bot, limiter)
    for _ in range(5):  # messages have taken the next five seconds of the budget
        await limiter.reserve_global()
    await keeper.send_now(CHAT)
    assert double.calls_of("sendChatAction", CHAT) == []
    await redis.delete(keys.global_rate)  # the budget is free again
    await keeper.send_now(CHAT)
    assert len(double.calls_of("sendChatAction", CHAT)) == 1
    # ... and the action took its slot: the next message waits for it.
    assert await limiter.reserve_global() > 0


# --- the turn's new transitions ---------------------------------------------------------------


async def last_turn(redis: RedisClient, keys: Keys) -> TurnJob:
    """The turn job most recently put on the updates stream."""
    _, fields = (await stream_entries(redis, chat_stream(keys, "updates")))[-1]
    return TurnJob.from_payload(json.loads(fields["job"]))


@dataclass(frozen=True)
class ClaimedTurn:
    """CHAT's turn for its message 1, claimed by a worker (its job read from the updates
    stream) and not yet generated: what the pacer decides about."""

    redis: RedisClient
    keys: Keys
    bot: BotClient
    turns: Turns
    queue: JobQueue
    job: Job

    @property
    def turn(self) -> TurnJob:
        return TurnJob.from_payload(self.job.payload)

    def pacer(self, policy: PacingPolicy) -> Pacer:
        typing = TypingKeeper(self.redis, self.keys, self.bot)
        return Pacer(CapacityView(self.redis, self.keys), typing, self.turns, self.queue, policy)


@pytest.fixture
async def claimed(redis: RedisClient, keys: Keys, bot: BotClient) -> ClaimedTurn:
    turns = Turns(redis, keys, TurnConfig(0.0, 1000.0))
    queue = JobQueue(redis, keys)
    await queue.ensure_group(chat_stream(keys, "updates"), UPDATES_GROUP)
    await turns.note_message(CHAT, 1)
    assert await turns.claim_due() == 1
    [(entry, fields)] = await read_group(redis, UPDATES_GROUP, "w", chat_stream(keys, "updates"))
    return ClaimedTurn(
        redis,
        keys,
        bot,
        turns,
        queue,
        Job(chat_stream(keys, "updates"), entry, json.loads(fields["job"])),
    )


async def test_a_long_wait_is_told_once_per_turn_and_the_turn_goes_on(
    redis: RedisClient, keys: Keys, claimed: ClaimedTurn
) -> None:
    turns, job = claimed.turns, claimed.job
    await publish(redis, keys, "ml", MlCapacity(slots=1, busy=1, seconds_per_generation=30.0))
    await backlog(redis, keys, 4)  # (4 + 1) * 30 s: two and a half minutes
    pacer = claimed.pacer(PacingPolicy(busy_notice_seconds=30.0))
    turn = claimed.turn
    assert await pacer.before_generation(job, turn, "private", CHAT) is True
    assert await pacer.before_generation(job, turn, "private", CHAT) is True  # run again
    [(_, fields)] = await stream_entries(redis, chat_stream(keys, "replies"))
    notice = ReplyJob.from_payload(json.loads(fields["job"]))
    assert notice.key == notice_key(turn) and notice.notice and notice.turn is None
    assert notice.text == texts.busy_notice(3)
    assert await turns.status(CHAT, turn.turn) == "owner"  # the reply still comes
    due = await redis.zscore(keys.typing_due(keys.shard_of(CHAT)), str(CHAT))
    assert due is not None  # typing is scheduled for when generation should start, not now


async def test_beyond_the_limit_a_turn_is_declined_and_answered_by_the_decline(
    redis: RedisClient, keys: Keys, claimed: ClaimedTurn
) -> None:
    turns, job = claimed.turns, claimed.job
    await publish(redis, keys, "ml", MlCapacity(slots=1, busy=1, seconds_per_generation=30.0))
    await backlog(redis, keys, 20)
    policy = PacingPolicy(busy_notice_seconds=30.0, max_queue_wait_seconds=300.0)
    pacer = claimed.pacer(policy)
    turn = claimed.turn
    assert await pacer.before_generation(job, turn, "private", CHAT) is False
    [(_, fields)] = await stream_entries(
        redis, chat_stream(keys, "replies")
    )  # no notice: the decline says it all
    decline = ReplyJob.from_payload(json.loads(fields["job"]))
    assert decline.turn == turn.turn and decline.text == texts.OVERLOADED
    assert await redis.xpending(chat_stream(keys, "updates"), UPDATES_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }  # the turn job was handed on with the decline
    assert await redis.xlen(chat_stream(keys, "generate")) == 20  # nothing queued for the model
    # Delivered, the decline settles the turn: its message is answered, nothing more is due.
    assert await turns.finish(CHAT, turn.turn, "delivered") is False
    assert await turns.claim_due() == 0


async def test_nobody_is_declined_or_told_minutes_on_a_guess(
    redis: RedisClient, keys: Keys, claimed: ClaimedTurn
) -> None:
    job = claimed.job
    await backlog(redis, keys, 100)  # no ml has published anything
    policy = PacingPolicy(busy_notice_seconds=1.0, max_queue_wait_seconds=1.0)
    pacer = claimed.pacer(policy)
    turn = claimed.turn
    assert await pacer.before_generation(job, turn, "private", CHAT) is True
    assert await redis.xlen(chat_stream(keys, "replies")) == 0


async def test_capacity_publication_expires_on_its_own(
    redis: RedisClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats, "CAPACITY_TTL_SECONDS", 0.3)
    await CapacityPublisher(redis, keys, "ml-b", Throughput(slots=1)).publish()
    assert await redis.exists(keys.ml_capacity("ml-b"))

    async def gone() -> bool:
        return not await redis.exists(keys.ml_capacity("ml-b"))

    await eventually(gone, timeout=10)
    assert (await CapacityView(redis, keys).snapshot()).instances == ()


async def test_a_burst_of_turns_within_one_read_queues_each_behind_the_last(
    redis: RedisClient, keys: Keys
) -> None:
    await publish(redis, keys, "ml", MlCapacity(slots=2, busy=0, seconds_per_generation=10.0))
    view = CapacityView(redis, keys)
    waits = []
    for _ in range(4):
        waits.append((await view.estimate()).seconds)
        view.queued()
    assert waits == [0.0, 0.0, 5.0, 10.0]  # two free slots, then (n - 2 + 1) * 10 s / 2


async def test_a_burst_of_messages_types_only_for_those_the_model_will_reach_soon(
    redis: RedisClient, keys: Keys
) -> None:
    await publish(redis, keys, "ml", MlCapacity(slots=2, busy=0, seconds_per_generation=10.0))
    for chat in (1, 2):  # two chats already wait for a turn
        await redis.zadd(keys.turns_due(keys.shard_of(chat)), {str(chat): 0.0})
    view = CapacityView(redis, keys)
    waits = [(await view.estimate_for_new_message()).seconds for _ in range(3)]
    assert waits == [5.0, 10.0, 15.0]  # behind the two due chats, then behind each other


def test_an_idle_instance_still_knows_how_fast_a_slot_is() -> None:
    throughput = Throughput(slots=2, window=60.0)
    throughput.started()
    throughput.ended(3.0, 30, finished=True)
    assert throughput.capacity().seconds_per_generation == pytest.approx(3.0)
    throughput.window = 0.0  # the window has moved past every generation
    idle = throughput.capacity()
    assert idle.seconds_per_generation == pytest.approx(3.0)  # speed is kept
    assert idle.turns_per_second == 0.0  # the measured load is not


def test_the_warm_up_measurement_is_published_until_real_generations_replace_it() -> None:
    # Without it, a burst arriving right after a start was estimated on the worker's guess, and
    # on a guess nobody is told to wait: a 1000-user soak sent no notice at all.
    throughput = Throughput(slots=2, window=60.0)
    assert throughput.capacity().seconds_per_generation is None  # nothing measured yet
    throughput.calibrate(4.0)
    assert throughput.capacity().seconds_per_generation == pytest.approx(4.0)
    throughput.started()
    throughput.ended(1.0, 8, finished=True)
    assert throughput.capacity().seconds_per_generation == pytest.approx(1.0)


async def test_a_user_who_writes_again_while_waiting_is_not_told_twice(
    redis: RedisClient, keys: Keys, claimed: ClaimedTurn
) -> None:
    turns, queue = claimed.turns, claimed.queue
    first = claimed.turn
    assert await turns.notify_busy(queue, first, "private", "wait") is True
    await turns.note_message(CHAT, 2)  # supersedes the waiting turn
    assert await turns.finish(CHAT, first.turn, "superseded") is True
    assert await turns.claim_due() == 1
    second = await last_turn(redis, keys)
    assert second.turn != first.turn
    assert await turns.notify_busy(queue, second, "private", "wait") is False
    # Once answered, a new stretch of messages may be told again.
    assert await turns.finish(CHAT, second.turn, "delivered") is False
    await turns.note_message(CHAT, 3)
    assert await turns.claim_due() == 1
    third = await last_turn(redis, keys)
    assert await turns.notify_busy(queue, third, "private", "wait") is True
