"""Regression tests of the turn protocol, one per defect of the first release (numbers as in the
issue "Every message answered"), against the real Redis and a real Redis Cluster (chats of every
shard). The state machine in test_turn_protocol.py explores the interleavings; these pin the
reported ones, and what a failover that loses a chat's turn state does."""

from __future__ import annotations

import json
import uuid
from typing import cast

import pytest

import aiconv.worker.turns as turns_module
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import GENERATE_GROUP, UPDATES_GROUP, Keys
from aiconv.jobs.messages import GenerateJob, ReplyJob, TurnJob
from aiconv.jobs.queue import Job, JobQueue
from aiconv.worker.turns import TurnConfig, Turns
from tests.support.streams import read_group, stream_entries

pytestmark = pytest.mark.both_redis

CHAT = 4242


def turns_with(redis: RedisClient, keys: Keys, *, final_after: float = 1000.0) -> Turns:
    return Turns(redis, keys, TurnConfig(debounce_seconds=0.0, final_after_seconds=final_after))


def chat_per_shard(keys: Keys) -> list[int]:
    """One chat id in each shard (CHAT's shard first)."""
    chats: dict[int, int] = {}
    chat = CHAT
    while len(chats) < keys.shards:
        chats.setdefault(keys.shard_of(chat), chat)
        chat += 1
    return sorted(chats.values(), key=lambda c: c != CHAT)


def updates_of(keys: Keys, chat: int) -> str:
    return keys.stream_for("updates", chat)


def held_of(keys: Keys, chat: int) -> str:
    return keys.turns_held(keys.shard_of(chat))


async def claimed(redis: RedisClient, keys: Keys, chat: int = CHAT) -> list[TurnJob]:
    entries = await stream_entries(redis, updates_of(keys, chat))
    jobs = [TurnJob.from_payload(json.loads(fields["job"])) for _, fields in entries]
    return [job for job in jobs if job.chat_id == chat]


async def test_1_a_message_during_a_final_turn_gets_the_next_turn(
    redis: RedisClient, keys: Keys
) -> None:
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
    assert await redis.zcard(held_of(keys, CHAT)) == 0  # nothing held once answered


async def test_2_an_older_message_noted_after_a_newer_ones_turn_is_answered(
    redis: RedisClient, keys: Keys
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


async def test_a_redelivered_update_is_noted_once(redis: RedisClient, keys: Keys) -> None:
    turns = turns_with(redis, keys)
    assert await turns.note_message(CHAT, 1) is True
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    assert await turns.note_message(CHAT, 1) is False  # the same update, redelivered
    assert await turns.status(CHAT, turn.turn) == "owner"  # it does not supersede the turn
    assert await turns.finish(CHAT, turn.turn, "delivered") is False  # nothing more to answer


async def test_9_chats_with_a_turn_in_flight_never_block_the_others(
    redis: RedisClient, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    busy = list(range(1000, 1200))
    for chat in busy:
        await turns.note_message(chat, 1)
    assert await turns.claim_due(limit=500) == len(busy)
    for chat in busy:
        await turns.note_message(chat, 2)  # they wait for their turn to settle, not in due
    for shard in keys.all_shards:
        assert await redis.zcard(keys.turns_due(shard)) == 0
    await turns.note_message(CHAT, 1)
    assert await turns.claim_due(limit=1) == 1  # at the head at once


async def test_11_a_turn_is_released_only_by_its_owner(redis: RedisClient, keys: Keys) -> None:
    turns = turns_with(redis, keys)
    await turns.note_message(CHAT, 1)
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    assert await turns.finish(CHAT, "someone-else", "delivered") is False
    assert await turns.status(CHAT, turn.turn) == "owner"
    assert await turns.finish(CHAT, turn.turn, "delivered") is False
    assert await turns.status(CHAT, turn.turn) == "lost"


async def test_11_a_lease_is_renewed_while_the_job_lives_and_released_when_it_is_gone(
    redis: RedisClient, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    queue = JobQueue(redis, keys)
    updates, held = updates_of(keys, CHAT), held_of(keys, CHAT)
    await queue.ensure_group(updates, UPDATES_GROUP)
    await turns.note_message(CHAT, 1)
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    await redis.zadd(held, {str(CHAT): 0})  # its lease ran out: a long backlog
    assert await turns.sweep_leases() == (1, 0)  # the job waits unread: renewed
    assert await turns.status(CHAT, turn.turn) == "owner"
    await redis.xreadgroup(UPDATES_GROUP, "w", {updates: ">"})
    await redis.zadd(held, {str(CHAT): 0})
    assert await turns.sweep_leases() == (1, 0)  # read and pending: renewed
    [(entry, _)] = await stream_entries(redis, updates)
    await redis.xack(updates, UPDATES_GROUP, entry)
    await redis.xdel(updates, entry)  # lost (failover), or acknowledged without a hand-over
    await redis.zadd(held, {str(CHAT): 0})
    assert await turns.sweep_leases() == (0, 1)
    assert await turns.status(CHAT, turn.turn) == "lost"
    assert await turns.claim_due() == 1  # its message is answered by a new turn


async def test_11_a_dead_lettered_turn_releases_its_chat_and_tells_the_user(
    redis: RedisClient, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    queue = JobQueue(redis, keys)
    await turns.note_message(CHAT, 1)
    await turns.claim_due()
    [(_, fields)] = await stream_entries(redis, updates_of(keys, CHAT))
    await turns.abandon(queue, json.loads(fields["job"]))
    [(_, sorry)] = await stream_entries(redis, keys.stream_for("replies", CHAT))
    apology = json.loads(sorry["job"])
    assert apology["chat_id"] == CHAT and apology["key"].startswith("sorry:")
    assert apology.get("turn") is None  # delivered on its own
    assert await redis.zcard(held_of(keys, CHAT)) == 0
    assert await turns.claim_due() == 0  # the apology answered it: no retry loop


async def test_reset_supersedes_even_a_final_turn(redis: RedisClient, keys: Keys) -> None:
    turns = turns_with(redis, keys, final_after=0.0)
    await turns.note_message(CHAT, 1)
    await turns.claim_due()
    [turn] = await claimed(redis, keys)
    await turns.forget(CHAT)
    assert await turns.status(CHAT, turn.turn) == "stale"
    assert await turns.finish(CHAT, turn.turn, "superseded") is False  # nothing left to answer


async def test_reset_leaves_no_state_that_never_expires(redis: RedisClient, keys: Keys) -> None:
    """/reset of a forum whose users wrote only in a topic (and of a chat with no state left,
    or a group the bot was removed from): the conversations without state get none. It once
    gave them one without expiry, a key kept for ever."""
    forum = -1000000000000 - CHAT
    turns = turns_with(redis, keys)
    await turns.note_message(forum, 1, 7)
    assert await turns.forget(forum) == [None, 7]
    await turns.forget(CHAT)
    assert await redis.exists(keys.chat_state(forum), keys.chat_state(CHAT)) == 0
    state = keys.chat_state(forum, 7)
    assert await redis.hget(state, "answered") == "1"  # the topic is forgotten all the same
    assert await redis.ttl(state) > 0


async def test_recovery_notes_what_redis_lost(redis: RedisClient, keys: Keys) -> None:
    turns = turns_with(redis, keys)
    await turns.note_message(CHAT, 3)
    assert await turns.recover([(CHAT, 3, None)]) == 0  # Redis still knows it
    for key in (keys.chat_state(CHAT), keys.chat_noted(CHAT), keys.turns_due(keys.shard_of(CHAT))):
        await redis.delete(key)  # FLUSHALL (one key per call: a cluster's lie in many slots)
    assert await turns.recover([(CHAT, 3, None)]) == 1
    assert await turns.claim_due() == 1


async def test_chats_of_every_shard_get_their_turns_in_their_own_shard(
    redis: RedisClient, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    queue = JobQueue(redis, keys)
    chats = chat_per_shard(keys)
    assert {keys.shard_of(chat) for chat in chats} == set(keys.all_shards)
    for chat in chats:
        await queue.ensure_group(updates_of(keys, chat), UPDATES_GROUP)
        await turns.note_message(chat, 1)
    assert await turns.claim_due() == len(chats)  # one tick claims in every shard
    for chat in chats:
        [turn] = await claimed(redis, keys, chat)  # in its own shard's stream
        assert await redis.zscore(held_of(keys, chat), str(chat)) is not None
        await redis.zadd(held_of(keys, chat), {str(chat): 0})  # every lease runs out
    assert await turns.sweep_leases() == (len(chats), 0)  # renewed in every shard
    for chat in chats:
        [turn] = await claimed(redis, keys, chat)
        assert await turns.finish(chat, turn.turn, "delivered") is False
    for shard in keys.all_shards:
        assert await redis.zcard(keys.turns_due(shard)) == 0
        assert await redis.zcard(keys.turns_held(shard)) == 0


async def hand_to_generation(
    redis: RedisClient, queue: JobQueue, turns: Turns, keys: Keys, chat: int
) -> Job:
    """The worker's turn stage: the chat's newest turn job is read and handed to ml (guarded);
    returns the generation job as ml has read it."""
    shard = keys.shard_of(chat)
    [(entry, fields)] = (await read_group(redis, UPDATES_GROUP, "w", keys.updates(shard)))[-1:]
    turn = TurnJob.from_payload(json.loads(fields["job"]))
    generate = GenerateJob(
        turn=turn.turn,
        chat_id=chat,
        chat_type="private",
        user_id=None,
        reply_to_message_id=turn.reply_to,
        started_at=turn.first_at,
        turns=[("user", "hello")],
    )
    source = Job(keys.updates(shard), entry, json.loads(fields["job"]))
    guard = turns.guard(chat, turn.turn)
    handed = await queue.hand_over(
        source,
        UPDATES_GROUP,
        keys.generate(shard),
        generate.to_payload(),
        generate.key,
        guard=guard,
    )
    assert handed is not None
    [(gen_entry, gen_fields)] = await read_group(redis, GENERATE_GROUP, "ml", keys.generate(shard))
    return Job(keys.generate(shard), gen_entry, json.loads(gen_fields["job"]))


async def generated(queue: JobQueue, turns: Turns, keys: Keys, job: Job) -> str | None:
    """ml's end of a generation: the reply handed to delivery under the turn's guard."""
    gen = GenerateJob.from_payload(job.payload)
    reply = ReplyJob(
        key=f"reply:{gen.turn}",
        chat_id=gen.chat_id,
        chat_type=gen.chat_type,
        user_id=None,
        reply_to_message_id=gen.reply_to_message_id,
        started_at=gen.started_at,
        paced=False,
        text="hi",
        turn=gen.turn,
    )
    replies = keys.stream_for("replies", gen.chat_id)
    guard = turns.guard(gen.chat_id, gen.turn)
    return await queue.hand_over(
        job, GENERATE_GROUP, replies, reply.to_payload(), reply.key, guard=guard
    )


async def test_a_chat_whose_turn_state_vanished_is_answered_once_by_the_next_sweep(
    redis: RedisClient, keys: Keys
) -> None:
    """A failover to a replica that lacked the last writes: the chat's turn state is gone while
    its turn's generation runs. The recovery sweep (PostgreSQL's unanswered message) gives it a
    new turn; the old turn's work hands nothing on, and one reply is queued."""
    turns = turns_with(redis, keys)
    queue = JobQueue(redis, keys)
    chats = chat_per_shard(keys)
    for chat in chats:
        shard = keys.shard_of(chat)
        for stream, group in (
            (keys.updates(shard), UPDATES_GROUP),
            (keys.generate(shard), GENERATE_GROUP),
        ):
            await queue.ensure_group(stream, group)
        await turns.note_message(chat, 7)
    await turns.claim_due()
    in_flight = {chat: await hand_to_generation(redis, queue, turns, keys, chat) for chat in chats}
    for chat in chats:
        for key in (keys.chat_state(chat), keys.chat_noted(chat), keys.chat_live(chat)):
            await redis.delete(key)  # what the promoted replica never had

    unanswered: list[tuple[int, int, int | None]] = [(chat, 7, None) for chat in chats]
    assert await turns.recover(unanswered) == len(chats)
    assert await turns.recover(unanswered) == 0  # a second sweep finds it noted
    assert await turns.claim_due() == len(chats)
    for chat in chats:
        old = GenerateJob.from_payload(in_flight[chat].payload).turn
        [_, new] = await claimed(redis, keys, chat)
        assert new.turn != old  # a new incarnation of turn ids: the old turn owns nothing
        assert await generated(queue, turns, keys, in_flight[chat]) is None
        assert await generated(
            queue, turns, keys, await hand_to_generation(redis, queue, turns, keys, chat)
        )
        entries = await stream_entries(redis, keys.stream_for("replies", chat))
        replies = [json.loads(fields["job"]) for _, fields in entries]
        assert [reply["turn"] for reply in replies if reply["chat_id"] == chat] == [new.turn]
        assert await turns.finish(chat, new.turn, "delivered") is False
    assert await turns.recover(unanswered) == 0  # answered: the next sweeps leave it alone
    assert await turns.claim_due() == 0
    assert await turns.sweep_leases() == (0, 0)
    for shard in keys.all_shards:
        assert await redis.zcard(keys.turns_held(shard)) == 0


async def test_claims_load_the_script_on_a_node_that_lacks_it(
    redis: RedisClient, keys: Keys
) -> None:
    """Claims go out as EVALSHA in one pipeline, which loads no script: a node that never ran
    it (a new primary after a failover, a restart) answers NOSCRIPT, and the claim is sent again
    alone, loading it."""
    turns = turns_with(redis, keys)
    unseen = f"{turns_module._CLAIM}\n-- {uuid.uuid4().hex}"  # a script no node has loaded
    turns._claim = redis.register_script(unseen)
    chats = chat_per_shard(keys)
    for chat in chats:
        await turns.note_message(chat, 1)
    assert await turns.claim_due() == len(chats)
    for chat in chats:
        assert len(await claimed(redis, keys, chat)) == 1


# --- forum topics: turns per conversation ---------------------------------------------------

BLUE, RED = 3, 5  # two forum topics of CHAT


def by_topic(jobs: list[TurnJob]) -> dict[int | None, TurnJob]:
    """The newest claimed turn of each of the chat's conversations."""
    return {job.topic: job for job in jobs}


async def held_conversations(redis: RedisClient, keys: Keys, chat: int = CHAT) -> set[str]:
    return set(cast(list[str], await redis.zrange(held_of(keys, chat), 0, -1)))


async def test_two_topics_of_one_chat_are_claimed_side_by_side(
    redis: RedisClient, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    assert await turns.note_message(CHAT, 1, BLUE) is True
    assert await turns.note_message(CHAT, 2, RED) is True
    assert await turns.note_message(CHAT, 2, RED) is False  # noted once, whatever the topic
    assert await turns.claim_due() == 2  # one turn per topic, at once
    claims = by_topic(await claimed(redis, keys))
    assert set(claims) == {BLUE, RED}
    blue, red = claims[BLUE], claims[RED]
    assert blue.turn.startswith(f"{CHAT}/{BLUE}:1:") and red.turn.startswith(f"{CHAT}/{RED}:2:")
    assert (blue.chat_id, blue.reply_to, blue.covers) == (CHAT, 1, 1)
    assert (red.chat_id, red.reply_to, red.covers) == (CHAT, 2, 1)
    assert await turns.status(CHAT, blue.turn) == "owner"
    assert await turns.status(CHAT, red.turn) == "owner"
    assert await held_conversations(redis, keys) == {f"{CHAT}/{BLUE}", f"{CHAT}/{RED}"}
    # A newer message in one topic supersedes that topic's turn only.
    assert await turns.note_message(CHAT, 3, RED) is True
    assert await turns.status(CHAT, red.turn) == "stale"
    assert await turns.status(CHAT, blue.turn) == "owner"
    assert await turns.claim_due() == 0  # the red topic's next turn waits for its own to end


async def test_a_finished_turn_in_one_topic_does_not_touch_the_other(
    redis: RedisClient, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    await turns.note_message(CHAT, 1, BLUE)
    await turns.note_message(CHAT, 2, RED)
    await turns.claim_due()
    claims = by_topic(await claimed(redis, keys))
    blue, red = claims[BLUE], claims[RED]
    assert await turns.finish(CHAT, blue.turn, "delivered") is False  # nothing more in blue
    assert await turns.finish(CHAT, blue.turn, "delivered") is False  # no longer its owner
    assert await turns.status(CHAT, blue.turn) == "lost"
    assert await turns.status(CHAT, red.turn) == "owner"
    assert await held_conversations(redis, keys) == {f"{CHAT}/{RED}"}
    # While red's turn is in flight, the blue topic and the chat outside topics get turns.
    await turns.note_message(CHAT, 3, BLUE)
    await turns.note_message(CHAT, 4)
    assert await turns.claim_due() == 2
    claims = by_topic(await claimed(redis, keys))
    assert claims[BLUE].turn != blue.turn and claims[BLUE].reply_to == 3
    assert claims[None].turn.startswith(f"{CHAT}:4:") and claims[None].reply_to == 4
    assert claims[RED] == red  # no second turn for red
    assert await turns.status(CHAT, red.turn) == "owner"
    for job in claims.values():
        assert await turns.finish(CHAT, job.turn, "delivered") is False
    assert await held_conversations(redis, keys) == set()
    assert await turns.claim_due() == 0


async def test_forget_forgets_every_topic_of_the_chat_and_returns_them(
    redis: RedisClient, keys: Keys
) -> None:
    turns = turns_with(redis, keys, final_after=0.0)  # final turns: only a reset stales them
    other = CHAT + 1
    await turns.note_message(CHAT, 1)
    await turns.note_message(CHAT, 2, BLUE)
    await turns.note_message(CHAT, 3, RED)
    await turns.note_message(other, 1, BLUE)  # another chat's topic of the same number
    assert await turns.claim_due() == 4
    in_flight = by_topic(await claimed(redis, keys))
    await turns.note_message(CHAT, 4, 7)  # due, no turn yet
    await turns.note_message(CHAT, 5, BLUE)  # waiting for blue's turn to end
    assert await turns.forget(CHAT) == [None, BLUE, RED, 7]
    for job in in_flight.values():
        assert await turns.status(CHAT, job.turn) == "stale"
        assert await turns.finish(CHAT, job.turn, "superseded") is False  # nothing left
    assert await turns.claim_due() == 0  # topic 7 was forgotten too
    [others] = await claimed(redis, keys, other)
    assert await turns.status(other, others.turn) == "owner"  # only CHAT was reset
    assert await turns.finish(other, others.turn, "delivered") is False
    assert await held_conversations(redis, keys) == set()


async def test_recovery_notes_each_topic_in_its_own_conversation(
    redis: RedisClient, keys: Keys
) -> None:
    turns = turns_with(redis, keys)
    await turns.note_message(CHAT, 3, BLUE)
    assert await turns.recover([(CHAT, 3, BLUE)]) == 0  # Redis still knows it
    for key in (
        keys.chat_state(CHAT, BLUE),
        keys.chat_noted(CHAT),
        keys.chat_topics(CHAT),
        keys.turns_due(keys.shard_of(CHAT)),
    ):
        await redis.delete(key)  # lost (one key per call: a cluster's lie in many slots)
    unanswered: list[tuple[int, int, int | None]] = [(CHAT, 3, BLUE), (CHAT, 6, RED)]
    assert await turns.recover(unanswered) == 2
    assert await turns.recover(unanswered) == 0
    assert await turns.claim_due() == 2
    claims = by_topic(await claimed(redis, keys))
    assert {topic: job.reply_to for topic, job in claims.items()} == {BLUE: 3, RED: 6}
    assert not await redis.hexists(keys.chat_state(CHAT), "turn")  # nothing outside topics
    for topic, job in claims.items():
        assert await redis.hget(keys.chat_state(CHAT, topic), "turn") == job.turn
    assert await turns.forget(CHAT) == [None, BLUE, RED]  # recovered topics are known to /reset
