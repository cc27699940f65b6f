"""Regression tests of the turn protocol, one per defect of the first release (numbers as in the
issue "Every message answered"), against the real Redis. The state machine in
test_turn_protocol.py explores the interleavings; these pin the reported ones."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from aiconv.jobs.keys import UPDATES_GROUP, Keys
from aiconv.jobs.messages import TurnJob
from aiconv.jobs.queue import JobQueue
from aiconv.worker.turns import TurnConfig, Turns
from tests.support.streams import stream_entries

CHAT = 4242


@pytest.fixture
async def keys(redis_prefix: str) -> Keys:
    return Keys(redis_prefix)


def turns_with(redis: Redis, keys: Keys, *, final_after: float = 1000.0) -> Turns:
    return Turns(redis, keys, TurnConfig(debounce_seconds=0.0, final_after_seconds=final_after))


async def claimed(redis: Redis, keys: Keys) -> list[TurnJob]:
    entries = await stream_entries(redis, keys.updates)
    return [TurnJob.from_payload(json.loads(fields["job"])) for _, fields in entries]


async def test_1_a_message_during_a_final_turn_gets_the_next_turn(redis: Redis, keys: Keys) -> None:
    turns = turns_with(redis, keys, final_after=0.0)  # every turn final: a fragment texter
    await turns.note_message(CHAT, 1)
    assert await turns.claim_due() == 1
    [first] = await claimed(redis, keys)
    assert first.mode == "final"
    await turns.note_message(CHAT, 2)  # written while the final turn is typed
    assert await turns.status(CHAT, first.turn) == "owner"  # a final turn is not superseded
    assert await turns.finish(CHAT, first.turn, "delivered") is True  # more is due
    assert await turns.claim_due() == 1
    second = (await claimed(redis, keys))[-1]
    assert second.turn != first.turn and second.key != first.key  # a fresh idempotency key
    assert second.covers == 2 and second.reply_to == 2
    assert await turns.finish(CHAT, second.turn, "delivered") is False
    assert await redis.zcard(keys.turns_held) == 0  # nothing held once answered


async def test_2_an_older_message_noted_after_a_newer_ones_turn_is_answered(
    redis: Redis, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    await turns.note_message(CHAT, 6)
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    await turns.note_message(CHAT, 5)  # another worker handled the older update late
    assert await turns.finish(CHAT, turn.turn, "superseded") is True
    assert await turns.claim_due() == 1
    again = (await claimed(redis, keys))[-1]
    assert again.covers == 2 and again.reply_to == 6


async def test_a_redelivered_update_is_noted_once(redis: Redis, keys: Keys) -> None:
    turns = turns_with(redis, keys)
    assert await turns.note_message(CHAT, 1) is True
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    assert await turns.note_message(CHAT, 1) is False  # the same update, redelivered
    assert await turns.status(CHAT, turn.turn) == "owner"  # it does not supersede the turn
    assert await turns.finish(CHAT, turn.turn, "delivered") is False  # nothing more to answer


async def test_9_chats_with_a_turn_in_flight_never_block_the_others(
    redis: Redis, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    busy = list(range(1000, 1200))
    for chat in busy:
        await turns.note_message(chat, 1)
    assert await turns.claim_due(limit=500) == len(busy)
    for chat in busy:
        await turns.note_message(chat, 2)  # they wait for their turn to settle, not in due
    assert await redis.zcard(keys.turns_due) == 0
    await turns.note_message(CHAT, 1)
    assert await turns.claim_due(limit=1) == 1  # at the head at once


async def test_11_a_turn_is_released_only_by_its_owner(redis: Redis, keys: Keys) -> None:
    turns = turns_with(redis, keys)
    await turns.note_message(CHAT, 1)
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    assert await turns.finish(CHAT, "someone-else", "delivered") is False
    assert await turns.status(CHAT, turn.turn) == "owner"
    assert await turns.finish(CHAT, turn.turn, "delivered") is False
    assert await turns.status(CHAT, turn.turn) == "lost"


async def test_11_a_lease_is_renewed_while_the_job_lives_and_released_when_it_is_gone(
    redis: Redis, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    queue = JobQueue(redis, keys)
    await queue.ensure_group(keys.updates, UPDATES_GROUP)
    await turns.note_message(CHAT, 1)
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    await redis.zadd(keys.turns_held, {str(CHAT): 0})  # its lease ran out: a long backlog
    assert await turns.sweep_leases() == (1, 0)  # the job waits unread: renewed
    assert await turns.status(CHAT, turn.turn) == "owner"
    await redis.xreadgroup(UPDATES_GROUP, "w", {keys.updates: ">"})
    await redis.zadd(keys.turns_held, {str(CHAT): 0})
    assert await turns.sweep_leases() == (1, 0)  # read and pending: renewed
    [(entry, _)] = await stream_entries(redis, keys.updates)
    await redis.xack(keys.updates, UPDATES_GROUP, entry)
    await redis.xdel(keys.updates, entry)  # lost (failover), or acknowledged without a hand-over
    await redis.zadd(keys.turns_held, {str(CHAT): 0})
    assert await turns.sweep_leases() == (0, 1)
    assert await turns.status(CHAT, turn.turn) == "lost"
    assert await turns.claim_due() == 1  # its message is answered by a new turn


async def test_11_a_dead_lettered_turn_releases_its_chat_and_tells_the_user(
    redis: Redis, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    queue = JobQueue(redis, keys)
    await turns.note_message(CHAT, 1)
    await turns.claim_due()
    [(_, fields)] = await stream_entries(redis, keys.updates)
    await turns.abandon(queue, json.loads(fields["job"]))
    [(_, sorry)] = await stream_entries(redis, keys.replies)
    apology = json.loads(sorry["job"])
    assert apology["chat_id"] == CHAT and apology["key"].startswith("sorry:")
    assert apology.get("turn") is None  # delivered on its own
    assert await redis.zcard(keys.turns_held) == 0
    assert await turns.claim_due() == 0  # the apology answered it: no retry loop


async def test_reset_supersedes_even_a_final_turn(redis: Redis, keys: Keys) -> None:
    turns = turns_with(redis, keys, final_after=0.0)
    await turns.note_message(CHAT, 1)
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    await turns.forget(CHAT)
    assert await turns.status(CHAT, turn.turn) == "stale"
    assert await turns.finish(CHAT, turn.turn, "superseded") is False  # nothing left to answer


async def test_recovery_notes_what_redis_lost(redis: Redis, keys: Keys) -> None:
    turns = turns_with(redis, keys)
    await turns.note_message(CHAT, 3)
    assert await turns.recover([(CHAT, 3)]) == 0  # Redis still knows it
    await redis.delete(keys.chat_state(CHAT), keys.chat_noted(CHAT), keys.turns_due)  # FLUSHALL
    assert await turns.recover([(CHAT, 3)]) == 1
    assert await turns.claim_due() == 1
