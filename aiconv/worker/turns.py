"""Turns: one reply at a time per conversation, every message answered, in order, nothing sent
twice.

A conversation is a chat, or one forum topic of it (jobs/messages.py `conversation_id`): the topics
of a forum are answered side by side, each by its own turns. Below, "chat" means conversation.

A person reads everything that arrived before answering. So a user's message does not queue a
generation: it is *noted* (the chat's `noted` counter grows by one, once per message id however
often its update is redelivered), and the chat becomes due after a short debounce. A due chat with
no turn in flight gets one turn, claimed atomically with its `turn` job. The turn *covers* the
messages noted so far; a delivered turn makes them `answered`. Whenever `noted > answered` and no
turn is in flight, the chat is due again: a message that arrives during any turn, or is handled
late by another worker, is answered by the next turn. That one comparison replaces every "is this
message newer" test by message id, which breaks under redelivery and reordering.

The lock is the turn itself: the chat's state hash holds the turn's identity (`turn`), and only a
caller presenting that identity may hand the turn's work on (queue.hand_over with a guard), finish
it or renew it. Its lease (`turns:held`) is renewed while its current job is alive in the job layer
(unacknowledged in its stream, read or not), whatever the backlog; a turn whose job vanished
(Redis lost it, a dead letter whose handler failed) is released and its chat is due again. A turn
is *active* until its oldest unanswered message has waited `final_after`; a message arriving during
an active turn supersedes it (`live` key changes; ml and delivery stop before sending anything), a
final turn is delivered anyway so a user who writes in fragments still gets answers.

When the model's queue is long (worker/capacity.py), a turn may tell its user once that the reply
will take a while (`notify_busy`, keyed by the chat's oldest unanswered message: once per turn
whatever is redelivered, and not again for the turn that follows a superseded one), or
be declined (`decline`): its reply is then a fixed "overloaded" text, handed over and delivered
as the turn's reply, so the turn settles, and its messages are answered, exactly as by a
generated reply, and none is generated.

Shards (aiconv/jobs/keys.py): every key a chat's scripts touch (its state, the due and held sets,
the stage streams its turn moves through) lies in the chat's shard, one hash slot, so each step
above stays one atomic script on a Redis Cluster; the scheduler's tick and the lease sweep run
over every shard. A forum topic's keys lie in its chat's shard: message ids are per chat, so the
`noted` set that makes a redelivered message count once stays one per chat, beside the states.

All time is Redis time (`TIME` inside the scripts). PostgreSQL stays the truth: `recover` re-notes
the newest unanswered stored message of every chat and topic, so losing Redis state loses no stored
message.
A chat whose state was lost (a failover to a replica that lacked the last writes) starts a new
incarnation of turn ids (`seq` restarts from Redis time, not from 0): a turn of the lost state
never owns a turn of the new one, so its jobs still in flight hand nothing on and the chat is
answered once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from aiconv.conversation import texts
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import UPDATES_GROUP, Keys
from aiconv.jobs.lua import REDIS_NOW
from aiconv.jobs.messages import (
    ReplyJob,
    TurnJob,
    chat_of,
    conversation_id,
    parse_conversation,
    turn_topic,
)
from aiconv.jobs.queue import TURN_LEASE_SECONDS, Job, JobQueue, TurnGuard
from aiconv.jobs.retry import repeat_every
from aiconv.observability.metrics import TURNS_RECOVERED

TICK_SECONDS = 0.1
SWEEP_SECONDS = 1.0
CLAIM_BATCH = 200
STATE_TTL_SECONDS = 7 * 24 * 3600  # a chat's turn state outlives any pause in a conversation
NOTED_TTL_SECONDS = 2 * 24 * 3600  # longer than Telegram redelivers a webhook (24 h)

Outcome = Literal["delivered", "superseded", "dropped", "lost"]
Status = Literal["owner", "stale", "lost"]

log = structlog.get_logger(__name__)

# Puts a chat with unanswered messages and no turn in flight on the due set: after the debounce
# from its newest message, but no later than final_after from its oldest.
# Expects: state = KEYS[1], due key in `due_key`, chat in `chat`, now, debounce, final_after.
_SCHEDULE = """
local function schedule(state, due_key, chat, now, debounce, final_after)
  local first = tonumber(redis.call('HGET', state, 'first') or now)
  local last = tonumber(redis.call('HGET', state, 'last') or now)
  local at = math.max(now, math.min(last + debounce, first + final_after))
  redis.call('ZADD', due_key, at, chat)
end
"""

# KEYS: state, noted, due, live, the chat's topics
# ARGV: conversation, message id, debounce, final_after, state ttl, noted ttl, topic ('' for none).
# Returns 1 if newly noted.
_NOTE = (
    _SCHEDULE
    + REDIS_NOW
    + """
if redis.call('ZADD', KEYS[2], 'NX', now, ARGV[2]) == 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('HINCRBY', KEYS[1], 'noted', 1)
redis.call('HSET', KEYS[1], 'last', now)
if not redis.call('HGET', KEYS[1], 'first') then redis.call('HSET', KEYS[1], 'first', now) end
local reply_to = tonumber(redis.call('HGET', KEYS[1], 'reply_to') or '-1')
if tonumber(ARGV[2]) > reply_to then redis.call('HSET', KEYS[1], 'reply_to', ARGV[2]) end
if redis.call('HEXISTS', KEYS[1], 'turn') == 1 then
  redis.call('HSETNX', KEYS[1], 'next_first', now)
  if redis.call('HGET', KEYS[1], 'mode') == 'active' then
    redis.call('SET', KEYS[4], 'superseded', 'EX', ARGV[5])
  end
else
  schedule(KEYS[1], KEYS[3], ARGV[1], now, tonumber(ARGV[3]), tonumber(ARGV[4]))
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
if ARGV[7] ~= '' then
  redis.call('SADD', KEYS[5], ARGV[7])
  redis.call('EXPIRE', KEYS[5], ARGV[5])
end
return 1
"""
)

# KEYS: due. ARGV: limit. The chats whose turn may start now.
_DUE_NOW = (
    REDIS_NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
"""
)

# KEYS: due, held, state, updates stream, live
# ARGV: conversation, lease, final_after, state ttl, chat. Returns 1 if a turn was claimed.
_CLAIM = (
    REDIS_NOW
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > now then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HEXISTS', KEYS[3], 'turn') == 1 then return 0 end  -- its finish re-schedules
local noted = tonumber(redis.call('HGET', KEYS[3], 'noted') or '0')
local answered = tonumber(redis.call('HGET', KEYS[3], 'answered') or '0')
if noted <= answered then
  redis.call('HDEL', KEYS[3], 'first')
  return 0
end
if redis.call('HEXISTS', KEYS[3], 'seq') == 0 then
  -- A new (or lost) state: turn ids start from Redis time in ms, never reusing a lost state's.
  redis.call('HSET', KEYS[3], 'seq', string.format('%d', math.floor(now * 1000)))
end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
local reply_to = redis.call('HGET', KEYS[3], 'reply_to') or '0'
local turn = ARGV[1] .. ':' .. reply_to .. ':' .. string.format('%d', seq)
local first = tonumber(redis.call('HGET', KEYS[3], 'first') or now)
local mode = 'active'
if now - first >= tonumber(ARGV[3]) then mode = 'final' end
redis.call('HSET', KEYS[3], 'turn', turn, 'covers', noted, 'mode', mode)
redis.call('HDEL', KEYS[3], 'next_first')
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('SET', KEYS[5], turn, 'EX', ARGV[4])
local job = cjson.encode({kind = 'turn', key = 'turn:' .. turn, turn = turn, chat_id = ARGV[5],
                          reply_to = reply_to, covers = noted, mode = mode, first_at = first})
local entry = redis.call('XADD', KEYS[4], '*', 'job', job)
redis.call('HSET', KEYS[3], 'stage_stream', KEYS[4], 'stage_id', entry)
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""
)

# KEYS: state, due, held, live
# ARGV: conversation, turn, outcome, debounce, final_after, expected stage id ('' = any)
# Returns -1 when the caller does not own the chat's turn, else 1 if more is due, 0 if not.
_FINISH = (
    _SCHEDULE
    + REDIS_NOW
    + """
if redis.call('HGET', KEYS[1], 'turn') ~= ARGV[2] then return -1 end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'stage_id') ~= ARGV[6] then return -1 end
local covers = tonumber(redis.call('HGET', KEYS[1], 'covers') or '0')
local noted = tonumber(redis.call('HGET', KEYS[1], 'noted') or '0')
local answered = tonumber(redis.call('HGET', KEYS[1], 'answered') or '0')
if ARGV[3] == 'delivered' or ARGV[3] == 'dropped' then
  if covers > answered then
    answered = covers
    redis.call('HSET', KEYS[1], 'answered', answered)
  end
  local next_first = redis.call('HGET', KEYS[1], 'next_first')
  if next_first then redis.call('HSET', KEYS[1], 'first', next_first) end
end
redis.call('HDEL', KEYS[1], 'turn', 'covers', 'mode', 'next_first', 'stage_stream', 'stage_id')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
if noted > answered then
  if not redis.call('HGET', KEYS[1], 'first') then redis.call('HSET', KEYS[1], 'first', now) end
  schedule(KEYS[1], KEYS[2], ARGV[1], now, tonumber(ARGV[4]), tonumber(ARGV[5]))
  return 1
end
redis.call('HDEL', KEYS[1], 'first')
return 0
"""
)

# KEYS: state, due, live. ARGV: conversation, state ttl. /reset: nothing unanswered remains; a
# turn in flight (even a final one) becomes stale. A conversation without state has nothing to
# forget, and is given none (it would have no expiry: a forum's General conversation at every
# /reset, a group the bot is removed from).
_FORGET = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local noted = redis.call('HGET', KEYS[1], 'noted') or '0'
redis.call('HSET', KEYS[1], 'answered', noted)
redis.call('HDEL', KEYS[1], 'first', 'next_first')
if redis.call('HEXISTS', KEYS[1], 'turn') == 1 then
  redis.call('SET', KEYS[3], 'reset', 'EX', ARGV[2])
end
"""

# KEYS: state, held. ARGV: conversation, turn, stage id, lease. Extends the lease of a live turn.
_RENEW = (
    REDIS_NOW
    + """
if redis.call('HGET', KEYS[1], 'turn') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'stage_id') ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
return 1
"""
)

# KEYS: state, held. ARGV: conversation. Drops a held entry whose conversation has no turn
# (state lost).
_FORGET_HELD = """
if redis.call('HEXISTS', KEYS[1], 'turn') == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
"""

# KEYS: held, lease window. Conversations whose lease ends within the window.
_EXPIRING = (
    REDIS_NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now + tonumber(ARGV[1]), 'LIMIT', 0, ARGV[2])
"""
)


@dataclass(frozen=True)
class TurnConfig:
    debounce_seconds: float = 1.5
    final_after_seconds: float = 15.0


@dataclass(eq=False)  # a service: compared by identity
class Turns:
    redis: RedisClient
    keys: Keys
    config: TurnConfig

    def __post_init__(self) -> None:
        register = self.redis.register_script
        self._note = register(_NOTE)
        self._due_now = register(_DUE_NOW)
        self._claim = register(_CLAIM)
        self._finish = register(_FINISH)
        self._forget = register(_FORGET)
        self._renew = register(_RENEW)
        self._forget_held = register(_FORGET_HELD)
        self._expiring = register(_EXPIRING)

    # --- the conversation path -----------------------------------------------------------------

    async def note_message(self, chat_id: int, message_id: int, topic: int | None = None) -> bool:
        """A user's message (in forum topic `topic`) is stored: it will be answered by a turn
        of its conversation. False if already noted."""
        k = self.keys
        due = k.turns_due(k.shard_of(chat_id))
        noted = await self._note(
            keys=[
                k.chat_state(chat_id, topic),
                k.chat_noted(chat_id),
                due,
                k.chat_live(chat_id, topic),
                k.chat_topics(chat_id),
            ],
            args=[
                conversation_id(chat_id, topic),
                message_id,
                self.config.debounce_seconds,
                self.config.final_after_seconds,
                STATE_TTL_SECONDS,
                NOTED_TTL_SECONDS,
                "" if topic is None else topic,
            ],
        )
        return bool(noted)

    async def forget(self, chat_id: int) -> list[int | None]:
        """/reset (or a user who blocked the bot, a group that removed it): nothing unanswered
        remains, in the chat and in each of its forum topics. Returns the topics forgotten
        (None: the chat outside topics), whose typing the caller ends."""
        k = self.keys
        due = k.turns_due(k.shard_of(chat_id))
        topics: list[int | None] = [None]
        topics += sorted(int(t) for t in await self.redis.smembers(k.chat_topics(chat_id)))
        calls = [
            (
                [k.chat_state(chat_id, topic), due, k.chat_live(chat_id, topic)],
                [conversation_id(chat_id, topic), STATE_TTL_SECONDS],
            )
            for topic in topics
        ]
        await self._pipelined(self._forget, calls)  # one round trip, however many topics
        return topics

    async def claim_due(self, limit: int = CLAIM_BATCH) -> int:
        """Claim a turn for every due chat of every shard, up to `limit` per shard (any worker
        may; each claim happens once)."""
        claimed = await asyncio.gather(
            *(self._claim_shard(shard, limit) for shard in self.keys.all_shards)
        )
        return sum(claimed)

    async def _claim_shard(self, shard: int, limit: int) -> int:
        k = self.keys
        due, held, updates = k.turns_due(shard), k.turns_held(shard), k.updates(shard)
        conversations = await self._due_now(keys=[due], args=[limit])
        if not conversations:
            return 0
        calls = []
        for conversation in conversations:
            chat, topic = parse_conversation(conversation)
            calls.append(
                (
                    [due, held, k.chat_state(chat, topic), updates, k.chat_live(chat, topic)],
                    [
                        conversation,
                        TURN_LEASE_SECONDS,
                        self.config.final_after_seconds,
                        STATE_TTL_SECONDS,
                        chat,
                    ],
                )
            )
        results = await self._pipelined(self._claim, calls)
        return sum(int(r) for r in results)

    async def _pipelined(
        self, script: AsyncScript, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """One script, many calls, in one non-transactional pipeline (each call stays atomic
        on its own keys; a cluster pipeline sends each to its slot's node). A pipeline of
        EVALSHA loads no script: a node that answers NOSCRIPT gets that call again alone, which
        loads it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        answers = []
        for (keys, args), result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):
                result = await script(keys=keys, args=args)
            elif isinstance(result, Exception):
                raise result
            answers.append(result)
        return answers

    async def status(self, chat_id: int, turn: str) -> Status:
        """owner: the turn may go on; stale: superseded or reset, finish it; lost: not ours."""
        topic = turn_topic(turn)
        state = self.keys.chat_state(chat_id, topic)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(state, "turn")
            pipe.get(self.keys.chat_live(chat_id, topic))
            owner, live = await pipe.execute()
        if owner != turn:
            return "lost"
        if live is not None and live != turn:
            return "stale"
        return "owner"

    def guard(self, chat_id: int, turn: str) -> TurnGuard:
        """Makes a hand-over of the turn's work happen only while the turn owns its
        conversation."""
        return TurnGuard(chat_id=chat_id, turn=turn)

    async def finish(self, chat_id: int, turn: str, outcome: Outcome, stage_id: str = "") -> bool:
        """Release the turn of its conversation (owner only; the conversation is the one the
        turn id names); True when newer messages wait for the next.

        delivered / dropped: the messages it covered are answered (dropped: nobody can read the
        answer, e.g. the user blocked the bot). superseded / lost: they are not; the next turn
        answers them together with anything newer.
        """
        k = self.keys
        shard, topic = k.shard_of(chat_id), turn_topic(turn)
        more = await self._finish(
            keys=[
                k.chat_state(chat_id, topic),
                k.turns_due(shard),
                k.turns_held(shard),
                k.chat_live(chat_id, topic),
            ],
            args=[
                conversation_id(chat_id, topic),
                turn,
                outcome,
                self.config.debounce_seconds,
                self.config.final_after_seconds,
                stage_id,
            ],
        )
        if int(more) < 0:
            log.info("turn already released", chat_id=chat_id, turn=turn, outcome=outcome)
            return False
        return bool(more)

    async def abandon(self, queue: JobQueue, payload: dict[str, Any]) -> None:
        """A job of a turn was dead-lettered: release the turn and tell the user, briefly.

        Its messages count as answered (by the apology), so a job that fails every time does not
        come back as the next turn.
        """
        turn, chat_id = payload.get("turn"), chat_of(payload)
        if not isinstance(turn, str) or chat_id is None:
            return
        if await self.status(chat_id, turn) == "lost":
            return  # a newer turn answers
        reply_to = payload.get("reply_to_message_id", payload.get("reply_to"))
        sorry = ReplyJob(
            key=f"sorry:{turn}",
            chat_id=chat_id,
            chat_type=str(payload.get("chat_type") or "private"),
            user_id=None,
            reply_to_message_id=int(reply_to) if isinstance(reply_to, int | str) else None,
            started_at=time.time(),
            paced=False,
            text=texts.GENERATION_FAILED,
            message_thread_id=turn_topic(turn),
        )
        if payload.get("kind") != "reply" or not str(payload.get("key", "")).startswith("sorry:"):
            await queue.enqueue(self._replies(chat_id), sorry.to_payload(), sorry.key)
        await self.finish(chat_id, turn, "dropped")

    # --- a long queue for the model -------------------------------------------------------------

    async def notify_busy(
        self, queue: JobQueue, turn: TurnJob, chat_type: str, text: str, thread: int | None = None
    ) -> bool:
        """Tell the user once that this turn's reply will take a while; True if newly queued.

        Keyed like the dead letter's `sorry:<turn>`, by the chat and its oldest unanswered message
        (`busy:<chat>:<first_at>`): a turn job run again (crash, takeover) finds the key and
        queues nothing, and neither does the next turn of a superseded one (a user who writes
        again while waiting is not told twice). The notice is a courtesy, not an answer: it
        settles nothing, is not stored in the history, and does not reply to a message; in a
        forum it goes to the turn's topic (`thread`).
        """
        notice = ReplyJob(
            key=notice_key(turn),
            chat_id=turn.chat_id,
            chat_type=chat_type,
            user_id=None,
            reply_to_message_id=None,
            started_at=time.time(),
            paced=False,
            text=text,
            notice=True,
            message_thread_id=thread,
        )
        replies = self._replies(turn.chat_id)
        return await queue.enqueue(replies, notice.to_payload(), notice.key) is not None

    async def decline(
        self,
        queue: JobQueue,
        job: Job,
        turn: TurnJob,
        chat_type: str,
        user_id: int | None,
        text: str,
    ) -> bool:
        """Answer the turn with `text` instead of generating (the model's queue is too long).

        The decline is the turn's reply (`decline:<turn>`), handed over from the turn job under
        the turn's guard, so it is delivered once and settles the turn like any reply: its
        messages are answered by it, and nothing is generated for them. False if the turn no
        longer owns its chat (nothing handed on).
        """
        reply = ReplyJob(
            key=f"decline:{turn.turn}",
            chat_id=turn.chat_id,
            chat_type=chat_type,
            user_id=user_id,
            reply_to_message_id=turn.reply_to,
            started_at=turn.first_at or time.time(),
            paced=False,
            text=text,
            turn=turn.turn,
        )
        entry = await queue.hand_over(
            job,
            UPDATES_GROUP,
            self._replies(turn.chat_id),
            reply.to_payload(),
            reply.key,
            guard=self.guard(turn.chat_id, turn.turn),
        )
        return entry is not None

    # --- leases --------------------------------------------------------------------------------

    async def sweep_leases(self, limit: int = 100) -> tuple[int, int]:
        """Renew the leases of turns whose job is alive; release those whose job is gone, in
        every shard (up to `limit` conversations each).

        Returns (renewed, released). Any worker may run it: every step is owner-checked.
        """
        swept = await asyncio.gather(
            *(self._sweep_shard(shard, limit) for shard in self.keys.all_shards)
        )
        return sum(r for r, _ in swept), sum(r for _, r in swept)

    async def _sweep_shard(self, shard: int, limit: int) -> tuple[int, int]:
        k = self.keys
        held = k.turns_held(shard)
        conversations = await self._expiring(keys=[held], args=[TURN_LEASE_SECONDS / 2, limit])
        renewed = released = 0
        for conversation in conversations:
            chat, topic = parse_conversation(conversation)
            state = k.chat_state(chat, topic)
            turn, stream, entry = (
                _text(v)
                for v in await self.redis.hmget(state, ["turn", "stage_stream", "stage_id"])
            )
            if turn is None or stream is None or entry is None:
                await self._forget_held(keys=[state, held], args=[conversation])
                continue
            if await self._job_alive(stream, entry):
                renewed += int(
                    await self._renew(
                        keys=[state, held], args=[conversation, turn, entry, TURN_LEASE_SECONDS]
                    )
                )
            elif await self.finish(chat, turn, "lost", stage_id=entry):
                released += 1
                TURNS_RECOVERED.labels("lost_job").inc()
                log.warning("turn lost its job; chat queued again", chat_id=chat, turn=turn)
        return renewed, released

    def _replies(self, chat_id: int) -> str:
        """The replies stream of the chat's shard (where its turn's work goes last)."""
        return self.keys.stream_for("replies", chat_id)

    async def _job_alive(self, stream: str, entry: str) -> bool:
        """Is the entry unacknowledged in its stream's group (being worked on, or not read yet)?"""
        try:
            group = self.keys.group_of(stream)
        except KeyError:
            return False
        pending = await self.redis.xpending_range(stream, group, min=entry, max=entry, count=1)
        if pending:
            return True
        if not await self.redis.xrange(stream, min=entry, max=entry, count=1):
            return False  # trimmed or deleted: acknowledged long ago, or lost with Redis data
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:
            return True
        for info in groups:
            if info["name"] == group:
                return _entry_after(entry, str(info["last-delivered-id"]))
        return True  # the group does not exist yet: nobody has read the entry

    # --- recovery ------------------------------------------------------------------------------

    async def recover(self, unanswered: list[tuple[int, int, int | None]]) -> int:
        """Note each (chat, newest unanswered message id, its topic) from PostgreSQL; returns how
        many were new to Redis (its state was lost: restart without persistence, FLUSHALL,
        failover)."""
        recovered = 0
        for chat_id, message_id, topic in unanswered:
            if await self.note_message(chat_id, message_id, topic):
                recovered += 1
                TURNS_RECOVERED.labels("unanswered").inc()
                log.warning("unanswered stored message queued again", chat_id=chat_id)
        return recovered

    # --- the loop ------------------------------------------------------------------------------

    async def run_claims(self, stop: asyncio.Event) -> None:
        """Claim due turns every tick (any worker may; each claim happens once)."""
        await repeat_every(stop, TICK_SECONDS, self.claim_due, "turn scheduler cannot reach redis")

    async def run_sweeps(self, stop: asyncio.Event) -> None:
        """Look after the leases of turns in flight every second."""
        await repeat_every(stop, SWEEP_SECONDS, self.sweep_leases, "lease sweep cannot reach redis")


def notice_key(turn: TurnJob) -> str:
    """The busy notice's idempotency key: one per stretch of unanswered messages of a
    conversation."""
    return f"busy:{conversation_id(turn.chat_id, turn.topic)}:{turn.first_at:.6f}"


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _entry_after(entry: str, last_delivered: str) -> bool:
    def parse(raw: str) -> tuple[int, int]:
        millis, _, seq = raw.partition("-")
        return int(millis), int(seq or 0)

    return parse(entry) > parse(last_delivered)
