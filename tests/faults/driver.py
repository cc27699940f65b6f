"""Drives conversations through the Bot API double and counts what came back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aiconv.jobs.keys import STAGES, Keys
from aiconv.testing.botapi import BotApiDouble
from tests.support.database import query_rows

TELEGRAM_RETRY_SECONDS = 0.5  # how soon the emulated Telegram retries a refused webhook


async def telegram_delivers(
    double: BotApiDouble, update: dict[str, Any], timeout: float = 90
) -> None:
    """POST the update until aiconv accepts it, as Telegram retries a non-2xx webhook answer."""
    deadline = time.monotonic() + timeout
    update_id = update["update_id"]
    while True:
        with contextlib.suppress(httpx.TransportError):  # web is down: Telegram would retry
            await double.deliver(update)
        statuses = [status for uid, status in double.webhook_responses if uid == update_id]
        if statuses and statuses[-1] == 200:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"update {update_id} never accepted: {statuses}")
        await asyncio.sleep(TELEGRAM_RETRY_SECONDS)


async def redis_answers(redis: Redis) -> bool:
    """True once the Redis server answers (a private one may still be starting)."""
    try:
        return bool(await redis.ping())
    except RedisError:
        return False


def more_replies(double: BotApiDouble, chat: int, before: int) -> Callable[[], bool]:
    return lambda: len(double.sent_texts(chat)) > before


@dataclass
class Tally:
    """Per fault: user turns injected, replies sent, and how many were lost or doubled."""

    name: str
    injected: int = 0
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    faults: int = 0
    per_chat: dict[int, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.name}: faults={self.faults} injected={self.injected} sent={self.sent} "
            f"lost={self.lost} duplicated={self.duplicated}"
        )


async def converse(
    double: BotApiDouble, chats: list[int], turns: int, tally: Tally, reply_timeout: float = 120
) -> None:
    """Each chat sends `turns` messages, each after the previous reply arrived."""

    async def one_chat(chat: int) -> None:
        for n in range(turns):
            before = len(double.sent_texts(chat))
            update = double.make_update(chat, f"Message {n}. Say something short about {n}.")
            await telegram_delivers(double, update)
            tally.injected += 1
            await double.wait_for(more_replies(double, chat, before), reply_timeout)

    await asyncio.gather(*(one_chat(chat) for chat in chats))


async def settled(redis: Redis, prefix: str, timeout: float = 120) -> None:
    """Wait until every job is acknowledged and no chat has a turn pending or in flight."""
    keys = Keys(prefix)
    deadline = time.monotonic() + timeout
    while True:
        busy = 0
        for stage in STAGES:
            for stream in keys.stage_streams(stage):
                for group in await redis.xinfo_groups(stream):
                    busy += int(group["pending"]) + int(group.get("lag") or 0)
        for shard in keys.all_shards:
            busy += await redis.zcard(keys.turns_due(shard))
            busy += await redis.zcard(keys.turns_held(shard))
        if busy == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{busy} jobs or turns still unsettled")
        await asyncio.sleep(0.2)


def count(double: BotApiDouble, chats: list[int], turns: int, tally: Tally) -> Tally:
    for chat in chats:
        sent = len(double.sent_texts(chat))
        tally.per_chat[chat] = sent
        tally.sent += sent
        tally.lost += max(0, turns - sent)
        tally.duplicated += max(0, sent - turns)
    print(tally.line())  # shown with -s, and in the CI log of failures
    return tally


def replies_in_order(database_url: str, chat: int) -> bool:
    """The chat's replies answer its messages in the order the user sent them."""
    rows = query_rows(
        database_url,
        "SELECT reply_to_message_id FROM messages WHERE chat_id = %s AND role = 'assistant' "
        "ORDER BY id",
        chat,
    )
    answered = [row[0] for row in rows]
    return answered == sorted(answered) and len(set(answered)) == len(answered)
