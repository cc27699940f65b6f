"""Nothing lost, nothing doubled: faults injected for real while conversations flow.

Each test counts the user turns injected and the replies Telegram (the double) received, and
asserts that every turn got exactly one reply, in order per chat. The counts are printed
(`pytest -s tests/faults`) for the record.
"""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest
from redis.asyncio import Redis

from aiconv.jobs.keys import Keys
from aiconv.testing.botapi import BotApiDouble
from tests.faults.driver import (
    Tally,
    converse,
    count,
    more_replies,
    redis_answers,
    replies_in_order,
    settled,
    telegram_delivers,
)
from tests.support.database import query_rows
from tests.support.ports import free_port
from tests.support.processes import AiconvProcess, Launcher, webhook_settings
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults

SECRET = "fault-secret"
FAST_RECOVERY = {
    "JOB_VISIBILITY_TIMEOUT_SECONDS": "3",  # a dead process's jobs are taken over quickly
    "MAX_TOKENS": "24",
    # Two ml processes share 2 cores: llama.cpp's spinning threads must not oversubscribe them.
    "N_THREADS": "1",
}


def webhook(port: int) -> dict[str, str]:
    return {**webhook_settings(port, SECRET), **FAST_RECOVERY}


def assert_exactly_once(tally: Tally, database_url: str, chats: list[int]) -> None:
    assert tally.lost == 0 and tally.duplicated == 0, tally.line()
    for chat in chats:
        assert replies_in_order(database_url, chat), f"chat {chat} answered out of order"


async def test_kill_9_of_workers_and_ml_processes(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    hook = webhook(free_port())
    await launch("web", **hook)
    victims: list[AiconvProcess] = [await launch("worker", **hook) for _ in range(2)]
    victims += [await launch("ml", **FAST_RECOVERY) for _ in range(2)]
    chats, turns = list(range(1101, 1107)), 6
    tally = Tally("kill -9 of worker and ml processes")

    async def kill_and_restart() -> None:
        rng = random.Random(20261126)
        for _ in range(12):
            await asyncio.sleep(rng.uniform(0.5, 1.5))  # the fault schedule
            victim = rng.choice(victims)
            victim.kill()
            tally.faults += 1
            await victim.start()

    await asyncio.gather(converse(double, chats, turns, tally), kill_and_restart())
    await settled(redis, redis_prefix)
    count(double, chats, turns, tally)
    assert tally.faults >= 10
    assert_exactly_once(tally, database_url, chats)


async def test_redis_restarted_while_messages_flow(
    launch: Launcher,
    double: BotApiDouble,
    redis_prefix: str,
    database_url: str,
    private_redis: tuple[str, RedisServer],
) -> None:
    url, server = private_redis
    redis = Redis.from_url(url, decode_responses=True)

    await eventually(lambda: redis_answers(redis), timeout=20)
    await launch("all", REDIS_URL=url, **webhook(free_port()))
    chats, turns = list(range(1201, 1205)), 5
    tally = Tally("Redis restarted")

    async def restart_redis() -> None:
        for _ in range(3):
            await asyncio.sleep(2.0)  # the fault schedule
            server.stop()
            tally.faults += 1
            await asyncio.sleep(1.0)  # an outage of a second
            server.start()

    await asyncio.gather(converse(double, chats, turns, tally), restart_redis())
    await eventually(lambda: redis_answers(redis), timeout=20)
    await settled(redis, redis_prefix)
    await redis.aclose()
    count(double, chats, turns, tally)
    assert_exactly_once(tally, database_url, chats)


async def test_postgres_backends_killed_while_messages_flow(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    hook = webhook(free_port())
    await launch("all", **hook)
    chats, turns = list(range(1301, 1305)), 5
    tally = Tally("PostgreSQL backends terminated")

    async def terminate_backends() -> None:
        for _ in range(10):
            await asyncio.sleep(0.7)  # the fault schedule
            with psycopg.connect(database_url, autocommit=True) as conn:
                killed = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()
            tally.faults += int(killed[0]) if killed else 0

    await asyncio.gather(converse(double, chats, turns, tally), terminate_backends())
    await settled(redis, redis_prefix)
    count(double, chats, turns, tally)
    assert tally.faults >= 10
    assert_exactly_once(tally, database_url, chats)


async def test_telegram_429s_500s_and_slow_answers(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    double.fail_next("sendMessage", 429, retry_after=1, times=3)
    double.fail_next("sendMessage", 500, times=4)
    double.fail_next("sendChatAction", 502, times=6)
    double.delay_next("sendMessage", 2.0, times=3)
    await launch("all", **webhook(free_port()))
    chats, turns = list(range(1401, 1405)), 3
    tally = Tally("Telegram 429/500/slow")
    tally.faults = 3 + 4 + 6 + 3
    await converse(double, chats, turns, tally)
    await settled(redis, redis_prefix)
    count(double, chats, turns, tally)
    assert_exactly_once(tally, database_url, chats)
    statuses = [call.status for call in double.calls_of("sendMessage")]
    assert statuses.count(429) == 3 and statuses.count(500) == 4


async def test_bursts_in_several_chats_are_answered_once_each_in_order(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    hook = {**webhook(free_port()), "TURN_DEBOUNCE_SECONDS": "1.5"}
    await launch("web", **hook)
    for _ in range(2):
        await launch("worker", **hook)
        await launch("ml", **FAST_RECOVERY)
    chats, bursts = list(range(1501, 1505)), 3
    last_of_burst: dict[int, list[int]] = {chat: [] for chat in chats}

    async def one_chat(chat: int) -> None:
        for burst in range(bursts):
            before = len(double.sent_texts(chat))
            burst_updates = [
                double.make_update(chat, f"Burst {burst}, part {part}.") for part in range(3)
            ]
            # Fired together, as a person sends three quick lines.
            await asyncio.gather(*(telegram_delivers(double, u) for u in burst_updates))
            last_of_burst[chat].append(max(u["message"]["message_id"] for u in burst_updates))
            await double.wait_for(more_replies(double, chat, before), 120)

    await asyncio.gather(*(one_chat(chat) for chat in chats))
    await settled(redis, redis_prefix)
    tally = Tally("bursts of 3 messages, 2 workers + 2 ml", injected=len(chats) * bursts * 3)
    count(double, chats, bursts, tally)
    assert_exactly_once(tally, database_url, chats)
    for chat in chats:
        answered = query_rows(
            database_url,
            "SELECT reply_to_message_id FROM messages WHERE chat_id = %s "
            "AND role = 'assistant' ORDER BY id",
            chat,
        )
        # one reply per burst, to its last message
        assert [reply_to for (reply_to,) in answered] == last_of_burst[chat]


async def test_a_message_while_the_bot_types_is_answered_together(
    launch: Launcher, double: BotApiDouble, redis: Redis, redis_prefix: str, database_url: str
) -> None:
    await launch(
        "all",
        **webhook(free_port()),
        TURN_DEBOUNCE_SECONDS="0.2",
        TYPING_MIN_DELAY_SECONDS="4",
        TYPING_MAX_DELAY_SECONDS="6",
    )
    first = double.make_update(1601, "What is the capital of France?")
    await telegram_delivers(double, first)
    # Once its generation is queued the reply is at least 4 s of "typing" away.
    keys = Keys(redis_prefix)
    await eventually(lambda: redis.xlen(keys.stream_for("generate", 1601)), timeout=30)
    second = double.make_update(1601, "And of Italy?")
    await telegram_delivers(double, second)
    await double.wait_for_messages(1601, 1)
    await settled(redis, redis_prefix)
    assert len(double.sent_texts(1601)) == 1
    [(reply_to,)] = query_rows(
        database_url,
        "SELECT reply_to_message_id FROM messages WHERE chat_id = 1601 AND role = 'assistant'",
    )
    assert reply_to == second["message"]["message_id"]
