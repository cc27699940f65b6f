"""The typing keeper shared by workers whose clocks disagree: real Redis, the Bot API double over
loopback HTTP. Process clocks are skewed per task as in test_rate_limit; the keepers must keep
one action per chat per interval, sent by one of them, and stop at the deadline, all on Redis's
clock. On the cluster, the chats lie in three shards: one keeper tick serves every shard.
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
from aiconv.telegram.client import BotClient
from aiconv.testing.botapi import BotApiDouble
from aiconv.worker import typing_keeper
from aiconv.worker.typing_keeper import TypingKeeper
from tests.support.clocks import on_clock, process_clocks
from tests.support.waiting import eventually

INTERVAL = 1.0  # shortened from 4 s so that a test sees several intervals
TOKEN = "123456:TEST-TOKEN"
CHATS = (1, 2, 7)  # shards 2, 1 and 0 of the cluster's 3

pytestmark = pytest.mark.both_redis


@pytest.fixture
def double_options() -> Mapping[str, Any]:
    """The shared `double` fixture (tests/support/fixtures.py) with this module's token."""
    return {"token": TOKEN}


@pytest.fixture(autouse=True)
def short_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(typing_keeper, "INTERVAL_SECONDS", INTERVAL)


def action_times(double: BotApiDouble, chat_id: int) -> list[float]:
    return [call.at for call in double.calls_of("sendChatAction", chat_id) if call.status == 200]


async def run_keepers(
    redis: RedisClient, keys: Keys, bot: BotClient, skews: list[float], stop: asyncio.Event
) -> tuple[list[TypingKeeper], list[asyncio.Task[None]]]:
    keepers = [TypingKeeper(redis, keys, bot) for _ in skews]
    tasks = [on_clock(skew, keeper.run(stop)) for keeper, skew in zip(keepers, skews, strict=True)]
    return keepers, tasks


async def test_one_action_per_chat_per_interval_whatever_the_workers_clocks(
    redis: RedisClient, keys: Keys, double: BotApiDouble, http: httpx.AsyncClient
) -> None:
    assert len({keys.shard_of(chat) for chat in CHATS}) == keys.shards
    bot = BotClient(http, double.url, TOKEN)
    skews = [0.0, 30.0, -30.0]
    stop = asyncio.Event()
    with process_clocks():
        keepers, tasks = await run_keepers(redis, keys, bot, skews, stop)
        try:
            # The first chat begun by the honest worker, the second by the one ahead, the third
            # by the one behind.
            for chat_id, keeper, skew in zip(CHATS, keepers, skews, strict=True):
                await on_clock(skew, keeper.begin(chat_id))
            await double.wait_for(
                lambda: all(len(action_times(double, chat)) >= 4 for chat in CHATS),
                timeout=30,
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    for chat_id in CHATS:
        times = action_times(double, chat_id)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # Never two workers for one due action (a gap near 0), never a chat forgotten.
        assert all(INTERVAL * 0.75 <= gap <= INTERVAL + 2.0 for gap in gaps), (chat_id, gaps)


@pytest.mark.parametrize("begun_on", [0.0, 30.0, -30.0])
async def test_the_deadline_is_kept_whatever_the_workers_clocks(
    redis: RedisClient,
    keys: Keys,
    double: BotApiDouble,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    begun_on: float,
) -> None:
    give_up = 3.0
    monkeypatch.setattr(typing_keeper, "GIVE_UP_SECONDS", give_up)
    bot = BotClient(http, double.url, TOKEN)
    # The chat is begun on one clock and kept by workers on the two others.
    skews = [skew for skew in (0.0, 30.0, -30.0) if skew != begun_on]
    stop = asyncio.Event()

    async def forgotten() -> bool:
        shard = keys.shard_of(5)
        due = await redis.zscore(keys.typing_due(shard), "5")
        return due is None and not await redis.hexists(keys.typing_deadline(shard), "5")

    with process_clocks():
        _, tasks = await run_keepers(redis, keys, bot, skews, stop)
        try:
            began = time.monotonic()
            await on_clock(begun_on, TypingKeeper(redis, keys, bot).begin(5))
            await eventually(forgotten, timeout=give_up + INTERVAL + 10)
            ended = time.monotonic()
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    times = action_times(double, 5)
    # Typing until the deadline (not dropped at once by a worker ahead, not left waiting 30 s for
    # one behind), no action after it, and the chat let go soon after. An action claimed just
    # before the deadline may reach the double a second or two late on a loaded machine; a
    # worker trusting its own clock would be 30 s off.
    assert len(times) >= 2, times
    assert all(at - began <= give_up + 2 * INTERVAL for at in times), [at - began for at in times]
    assert give_up - 0.1 <= ended - began <= give_up + INTERVAL + 3.0


async def test_an_ended_chat_is_let_go_in_its_own_shard_only(
    redis: RedisClient, keys: Keys, double: BotApiDouble, http: httpx.AsyncClient
) -> None:
    keeper = TypingKeeper(redis, keys, BotClient(http, double.url, TOKEN))
    for chat in CHATS:
        await keeper.begin_in(chat, 60.0)  # held back: its generation starts in a minute
    await keeper.end(CHATS[0])
    for chat in CHATS:
        shard = keys.shard_of(chat)
        kept = await redis.zscore(keys.typing_due(shard), str(chat)) is not None
        assert kept == (chat != CHATS[0]), chat
        assert await redis.hexists(keys.typing_deadline(shard), str(chat)) == kept, chat


def actions_in(double: BotApiDouble, chat_id: int, thread: int | None) -> list[float]:
    """When the chat was shown typing in forum topic `thread` (None: outside topics)."""
    return [
        call.at
        for call in double.calls_of("sendChatAction", chat_id)
        if call.status == 200 and call.params.get("message_thread_id") == thread
    ]


async def test_topics_of_one_chat_type_each_in_their_topic_and_end_apart(
    redis: RedisClient, keys: Keys, double: BotApiDouble, http: httpx.AsyncClient
) -> None:
    keeper = TypingKeeper(redis, keys, BotClient(http, double.url, TOKEN))
    chat, shard = CHATS[0], keys.shard_of(CHATS[0])
    conversations = {None: str(chat), 3: f"{chat}/3", 5: f"{chat}/5"}

    async def kept() -> set[int | None]:
        due = set(await redis.zrange(keys.typing_due(shard), 0, -1))
        deadlines = set(await redis.hkeys(keys.typing_deadline(shard)))
        assert due == deadlines
        return {thread for thread, member in conversations.items() if member in due}

    for thread in conversations:
        await keeper.begin(chat, thread)  # each topic's reply being written, and the chat's
    assert await kept() == {None, 3, 5}
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))
    try:
        # Kept up in each topic, each action carrying its topic's message_thread_id.
        await double.wait_for(
            lambda: all(len(actions_in(double, chat, t)) >= 2 for t in conversations), timeout=30
        )
        await keeper.end(chat, 3)  # topic 3's reply was delivered
        assert await kept() == {None, 5}
        ended = len(actions_in(double, chat, 3))
        # The others go on typing: two more actions each, an interval apart.
        others = {t: len(actions_in(double, chat, t)) for t in (None, 5)}
        await double.wait_for(
            lambda: all(len(actions_in(double, chat, t)) >= n + 2 for t, n in others.items()),
            timeout=30,
        )
        # At most an action claimed just before the end was still on its way; none after.
        assert len(actions_in(double, chat, 3)) <= ended + 1
        await keeper.end(chat)  # the chat's own reply, outside topics: topic 5 keeps typing
        assert await kept() == {5}
        for thread in (None, 3):
            await keeper.begin(chat, thread)
        # The chat blocked the bot (or /reset): every topic Turns.forget returned ends at once.
        await keeper.end_each(chat, [None, 3, 5])
        assert await kept() == set()
    finally:
        stop.set()
        await task
    assert not [c for c in double.calls_of("sendChatAction", chat) if c.status != 200]
