"""The turn and delivery protocol as a state machine, against the real Redis and the real scripts.

Four conversations (a turn answers one conversation: a chat, or one forum topic of it): a private
chat, and a forum chat's General conversation and two of its topics. The two chats lie in two
shards on the cluster run (each chat's work moves through its own shard's streams); the topics of
the forum share its shard, its message ids (one sequence per chat, each message in one topic) and
its set of noted ids. Users who write at any moment (in fragments, during any turn, in any topic),
two workers that read jobs from the real streams and may crash at any step (their jobs stay
pending and are claimed by the other), updates redelivered out of order, leases that run out, jobs
lost with Redis data, /reset (of a whole chat: every topic of it) and dead letters. The stages
below do what the worker's, ml's and delivery's handlers do, through the same `Turns` and
`JobQueue` calls, each in the conversation its turn id names; Telegram and PostgreSQL are
modelled in memory, and the model knows each message's topic on its own (it never asks the turn
id), so a turn answering in the wrong conversation is seen.

The model's queue may be normal, long (a turn tells its user once, `busy:...`, then goes on:
the notice is sent before the turn's hand-over, and a crash may fall in between) or too long (the
turn is declined: its reply is the decline, and nothing is generated for it).

Invariants, after every step: no part is sent twice; a conversation never has two turns sending
at once (the forum's topics may, side by side); every part goes to the topic of the conversation
it answers (`message_thread_id`: its turn's, found by the message it replies to); a turn's reply
was written from its conversation's history, which holds every message it covers; each
conversation's `noted` counts the messages noted in it, its `answered` only what a reply, an
apology or /reset answered, and its state, if any, expires (a state without a TTL is kept for
ever); at most one busy notice per turn; a declined turn is never generated nor answered by a
generated reply. Once everything is drained, per conversation: every noted message is covered by
a later reply of that conversation (a decline counts); the replies and apologies that settled its
turns answered each message once, in message order; it has answered all it noted; and no lock,
lease or due entry outlives its work.

Every run starts with messages noted, users' messages are noted at once or later (`handled`), a
worker reads the next job of whichever stream has one, and one rule takes the uneventful path in a
step (the scheduler's tick, then the next job worked to its end): so turns go through every stage
while users still write and the other rules interleave, not only in the final drain.
`test_two_topics_of_one_chat_at_once` pins the plain case of the forum: two topics with a turn in
flight at the same moment, each answered in its own topic.
"""

from __future__ import annotations

import asyncio
import json
import types
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import aiconv.worker.turns as turns_module
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import GENERATE_GROUP, REPLIES_GROUP, STAGES, UPDATES_GROUP, Keys
from aiconv.jobs.messages import (
    GenerateJob,
    ReplyJob,
    TurnJob,
    parse_conversation,
    turn_conversation,
    turn_topic,
)
from aiconv.jobs.queue import Job, JobQueue, decode_entry
from aiconv.worker.turns import TurnConfig, Turns, notice_key
from tests.support.fuzzing import protocol_settings
from tests.support.redis_targets import RedisTarget, delete_prefixed_on
from tests.support.services import delete_prefixed
from tests.support.streams import Entry, read_group, stream_entries

pytestmark = pytest.mark.both_redis

PRIVATE, FORUM = 101, -100201  # shards 2 and 1 of the cluster's 3
CHATS = (PRIVATE, FORUM)
CHAT_TYPES = {PRIVATE: "private", FORUM: "supergroup"}
TOPICS = (5, 9)  # the forum's topics; None is its General conversation
CONVERSATIONS: tuple[tuple[int, int | None], ...] = (
    (PRIVATE, None),
    (FORUM, None),
    *((FORUM, topic) for topic in TOPICS),
)
WORKERS = (0, 1)
PARTS = 2  # every generated reply is sent in two parts


@dataclass
class InHand:
    """A job a worker has read and not yet settled; `part` is delivery's progress."""

    job: Job
    part: int = 0
    sent_any: bool = False


@dataclass(frozen=True)
class Sent:
    """A part as "Telegram" received it: in topic `thread`; `expected` is the topic of the
    conversation it answers, as the model knows it."""

    key: str
    part: int
    thread: int | None
    expected: int | None


@dataclass
class ChatModel:
    """What is per chat, whatever the topic: message ids."""

    next_id: int = 1
    topic_of: dict[int, int | None] = field(default_factory=dict)  # message -> its topic


@dataclass
class ConversationModel:
    """A chat, or one forum topic of it: what turns are per."""

    stored: list[int] = field(default_factory=list)  # "PostgreSQL": user messages, stored order
    noted: list[int] = field(default_factory=list)  # successful notes, in order
    reset_at: int = 0  # len(noted) at the last /reset: earlier messages need no answer
    covered: set[int] = field(default_factory=set)  # messages covered by a sent reply
    # The covers of each reply or apology that settled a turn (its finish took), as they settled.
    answers: list[int] = field(default_factory=list)
    sending: set[str] = field(default_factory=set)  # turns that sent a part and are not settled
    apologies_owed: set[str] = field(default_factory=set)  # dead-lettered turns, until told
    settled: int = 0  # most messages a finished or apologised turn (or /reset) may have answered


class TurnProtocol(RuleBasedStateMachine):
    target: RedisTarget  # set by the test: the single Redis or the cluster

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = self.target.client()
        self.keys = self.target.keys(f"aiconv-sm-{uuid.uuid4().hex[:8]}:")
        self.queue = JobQueue(self.redis, self.keys)
        shards = sorted({self.keys.shard_of(chat) for chat in CHATS})
        # The stage streams of the chats' shards; any worker reads any of them.
        self.streams = [self.keys.stream(stage, shard) for stage in STAGES for shard in shards]
        self.chats = {chat: ChatModel() for chat in CHATS}
        self.conversations = {where: ConversationModel() for where in CONVERSATIONS}
        self.hands: dict[int, list[InHand]] = {w: [] for w in WORKERS}
        self.incarnation = dict.fromkeys(WORKERS, 0)
        self.dead_consumers: set[str] = set()
        self.sent: list[Sent] = []  # as "Telegram" received them
        self.turn_covers: dict[str, int] = {}  # turn -> covers, from its turn job
        self.turn_history: dict[str, set[int]] = {}  # turn -> message ids its history held
        self.notice_topic: dict[str, int | None] = {}  # busy notice key -> its turn's topic
        self.load = "normal"  # the model's queue: normal, long (busy notice), too long (decline)
        self.declined: set[str] = set()  # turns answered by a decline
        self.generated: set[str] = set()  # turns whose generation ran
        self.turns = Turns(self.redis, self.keys, TurnConfig(0.0, 1000.0))
        for stream in self.streams:
            self.run(self.queue.ensure_group(stream, self.keys.group_of(stream)))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        if self.target.cluster:
            self.run(delete_prefixed_on(self.target, self.keys.prefix))
        else:
            self.run(delete_prefixed(self.keys.prefix))
        self.run(self.redis.aclose())
        self.loop.close()

    def stage_of(self, stream: str) -> str:
        return self.keys.label(stream)

    def shard_stream(self, stage: str, chat: int) -> str:
        return self.keys.stream(cast(Any, stage), self.keys.shard_of(chat))

    def held_sets(self) -> list[str]:
        return [self.keys.turns_held(s) for s in {self.keys.shard_of(c) for c in CHATS}]

    def due_sets(self) -> list[str]:
        return [self.keys.turns_due(s) for s in {self.keys.shard_of(c) for c in CHATS}]

    def consumer(self, worker: int) -> str:
        return f"w{worker}-{self.incarnation[worker]}"

    def of_turn(self, turn: str) -> ConversationModel:
        """The conversation the turn id names (as the handlers find it)."""
        return self.conversations[parse_conversation(turn_conversation(turn))]

    def topic_of(self, chat: int, message: int) -> int | None:
        """The topic the message was written in: the model's own knowledge, not the turn id's."""
        return self.chats[chat].topic_of[message]

    # --- configuration -------------------------------------------------------------------------

    @initialize(final=st.booleans())
    def configure(self, final: bool) -> None:
        """Every turn final (a user typing in fragments for long) or every turn active."""
        self.turns = Turns(self.redis, self.keys, TurnConfig(0.0, 0.0 if final else 1000.0))

    @initialize(first=st.lists(st.sampled_from(CONVERSATIONS), min_size=1, max_size=4))
    def users_have_written(self, first: list[tuple[int, int | None]]) -> None:
        """Every run starts with messages noted (a run whose rules leave out writing still has
        turns to take)."""
        for where in first:
            self.user_writes(where, handled=True)

    # --- users ---------------------------------------------------------------------------------

    @rule(where=st.sampled_from(CONVERSATIONS), handled=st.booleans())
    def user_writes(self, where: tuple[int, int | None], handled: bool) -> None:
        """A message is stored in its conversation, with the chat's next message id; a worker
        notes it at once (`handled`), or later (another worker, a redelivery)."""
        chat, topic = where
        model = self.chats[chat]
        message = model.next_id
        model.next_id += 1
        model.topic_of[message] = topic
        self.conversations[where].stored.append(message)
        if handled:
            self._note(chat, message)

    @rule(chat=st.sampled_from(CHATS), pick=st.integers(0, 1000))
    def worker_notes_a_stored_message(self, chat: int, pick: int) -> None:
        """Any stored message of the chat, in any of its topics, newest or older, first time or
        redelivered."""
        model = self.chats[chat]
        if not model.topic_of:
            return
        stored = sorted(model.topic_of)
        self._note(chat, stored[-1 - pick % min(3, len(stored))])

    def _note(self, chat: int, message: int) -> None:
        """The update names the message's topic; its note counts in that conversation only."""
        topic = self.topic_of(chat, message)
        model = self.conversations[(chat, topic)]
        if self.run(self.turns.note_message(chat, message, topic)):
            assert message not in model.noted
            model.noted.append(message)
        else:
            assert message in model.noted

    @rule(chat=st.sampled_from(CHATS))
    def user_resets(self, chat: int) -> None:
        """/reset, in any topic of the chat: every topic of the chat is forgotten."""
        for message in sorted(self.chats[chat].topic_of):
            # /reset stores nothing, but every update is noted first.
            if message not in self.conversations[(chat, self.topic_of(chat, message))].noted:
                self._note(chat, message)
        forgotten = self.run(self.turns.forget(chat))
        for (c, topic), model in self.conversations.items():
            if c != chat:
                continue
            assert topic in forgotten or not model.noted, (chat, topic, forgotten)
            model.reset_at = len(model.noted)
            model.settled = max(model.settled, len(model.noted))

    # --- the model's queue ----------------------------------------------------------------------

    @rule(load=st.sampled_from(["normal", "long", "too long"]))
    def the_model_queue_changes(self, load: str) -> None:
        self.load = load

    # --- the turn scheduler and the lease sweeper ----------------------------------------------

    @rule()
    def claim(self) -> None:
        self.run(self.turns.claim_due())

    @rule()
    def leases_run_out_and_are_swept(self) -> None:
        async def expire() -> None:
            for held_set in self.held_sets():
                held = cast(list[str], await self.redis.zrange(held_set, 0, -1))
                if held:
                    await self.redis.zadd(held_set, dict.fromkeys(held, 0))
            await self.turns.sweep_leases()

        self.run(expire())

    @rule(pick=st.integers(0, 100))
    def redis_loses_an_unread_job(self, pick: int) -> None:
        """A failover loses an entry nobody has read: its turn's lease is not renewed."""

        async def lose() -> None:
            stream = self.streams[pick % len(self.streams)]
            group = self.keys.group_of(stream)
            info = {g["name"]: g for g in await self.redis.xinfo_groups(stream)}
            last = info[group]["last-delivered-id"]
            unread = await stream_entries(self.redis, stream, min=f"({last}", max="+", count=1)
            if unread:
                self._forget_apology(unread[0][1])
                await self.redis.xdel(stream, unread[0][0])

        self.run(lose())

    @precondition(lambda self: any(self.hands.values()))
    @rule(worker=st.sampled_from(WORKERS), pick=st.integers(0, 100))
    def redis_loses_a_job_in_hand(self, worker: int, pick: int) -> None:
        """A failover loses a pending entry while a worker still works on it: its turn's lease
        runs out and the conversation may get a new turn while the old job's worker goes on."""
        hand = self.hands[worker]
        if not hand:
            return
        job = hand[pick % len(hand)].job
        self._forget_apology({"job": json.dumps(job.payload)})

        async def lose() -> None:
            await self.redis.xack(job.stream, self.keys.group_of(job.stream), job.id)
            await self.redis.xdel(job.stream, job.id)

        self.run(lose())

    def _forget_apology(self, fields: dict[str, str]) -> None:
        """An apology that failed for good (dead-lettered itself, or lost with Redis data) is
        not owed any more, and nothing more is done for its turn's messages: the end of the line
        for a job that fails definitely, so the model counts them as settled."""
        payload = json.loads(fields.get("job", "{}"))
        key = str(payload.get("key", ""))
        if key.startswith("sorry:"):
            turn = key.removeprefix("sorry:")
            model = self.of_turn(turn)
            model.apologies_owed.discard(turn)
            model.covered.update(model.noted[: self.turn_covers.get(turn, 0)])

    # --- workers -------------------------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS), which=st.integers(0, 5))
    def worker_reads(self, worker: int, which: int) -> None:
        """The next job of the first stream that has one, starting at any: a worker waits on
        several streams at once."""
        start = which % len(self.streams)
        for stream in self.streams[start:] + self.streams[:start]:
            entries = self.run(
                read_group(
                    self.redis, self.keys.group_of(stream), self.consumer(worker), stream, count=1
                )
            )
            for entry_id, fields in entries:
                self.hands[worker].append(InHand(decode_entry(stream, entry_id, fields, 1)))
            if entries:
                return

    @rule(worker=st.sampled_from(WORKERS), which=st.integers(0, 5))
    def worker_handles_the_next_job(self, worker: int, which: int) -> None:
        """The uneventful path in one step: the worker's scheduler tick claims what is due, and
        the worker reads the next job and works it to the end, no crash in between. So turns
        move through every stage while users still write (the rules around it break it up)."""
        self.claim()
        before = len(self.hands[worker])
        self.worker_reads(worker, which)
        if len(self.hands[worker]) > before:
            item = self.hands[worker][-1]
            while not self.run(self._step(item)):
                pass
            self.hands[worker].remove(item)

    @rule(worker=st.sampled_from(WORKERS))
    def worker_crashes(self, worker: int) -> None:
        """Its jobs stay pending under its old name; a new process starts."""
        self.dead_consumers.add(self.consumer(worker))
        self.hands[worker] = []
        self.incarnation[worker] += 1

    @rule(worker=st.sampled_from(WORKERS))
    def worker_claims_abandoned_jobs(self, worker: int) -> None:
        """The visibility timeout of a dead consumer's jobs has passed."""
        self.run(self._claim_dead(worker))

    async def _claim_dead(self, worker: int) -> None:
        for stream in self.streams:
            group = self.keys.group_of(stream)
            pending = await self.redis.xpending_range(stream, group, "-", "+", 100)
            ids: list[Any] = [
                p["message_id"] for p in pending if p["consumer"] in self.dead_consumers
            ]
            if not ids:
                continue
            claimed = cast(
                list[Entry], await self.redis.xclaim(stream, group, self.consumer(worker), 0, ids)
            )
            for entry_id, fields in claimed:
                if fields:
                    self.hands[worker].append(InHand(decode_entry(stream, entry_id, fields, 2)))

    @precondition(lambda self: any(self.hands.values()))
    @rule(worker=st.sampled_from(WORKERS), pick=st.integers(0, 100))
    def worker_steps(self, worker: int, pick: int) -> None:
        hand = self.hands[worker]
        if not hand:
            return
        item = hand[pick % len(hand)]
        done = self.run(self._step(item))
        if done:
            hand.remove(item)

    @precondition(lambda self: any(self.hands.values()))
    @rule(worker=st.sampled_from(WORKERS), pick=st.integers(0, 100))
    def job_dead_lettered(self, worker: int, pick: int) -> None:
        hand = self.hands[worker]
        if not hand:
            return
        item = hand.pop(pick % len(hand))
        if item.sent_any:  # delivery only fails before its first part in this model
            hand.append(item)
            return
        group = self.keys.group_of(item.job.stream)

        async def dead_letter() -> None:
            await self.turns.abandon(self.queue, item.job.payload)
            await self.queue.ack(item.job, group)

        turn = item.job.payload.get("turn")
        if isinstance(turn, str):
            model = self.of_turn(turn)
            model.sending.discard(turn)
            chat = int(item.job.payload["chat_id"])
            if self.run(self.turns.status(chat, turn)) != "lost":
                known = item.job.payload.get("covers", self.turn_covers.get(turn))
                assert known is not None, f"no covers known for {turn}"
                covers = int(known)
                self.turn_covers.setdefault(turn, covers)  # its turn stage may never have run
                model.settled = max(model.settled, covers)
                model.answers.append(covers)  # abandon's finish takes: the apology answers
                model.apologies_owed.add(turn)
        else:
            self._forget_apology({"job": json.dumps(item.job.payload)})  # an apology that failed
        self.run(dead_letter())

    # --- the stages, as the handlers do them ---------------------------------------------------

    async def _step(self, item: InHand) -> bool:
        job = item.job
        if self.stage_of(job.stream) == "updates":
            return await self._turn_stage(item)
        if self.stage_of(job.stream) == "generate":
            await self._generate_stage(job)
            return True
        return await self._delivery_step(item)

    async def _turn_stage(self, item: InHand) -> bool:
        """Two steps when the queue is long (the notice, then the hand-over). True when done."""
        job = item.job
        turn = TurnJob.from_payload(job.payload)
        # A turn answers the conversation of the newest message it covers, and names it.
        assert self.topic_of(turn.chat_id, turn.reply_to) == turn.topic, turn.turn
        self.turn_covers[turn.turn] = turn.covers
        status = await self.turns.status(turn.chat_id, turn.turn)
        if status == "stale":
            await self.turns.finish(turn.chat_id, turn.turn, "superseded")
        if status != "owner":
            await self.queue.ack(job, UPDATES_GROUP)
            return True
        chat_type = CHAT_TYPES[turn.chat_id]
        if self.load == "too long":
            if await self.turns.decline(self.queue, job, turn, chat_type, None, "declined"):
                self.declined.add(turn.turn)
            return True
        if self.load == "long" and item.part == 0:
            self.notice_topic[notice_key(turn)] = self.topic_of(turn.chat_id, turn.reply_to)
            await self.turns.notify_busy(self.queue, turn, chat_type, "busy", turn.topic)
            item.part = 1
            return False  # a crash here leaves the turn job pending: it runs again
        # PostgreSQL's view now: the history of the turn's topic (store.history(thread=...)).
        history = list(self.conversations[(turn.chat_id, turn.topic)].stored)
        self.turn_history[turn.turn] = set(history)
        gen = GenerateJob(
            turn=turn.turn,
            chat_id=turn.chat_id,
            chat_type=chat_type,
            user_id=None,
            reply_to_message_id=turn.reply_to,
            started_at=turn.first_at,
            turns=[("user", str(m)) for m in history],
        )
        await self.queue.hand_over(
            job,
            UPDATES_GROUP,
            self.shard_stream("generate", turn.chat_id),
            gen.to_payload(),
            gen.key,
            guard=self.turns.guard(turn.chat_id, turn.turn),
        )
        return True

    async def _generate_stage(self, job: Job) -> None:
        gen = GenerateJob.from_payload(job.payload)
        self.generated.add(gen.turn)
        live = await self.redis.get(self.keys.chat_live(gen.chat_id, turn_topic(gen.turn)))
        cancelled = live is not None and live != gen.turn
        reply = ReplyJob(
            key=f"reply:{gen.turn}",
            chat_id=gen.chat_id,
            chat_type=gen.chat_type,
            user_id=None,
            reply_to_message_id=gen.reply_to_message_id,
            started_at=gen.started_at,
            paced=True,
            text="" if cancelled else "|".join(["part"] * PARTS),
            turn=gen.turn,
            cancelled=cancelled,
        )
        await self.queue.hand_over(
            job,
            GENERATE_GROUP,
            self.shard_stream("replies", gen.chat_id),
            reply.to_payload(),
            reply.key,
            guard=self.turns.guard(gen.chat_id, gen.turn),
        )

    async def _delivery_step(self, item: InHand) -> bool:
        """One part at a time, so that crashes fall between parts. True when settled."""
        reply = ReplyJob.from_payload(item.job.payload)
        parts = reply.text.split("|") if reply.text else []
        if reply.turn is not None:
            model = self.of_turn(reply.turn)
            status = await self.turns.status(reply.chat_id, reply.turn)
            if status == "lost":
                model.sending.discard(reply.turn)  # it stops here, mid-reply if need be
                await self.queue.ack(item.job, REPLIES_GROUP)
                return True
            if reply.cancelled or (status == "stale" and not item.sent_any):
                await self.turns.finish(reply.chat_id, reply.turn, "superseded")
                await self.queue.ack(item.job, REPLIES_GROUP)
                return True
        record = self.keys.sent_parts(reply.chat_id, reply.key)
        if item.part < len(parts):
            index = item.part
            item.part += 1
            if await self.redis.hget(record, str(index)) is not None:
                item.sent_any = True
                return False
            # As delivery finds the topic (without its fallback for turns claimed before turns
            # were per topic: every turn here names its conversation).
            thread = reply.message_thread_id
            if thread is None and reply.turn is not None:
                thread = turn_topic(reply.turn)
            if reply.reply_to_message_id is not None:
                expected = self.topic_of(reply.chat_id, reply.reply_to_message_id)
            else:
                expected = self.notice_topic[reply.key]
            self.sent.append(Sent(reply.key, index, thread, expected))
            await self.redis.hset(record, str(index), 1)
            item.sent_any = True
            if reply.turn is not None:
                self.of_turn(reply.turn).sending.add(reply.turn)
            return False
        if reply.turn is not None:
            model = self.of_turn(reply.turn)
            covers = self.turn_covers[reply.turn]
            model.covered.update(model.noted[:covers])
            model.answers.append(covers)  # not lost (above): its finish takes
            model.settled = max(model.settled, covers)
            await self.turns.finish(reply.chat_id, reply.turn, "delivered")
            model.sending.discard(reply.turn)
        elif reply.key.startswith("sorry:"):
            turn = reply.key.removeprefix("sorry:")
            model = self.of_turn(turn)
            model.apologies_owed.discard(turn)
            model.covered.update(model.noted[: self.turn_covers.get(turn, 0)])
        await self.queue.ack(item.job, REPLIES_GROUP)
        return True

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def no_part_sent_twice(self) -> None:
        parts = [(sent.key, sent.part) for sent in self.sent]
        assert len(parts) == len(set(parts)), parts

    @invariant()
    def every_part_goes_to_its_conversations_topic(self) -> None:
        wrong = [sent for sent in self.sent if sent.thread != sent.expected]
        assert not wrong, wrong

    @invariant()
    def at_most_one_busy_notice_per_turn(self) -> None:
        """Queued once, not only sent once: delivery's own record would hide a second job."""
        keys = []
        for stream in self.streams:
            if self.stage_of(stream) == "replies":
                entries = self.run(self.redis.xrange(stream))
                keys += [json.loads(fields["job"]).get("key", "") for _, fields in entries]
        notices = [key for key in keys if key.startswith("busy:")]
        assert len(notices) == len(set(notices)), notices

    @invariant()
    def a_declined_turn_is_answered_by_the_decline_alone(self) -> None:
        assert not self.declined & self.generated, self.declined & self.generated
        replied = {s.key.removeprefix("reply:") for s in self.sent if s.key.startswith("reply:")}
        assert not self.declined & replied, self.declined & replied

    @invariant()
    def one_turn_sending_per_conversation(self) -> None:
        for where, model in self.conversations.items():
            assert len(model.sending) <= 1, (where, model.sending)

    @invariant()
    def a_reply_is_written_from_what_it_covers(self) -> None:
        """From its own conversation's history (the messages of the topic the model knows for
        them), which holds every message it covers."""
        for turn, history in self.turn_history.items():
            model = self.of_turn(turn)
            assert set(model.noted[: self.turn_covers[turn]]) <= history, turn
            chat, topic = parse_conversation(turn_conversation(turn))
            assert {self.topic_of(chat, m) for m in history} <= {topic}, (turn, history)

    @invariant()
    def each_conversation_counts_its_own(self) -> None:
        """`noted` is what was noted in the conversation; only a delivered reply, an apology or
        /reset makes its messages answered; its state, if it has one, expires some day."""

        async def states() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for chat, topic in CONVERSATIONS:
                    pipe.hgetall(self.keys.chat_state(chat, topic))
                    pipe.ttl(self.keys.chat_state(chat, topic))
                return await pipe.execute()

        found = self.run(states())
        for i, where in enumerate(CONVERSATIONS):
            model, state, ttl = self.conversations[where], found[2 * i], found[2 * i + 1]
            assert int(state.get("noted", 0)) == len(model.noted), (where, state)
            answered = int(state.get("answered", 0))
            assert answered <= model.settled, (where, answered, model.settled)
            assert ttl != -1, (where, state, "a state that never expires")

    def quiesce(self) -> None:
        """Everyone recovers, the users stop writing: run every stage until nothing is left."""
        for worker in WORKERS:
            self.worker_crashes(worker)
        for _ in range(400):
            self.claim()
            self.run(self._claim_dead(0))
            self.leases_run_out_and_are_swept()
            for which in range(len(self.streams)):
                self.worker_reads(0, which)
            if not self.hands[0]:
                due = sum(self.run(self.redis.zcard(key)) for key in self.due_sets())
                held = sum(self.run(self.redis.zcard(key)) for key in self.held_sets())
                if not due and not held:
                    return
                continue
            while self.hands[0]:
                self.worker_steps(0, 0)
        raise AssertionError("the protocol did not settle")

    def check_quiet(self) -> None:
        self.quiesce()
        for chat in CHATS:  # a message stored but never noted is the sweep's job
            for message in sorted(self.chats[chat].topic_of):
                self._note(chat, message)  # (those noted already: a redelivery, nothing changes)
        self.quiesce()
        for (chat, topic), model in self.conversations.items():
            where = (chat, topic)
            owed = set(model.noted[model.reset_at :])
            assert owed <= model.covered, (where, sorted(owed - model.covered))
            assert model.answers == sorted(set(model.answers)), (where, model.answers)
            assert not model.apologies_owed, (where, "dead-lettered turn without an apology")
            state = self.run(self.redis.hgetall(self.keys.chat_state(chat, topic)))
            assert "turn" not in state, (where, state)
            assert int(state.get("answered", 0)) == len(model.noted), (where, state)
            assert self.run(self.redis.get(self.keys.chat_live(chat, topic))) is None, where
        self.at_most_one_busy_notice_per_turn()  # recovery re-ran turn jobs in quiesce
        self.a_declined_turn_is_answered_by_the_decline_alone()
        self.every_part_goes_to_its_conversations_topic()
        for key in (*self.due_sets(), *self.held_sets()):
            assert self.run(self.redis.zcard(key)) == 0, key
        for stream in self.streams:
            pending = self.run(self.redis.xpending(stream, self.keys.group_of(stream)))
            assert pending["pending"] == 0, stream


class QuietAtTheEnd(TurnProtocol):
    """The same machine; at the end of every run, the quiescence invariants."""

    def teardown(self) -> None:
        try:
            self.check_quiet()
        finally:
            super().teardown()


@pytest.fixture
def skewed_process_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process clock the protocol could read is hours off: shared time is Redis's."""
    import random
    import time

    def skewed() -> float:
        return time.time() + random.uniform(-7200, 7200)

    fake = types.SimpleNamespace(time=skewed, monotonic=time.monotonic)
    monkeypatch.setattr(turns_module, "time", fake)


# The cluster run explores the same machine with fewer examples: each step is a few cluster
# round trips, and the interleavings it adds over the single run are only the shards'.
EXAMPLES = {"single": 400, "cluster": 100}


# A signal timeout would surface inside hypothesis as a failing example and start a shrink that
# is never interrupted again: the thread method ends the run loudly instead.
@pytest.mark.timeout(600, method="thread")
def test_turn_protocol_state_machine(
    skewed_process_clocks: None, redis_target: RedisTarget
) -> None:
    if redis_target.cluster:
        # Each chat in a shard of its own, on its own primary.
        assert len({redis_target.keys("x:").shard_of(chat) for chat in CHATS}) == len(CHATS)
    machine = type(f"QuietAtTheEnd_{redis_target.kind}", (QuietAtTheEnd,), {"target": redis_target})
    run_state_machine_as_test(
        machine,
        settings=protocol_settings(
            EXAMPLES[redis_target.kind], 50, also_suppress=(HealthCheck.filter_too_much,)
        ),
    )


async def test_two_topics_of_one_chat_at_once(redis: RedisClient, keys: Keys) -> None:
    """Two topics of one forum each get a turn at the same moment: both own their conversation
    at once, hand their work on under their own guards, and are answered each in its own
    topic. The forum's General conversation, with nothing noted, gets no turn."""
    turns = Turns(redis, keys, TurnConfig(0.0, 1000.0))
    queue = JobQueue(redis, keys)
    updates, replies = keys.stream_for("updates", FORUM), keys.stream_for("replies", FORUM)
    for stream in (updates, replies):
        await queue.ensure_group(stream, keys.group_of(stream))
    topic_of = {1: 5, 2: 9, 3: 5}  # message ids are the chat's, whatever the topic
    for message, topic in topic_of.items():
        assert await turns.note_message(FORUM, message, topic)
    assert await turns.claim_due() == 2

    claimed: dict[int | None, tuple[Job, TurnJob]] = {}
    for entry_id, fields in await read_group(redis, UPDATES_GROUP, "worker", updates):
        job = Job(updates, entry_id, json.loads(fields["job"]))
        turn = TurnJob.from_payload(job.payload)
        claimed[turn.topic] = (job, turn)
    assert set(claimed) == {5, 9}
    assert (claimed[5][1].reply_to, claimed[5][1].covers) == (3, 2)
    assert (claimed[9][1].reply_to, claimed[9][1].covers) == (2, 1)
    for _, turn in claimed.values():  # neither waits for the other
        assert await turns.status(FORUM, turn.turn) == "owner"
    held = await redis.zrange(keys.turns_held(keys.shard_of(FORUM)), 0, -1)
    assert sorted(held) == sorted([f"{FORUM}/5", f"{FORUM}/9"])
    assert "turn" not in await redis.hgetall(keys.chat_state(FORUM))

    for job, turn in claimed.values():
        reply = ReplyJob(
            key=f"reply:{turn.turn}",
            chat_id=FORUM,
            chat_type="supergroup",
            user_id=None,
            reply_to_message_id=turn.reply_to,
            started_at=turn.first_at,
            paced=True,
            text="answer",
            turn=turn.turn,
        )
        guard = turns.guard(FORUM, turn.turn)
        entry = await queue.hand_over(
            job, UPDATES_GROUP, replies, reply.to_payload(), reply.key, guard=guard
        )
        assert entry is not None, turn.turn

    # Both replies in delivery together, both turns still owning their topics; each reply goes
    # to the topic of the message it answers (as delivery finds it), and settles its own turn.
    in_delivery = [
        ReplyJob.from_payload(json.loads(fields["job"]))
        for _, fields in await read_group(redis, REPLIES_GROUP, "delivery", replies)
    ]
    assert len(in_delivery) == 2
    for reply in in_delivery:
        assert reply.turn is not None and reply.reply_to_message_id is not None
        assert await turns.status(FORUM, reply.turn) == "owner"
        thread = reply.message_thread_id
        if thread is None:
            thread = turn_topic(reply.turn)
        assert thread == topic_of[reply.reply_to_message_id], reply
    for reply in in_delivery:
        assert reply.turn is not None
        assert not await turns.finish(FORUM, reply.turn, "delivered")  # nothing more is due
    for topic, covers in ((5, 2), (9, 1)):
        state = await redis.hgetall(keys.chat_state(FORUM, topic))
        assert (int(state["noted"]), int(state["answered"])) == (covers, covers), (topic, state)
        assert "turn" not in state, (topic, state)
    assert await redis.zcard(keys.turns_held(keys.shard_of(FORUM))) == 0
    assert await redis.zcard(keys.turns_due(keys.shard_of(FORUM))) == 0


def test_job_payloads_round_trip() -> None:
    reply = ReplyJob(
        key="reply:-1001234567890123/42:2:3",
        chat_id=-1001234567890123,
        chat_type="supergroup",
        user_id=7,
        reply_to_message_id=2,
        started_at=1.5,
        paced=True,
        text="hi",
        turn="-1001234567890123/42:2:3",
        message_thread_id=42,
    )
    assert ReplyJob.from_payload(json.loads(json.dumps(reply.to_payload()))) == reply
    assert turn_topic(reply.turn or "") == 42
