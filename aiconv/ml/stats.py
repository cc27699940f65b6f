"""Figures of each generation: Prometheus metrics, and the capacity this instance publishes.

Every ml instance publishes what it measured over the last WINDOW_SECONDS to Redis, one hash per
instance (`Keys.ml_capacity`), rewritten every PUBLISH_SECONDS with a TTL of CAPACITY_TTL_SECONDS:
an instance that dies or hangs vanishes from the sum within seconds, with nobody to clean up after
it. An index (`Keys.ml_instances`, scored by Redis `TIME`, never this process's clock) lets the
worker find the hashes without SCAN. The worker turns these figures into each waiting turn's
estimated wait (aiconv/conversation/capacity.py); durations inside the window are this process's
own monotonic clock, which is only ever compared with itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisClusterException, RedisError

from aiconv.conversation.capacity import MlCapacity
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.retry import repeat_every
from aiconv.ml.engine import Completion
from aiconv.observability.metrics import (
    GENERATION_SECONDS,
    GENERATIONS,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    TOKENS_PER_SECOND,
)

WINDOW_SECONDS = 60.0  # long enough to hold several generations, short enough to follow load
PUBLISH_SECONDS = 2.0
CAPACITY_TTL_SECONDS = 10.0  # several publications: one slow round trip does not drop it

log = structlog.get_logger(__name__)

# KEYS: the instance's hash, the index. ARGV: instance, ttl, then field/value pairs.
_PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'at', string.format('%.6f', now), unpack(fields))
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
redis.call('ZADD', KEYS[2], string.format('%.6f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.6f', now - ttl))
redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000))
"""


def observe(completion: Completion | None, outcome: str) -> None:
    """Prometheus figures of one generation; outcome: ok, failed or cancelled."""
    GENERATIONS.labels(outcome).inc()
    if completion is None:
        return
    TOKENS.labels("prompt").inc(completion.prompt_tokens)
    TOKENS.labels("completion").inc(completion.completion_tokens)
    if outcome != "ok":
        return
    GENERATION_SECONDS.observe(completion.seconds)
    if completion.first_token_seconds is not None:
        TIME_TO_FIRST_TOKEN.observe(completion.first_token_seconds)
    if completion.completion_tokens > 1:
        TOKENS_PER_SECOND.observe(completion.tokens_per_second)


@dataclass(frozen=True)
class _Finished:
    at: float  # monotonic
    seconds: float  # how long it held its slot
    tokens: int


class Throughput:
    """This instance's generations over the last WINDOW_SECONDS, and its slots in use."""

    def __init__(self, slots: int, window: float = WINDOW_SECONDS) -> None:
        self.slots = slots
        self.window = window
        self.busy = 0
        self._since = time.monotonic()
        self._finished: deque[_Finished] = deque()
        self._last_seconds: float | None = None  # kept through idle windows: speed is not load

    def calibrate(self, seconds: float) -> None:
        """A generation measured before serving (ml's warm-up): the speed to publish until real
        ones replace it, so that the first burst after a start is estimated on a measurement,
        not on the worker's guess (on a guess nobody is told to wait minutes)."""
        self._last_seconds = max(seconds, 1e-3)

    def started(self) -> None:
        self.busy += 1

    def ended(self, seconds: float, tokens: int, finished: bool) -> None:
        """A job left its slot; only a finished generation says how fast a slot serves."""
        self.busy = max(0, self.busy - 1)
        if finished:
            self._finished.append(_Finished(time.monotonic(), max(seconds, 0.0), tokens))

    def capacity(self) -> MlCapacity:
        now = time.monotonic()
        while self._finished and self._finished[0].at < now - self.window:
            self._finished.popleft()
        span = max(min(self.window, now - self._since), 1e-3)
        done = list(self._finished)
        if done:
            self._last_seconds = sum(f.seconds for f in done) / len(done)
        seconds = self._last_seconds
        return MlCapacity(
            slots=self.slots,
            busy=min(self.busy, self.slots),
            seconds_per_generation=max(seconds, 1e-3) if seconds is not None else None,
            turns_per_second=len(done) / span,
            tokens_per_second=sum(f.tokens for f in done) / span,
        )


@dataclass(eq=False)  # a service: compared by identity
class CapacityPublisher:
    redis: RedisClient
    keys: Keys
    instance: str
    throughput: Throughput

    def __post_init__(self) -> None:
        self._publish = self.redis.register_script(_PUBLISH)

    async def publish(self) -> None:
        fields = self.throughput.capacity().to_fields()
        args: list[str | float] = [self.instance, CAPACITY_TTL_SECONDS]
        for name, value in fields.items():
            args += [name, value]
        await self._publish(
            keys=[self.keys.ml_capacity(self.instance), self.keys.ml_instances], args=args
        )

    async def withdraw(self) -> None:
        """Stopping: the capacity is gone now, not in CAPACITY_TTL_SECONDS."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.ml_capacity(self.instance))
            pipe.zrem(self.keys.ml_instances, self.instance)
            await pipe.execute()

    async def run(self, stop: asyncio.Event) -> None:
        await repeat_every(stop, PUBLISH_SECONDS, self.publish, "capacity not published")
        # Failing that (a cluster out of reach too), the TTL withdraws it.
        with contextlib.suppress(RedisError, RedisClusterException):
            await self.withdraw()
