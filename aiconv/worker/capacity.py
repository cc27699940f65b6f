"""The worker's view of the model's capacity, and what a turn does about a long queue.

`CapacityView` reads what every live ml instance published (aiconv/ml/stats.py) and the backlog of
every generate stream ml works (each shard's and /v1's: they share its slots; XINFO GROUPS:
unread entries = jobs not yet started), one stream per call (on a cluster they lie in different
slots), at most once per
REFRESH_SECONDS per process, so a thousand messages a second cost a few Redis calls a second.
Between two reads it counts the generation jobs this process queued itself, so a burst of turns
within one second does not see the same empty queue a hundred times.

`Pacer` applies it, at two moments:
- a message is noted: "typing…" starts at once only if a new turn would start generating within
  TYPING_LEAD_SECONDS; otherwise nothing is sent yet (a person does not type to a thousand people
  at once, and the Bot API budget goes to replies);
- a turn is about to be queued for the model: its wait is estimated from its place in the queue
  (conversation/capacity.py). Beyond MAX_QUEUE_WAIT_SECONDS it is declined politely (turns.py
  `decline`: the decline answers it, nothing is generated, the messages stay stored). Beyond
  BUSY_NOTICE_SECONDS the user is told once (`notify_busy`) and the reply still comes. Typing is
  scheduled for when the generation is expected to start (ml pulls it forward if sooner).

Declines and notices need measured capacity: on the fallback guess (no ml has published yet)
nobody is declined or promised minutes; typing then follows the guess.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import structlog
from redis.exceptions import ResponseError

from aiconv.conversation import texts
from aiconv.conversation.capacity import (
    TYPING_LEAD_SECONDS,
    Estimate,
    MlCapacity,
    estimate_wait,
    minutes_to_say,
    service_rate,
)
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import GENERATE_GROUP, Keys
from aiconv.jobs.lag import group_lag
from aiconv.jobs.messages import TurnJob
from aiconv.jobs.queue import Job, JobQueue
from aiconv.observability.metrics import (
    BUSY_NOTICES,
    GENERATE_QUEUE_AHEAD,
    ML_CAPACITY,
    TURN_ESTIMATED_WAIT,
    TURNS_DECLINED,
)
from aiconv.worker.turns import Turns
from aiconv.worker.typing_keeper import TypingKeeper

REFRESH_SECONDS = 1.0

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Snapshot:
    instances: tuple[MlCapacity, ...]
    waiting: int  # generation jobs in the stream nobody has started (unread)
    in_progress: int  # read and not yet acknowledged
    due: int = 0  # chats whose turn waits to be claimed: each becomes a generation job first

    def estimate(self, extra_ahead: int = 0) -> Estimate:
        """The wait of a generation job queued now (behind everything waiting)."""
        return estimate_wait(self.waiting + extra_ahead, self.instances, self.in_progress)


@dataclass(frozen=True)
class PacingPolicy:
    busy_notice_seconds: float = 30.0  # 0: never
    max_queue_wait_seconds: float = 0.0  # 0: never decline


class CapacityView:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._cached: Snapshot | None = None
        self._read_at = -math.inf
        self._queued_since_read = 0
        self._noted_since_read = 0

    async def snapshot(self) -> Snapshot:
        if self._cached is None or time.monotonic() - self._read_at >= REFRESH_SECONDS:
            self._cached = await self._read()
            self._read_at = time.monotonic()
            self._queued_since_read = 0
            self._noted_since_read = 0
        return self._cached

    async def estimate(self) -> Estimate:
        """The wait of a generation job queued now, behind what this process just queued too."""
        snapshot = await self.snapshot()
        return snapshot.estimate(extra_ahead=self._queued_since_read)

    async def estimate_for_new_message(self) -> Estimate:
        """The wait of the turn a message noted now will get: behind the queued generation jobs
        and every chat whose turn is due (its own, if already there: over by one at most)."""
        snapshot = await self.snapshot()
        self._noted_since_read += 1
        ahead = self._queued_since_read + snapshot.due + self._noted_since_read - 1
        return snapshot.estimate(extra_ahead=ahead)

    def queued(self) -> None:
        """This process queued a generation job (seen by the next read of the stream)."""
        self._queued_since_read += 1

    async def _read(self) -> Snapshot:
        instances = await self._instances()
        waiting, in_progress = await self._backlog()
        due = await self._due()
        rate, _ = service_rate(instances)
        ML_CAPACITY.labels("instances").set(len(instances))
        ML_CAPACITY.labels("slots").set(sum(i.slots for i in instances))
        ML_CAPACITY.labels("busy").set(sum(i.busy for i in instances))
        ML_CAPACITY.labels("turns_per_second").set(sum(i.turns_per_second for i in instances))
        ML_CAPACITY.labels("tokens_per_second").set(sum(i.tokens_per_second for i in instances))
        ML_CAPACITY.labels("service_rate").set(rate)
        GENERATE_QUEUE_AHEAD.set(waiting)
        return Snapshot(tuple(instances), waiting, in_progress, due)

    async def _instances(self) -> list[MlCapacity]:
        names = await self.redis.zrange(self.keys.ml_instances, 0, -1)
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.ml_capacity(str(_text(name))))
            published = await pipe.execute()
        live = []
        for fields in published:
            parsed = MlCapacity.from_fields(_decoded(fields)) if fields else None
            if parsed is not None:
                live.append(parsed)  # an expired hash (a dead instance) reads empty: left out
        return live

    async def _due(self) -> int:
        """Chats waiting for a turn, in every shard (one ZCARD per shard: no cross-slot call)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.keys.all_shards:
                pipe.zcard(self.keys.turns_due(shard))
            counts = await pipe.execute()
        return sum(int(count) for count in counts)

    async def _backlog(self) -> tuple[int, int]:
        """(waiting, in progress) over every stream of generation jobs."""
        streams = (*self.keys.stage_streams("generate"), self.keys.openai_generate)
        backlogs = await asyncio.gather(*(self._backlog_of(stream) for stream in streams))
        return sum(w for w, _ in backlogs), sum(p for _, p in backlogs)

    async def _backlog_of(self, stream: str) -> tuple[int, int]:
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:
            return 0, 0  # no stream yet: nothing queued
        for info in groups:
            if _text(info.get("name")) != GENERATE_GROUP:
                continue
            return await group_lag(self.redis, stream, info), int(info.get("pending") or 0)
        return int(await self.redis.xlen(stream)), 0  # no ml has ever read it: all waiting


@dataclass(eq=False)  # a service: compared by identity
class Pacer:
    view: CapacityView
    typing: TypingKeeper
    turns: Turns
    queue: JobQueue
    policy: PacingPolicy

    async def message_noted(self, chat_id: int, thread: int | None = None) -> None:
        """Typing at once only if a turn for it would start generating within seconds."""
        estimate = await self.view.estimate_for_new_message()
        if estimate.seconds <= TYPING_LEAD_SECONDS:
            await self.typing.begin(chat_id, thread)

    async def before_generation(
        self,
        job: Job,
        turn: TurnJob,
        chat_type: str,
        user_id: int | None,
        thread: int | None = None,
    ) -> bool:
        """A turn is about to be queued for the model: False if it was declined instead (its
        job then handed on to delivery: the caller hands nothing more on)."""
        estimate = await self.view.estimate()
        TURN_ESTIMATED_WAIT.observe(estimate.seconds)
        bound = log.bind(chat_id=turn.chat_id, turn=turn.turn, wait=round(estimate.seconds, 1))
        limit = self.policy.max_queue_wait_seconds
        if estimate.measured and limit > 0 and estimate.seconds > limit:
            if await self.turns.decline(
                self.queue, job, turn, chat_type, user_id, texts.OVERLOADED
            ):
                TURNS_DECLINED.inc()
                bound.warning("turn declined: the model's queue is too long")
            await self.typing.end(turn.chat_id, turn.topic)
            return False
        notice = self.policy.busy_notice_seconds
        if estimate.measured and notice > 0 and estimate.seconds > notice:
            text = texts.busy_notice(minutes_to_say(estimate.seconds))
            if await self.turns.notify_busy(self.queue, turn, chat_type, text, thread):
                BUSY_NOTICES.inc()
                bound.info("user told of a long wait")
        await self.typing.begin_in(turn.chat_id, estimate.seconds - TYPING_LEAD_SECONDS, thread)
        self.view.queued()
        return True


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


def _decoded(fields: dict[object, object]) -> dict[str, str]:
    return {str(_text(k)): str(_text(v)) for k, v in fields.items()}
