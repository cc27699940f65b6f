"""Streamed drafts on a real Redis and the Bot API double over loopback HTTP: ml's progress
(`DraftProgress`), the worker's `DraftSender`, and the double's sendMessageDraft and limits.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.observability.metrics import DRAFTS
from aiconv.telegram.client import BadRequest, BotClient, RetryAfter
from aiconv.testing.botapi import ApiCall, BotApiDouble, TelegramLimits
from aiconv.worker.drafts import DraftProgress, DraftSender, draft_id
from aiconv.worker.rate_limit import RateLimits, SendLimiter
from tests.support.redis_targets import RedisTarget
from tests.support.waiting import eventually

TOKEN = "123456:TEST-TOKEN"
INTERVAL = 1.0


@pytest.fixture
def double_options() -> Mapping[str, Any]:
    return {"token": TOKEN, "limits": TelegramLimits()}


@pytest.fixture
def bot(double: BotApiDouble, http: httpx.AsyncClient) -> BotClient:
    return BotClient(http, double.url, TOKEN)


def sender(redis: RedisClient, keys: Keys, bot: BotClient) -> DraftSender:
    limiter = SendLimiter(redis, keys, RateLimits())
    return DraftSender(redis, keys, bot, limiter, INTERVAL)


async def running(senders: list[DraftSender], stop: asyncio.Event) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(s.run(stop)) for s in senders]


# --- the double -----------------------------------------------------------------------------


async def test_the_double_serves_drafts_as_telegram_documents_them(
    double: BotApiDouble, bot: BotClient
) -> None:
    await bot.send_message_draft(
        42, 7, "Hello", entities=[{"type": "bold", "offset": 0, "length": 5}]
    )
    [draft] = double.drafts_of(42)
    assert draft.params["draft_id"] == 7 and draft.params["text"] == "Hello"
    refused = [
        bot.send_message_draft(-100, 7, "a group"),  # private chats only
        bot.send_message_draft(43, 0, "no id"),
        bot.send_message_draft(44, 7, "  "),
        bot.send_message_draft(45, 7, "x" * 4097),
        bot.send_message_draft(46, 7, "ab", entities=[{"type": "bold", "offset": 1, "length": 5}]),
    ]
    for call in refused:
        with pytest.raises(BadRequest):
            await call
    assert not [c for c in double.calls_of("sendMessageDraft") if c.status == 200][1:]


async def test_the_double_enforces_a_chats_limit_with_retry_after(
    double: BotApiDouble, bot: BotClient
) -> None:
    # A burst within the tolerance passes; a steady second a second does not.
    await bot.send_message(50, "one")
    with pytest.raises(RetryAfter) as refused:
        for _ in range(3):
            await bot.send_message_draft(50, 1, "too fast")
    assert refused.value.retry_after >= 1
    assert double.rate_limited()
    await bot.send_message(51, "another chat is not held back")


async def test_the_double_enforces_the_bot_wide_limit(double: BotApiDouble, bot: BotClient) -> None:
    # Scaled down to one call a second, so that the box's speed cannot matter.
    double.limits = TelegramLimits(global_interval=1.0, global_tolerance=0.0)
    await bot.send_message(1000, "hi")
    for call in (bot.send_message(1001, "hi"), bot.send_chat_action(1002)):
        with pytest.raises(RetryAfter):
            await call
    assert len(double.rate_limited()) == 2


# --- progress and the sender ----------------------------------------------------------------


async def test_a_chats_progress_is_shown_paced_and_nothing_after_it_closes(
    redis: RedisClient, keys: Keys, double: BotApiDouble, bot: BotClient
) -> None:
    progress = DraftProgress(redis, keys, INTERVAL)
    senders = [sender(redis, keys, bot), sender(redis, keys, bot)]  # two workers
    stop = asyncio.Event()
    tasks = await running(senders, stop)
    try:
        # ml writes more often than the interval: the chat still sees one draft a second.
        text = ""
        began = time.monotonic()
        for word in itertools.islice(itertools.cycle(["alpha", "beta", "gamma"]), 40):
            text += word + " "
            await progress.publish(60, "t-60", text)
            await asyncio.sleep(0.1)  # the generation's pace (the thing simulated)
        await progress.close(60, "t-60")
        closed = time.monotonic()
        await progress.publish(60, "t-60", text + "late")  # a redelivered job: refused
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    shown = len(double.drafts_of(60))
    for drafts_sender in senders:  # more rounds after the close: nothing more to show
        await drafts_sender.send_due()
    drafts = double.drafts_of(60)
    assert len(drafts) == shown >= 3, [d.at - began for d in drafts]
    assert all(d.params["draft_id"] == draft_id("t-60") for d in drafts)
    assert all(d.at <= closed for d in drafts)
    gaps = [b.at - a.at for a, b in itertools.pairwise(drafts)]
    assert all(gap >= INTERVAL * 0.9 for gap in gaps), gaps
    assert "late" not in drafts[-1].params["text"]
    assert not double.rate_limited()
    assert await redis.zcard(keys.drafts_due(keys.shard_of(60))) == 0


async def test_closing_waits_for_a_draft_in_flight(
    redis: RedisClient, keys: Keys, double: BotApiDouble, bot: BotClient
) -> None:
    progress = DraftProgress(redis, keys, INTERVAL)
    drafts = sender(redis, keys, bot)
    double.delay_next("sendMessageDraft", 1.5)  # Telegram answers this draft slowly
    await progress.publish(61, "t-61", "Once upon a time")
    in_flight = asyncio.create_task(drafts.send_due())
    await eventually(lambda: drafts_claimed(redis, keys, 61), timeout=5)
    began = time.monotonic()
    await progress.close(61, "t-61")
    # The reply would be queued only now: the draft's call has returned (the double records a
    # call when it answers), which took most of its delay.
    assert len(double.drafts_of(61)) == 1
    assert time.monotonic() - began >= 1.0
    await in_flight


async def drafts_claimed(redis: RedisClient, keys: Keys, chat_id: int) -> bool:
    return bool(await redis.hexists(keys.chat_draft(chat_id), "busy"))


async def test_a_hundred_chats_draft_and_reply_without_a_single_429(
    redis: RedisClient,
    redis_target: RedisTarget,
    keys: Keys,
    double: BotApiDouble,
    bot: BotClient,
) -> None:
    """100 private chats generate at once for a few seconds, shown by two workers' senders, then
    get their replies through the same limiter as delivery: Telegram's documented limits (the
    double enforcing them) are never exceeded, every chat sees a draft, none after its reply."""
    chats = range(2000, 2100)
    ml_redis = redis_target.client()  # ml is another process, with clients of its own
    progress = DraftProgress(ml_redis, keys, INTERVAL)
    limiter = SendLimiter(redis, keys, RateLimits())
    stop = asyncio.Event()
    tasks = await running([sender(redis, keys, bot), sender(redis, keys, bot)], stop)
    replied: dict[int, float] = {}

    async def chat(chat_id: int) -> None:
        turn, text = f"t-{chat_id}", ""
        throttle = progress.throttle()
        for n in range(60):  # ~6 s of generation, text every 0.1 s
            text += f"word{n} "
            now = time.monotonic()
            if throttle.due(now):
                throttle.written(now)
                await progress.publish(chat_id, turn, text)
            await asyncio.sleep(0.1)  # the generation's pace (the thing simulated)
        await progress.close(chat_id, turn)
        await limiter.wait_for_slot(chat_id, "private")  # as delivery does
        await bot.send_message(chat_id, text)
        replied[chat_id] = time.monotonic()

    try:
        await asyncio.wait_for(asyncio.gather(*(chat(c) for c in chats)), timeout=60)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await ml_redis.aclose()
    assert not double.rate_limited(), double.rate_limited()[:3]
    assert len(replied) == 100
    for chat_id in chats:
        drafts = double.drafts_of(chat_id)
        [reply] = double.calls_of("sendMessage", chat_id)
        assert drafts, (chat_id, str(sorted(len(double.drafts_of(c)) for c in chats)))  # fair
        assert all(d.at < reply.at for d in drafts), chat_id


def drafts_in(double: BotApiDouble, chat_id: int, thread: int) -> list[ApiCall]:
    """The drafts Telegram accepted for one topic of a private chat."""
    return [d for d in double.drafts_of(chat_id) if d.params.get("message_thread_id") == thread]


def drafts_sent() -> float:
    return float(DRAFTS.labels("sent")._value.get())


async def test_a_private_chats_topics_each_draft_in_their_own_topic(
    redis: RedisClient, keys: Keys, double: BotApiDouble, bot: BotClient
) -> None:
    """A private chat with topics: each topic's reply is drafted in its topic, under its own
    draft id; the two drafts neither replace nor close each other, and every draft Telegram
    accepted is counted (aiconv_drafts_total{outcome="sent"})."""
    chat, blue, red = 70, 3, 5
    turns = {blue: f"{chat}/{blue}:11:1", red: f"{chat}/{red}:12:1"}
    progress = DraftProgress(redis, keys, INTERVAL)
    counted = drafts_sent()
    stop = asyncio.Event()
    tasks = await running([sender(redis, keys, bot), sender(redis, keys, bot)], stop)
    try:
        await progress.publish(chat, turns[blue], "The blue team")
        await progress.publish(chat, turns[red], "The red team")
        await double.wait_for(
            lambda: bool(drafts_in(double, chat, blue) and drafts_in(double, chat, red))
        )
        # Each topic's hash holds its own turn: the other topic's draft replaced nothing.
        for thread, turn in turns.items():
            assert await redis.hget(keys.chat_draft(chat, thread), "turn") == turn
        assert not await redis.exists(keys.chat_draft(chat))  # nothing outside topics
        # Blue's reply is done; red's goes on, and is still shown.
        await progress.close(chat, turns[blue])
        await progress.publish(chat, turns[blue], "The blue team, late")  # refused: closed
        await progress.publish(chat, turns[red], "The red team meets at five")
        await double.wait_for(
            lambda: any(
                d.params["text"] == "The red team meets at five"
                for d in drafts_in(double, chat, red)
            )
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    for thread, turn in turns.items():
        assert all(d.params["draft_id"] == draft_id(turn) for d in drafts_in(double, chat, thread))
    assert [d.params["text"] for d in drafts_in(double, chat, blue)] == ["The blue team"]
    assert len(drafts_in(double, chat, red)) + len(drafts_in(double, chat, blue)) == len(
        double.drafts_of(chat)
    )  # every draft named its topic
    assert not double.rate_limited()  # the topics share the chat's pace
    assert drafts_sent() - counted == len(double.drafts_of(chat))
