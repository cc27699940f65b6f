"""Waiting between attempts: one backoff policy and one interruptible sleep for every loop.

Every retry loop waits with `Backoff` (exponential growth to a cap, full jitter), so many
processes that lost the same dependency at the same moment do not come back in lock-step and
hammer it together. Every loop that waits between rounds does it with `sleep_or_stop`, so a
graceful stop never waits out a sleep: the wait ends as soon as the stop event is set. A loop
that repeats one Redis step on a fixed tick is `repeat_every`: an outage costs it rounds (each
logged), never the loop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(cap, base·2ⁿ)].

    `next()` returns the next delay and counts an attempt; `reset()` starts over after a success.
    """

    def __init__(self, base: float, cap: float) -> None:
        if base <= 0:
            raise ValueError("Backoff needs a positive base")
        self.base = base
        self.cap = max(cap, base)
        self.attempt = 0

    def ceiling(self) -> float:
        """The longest the next delay can be."""
        # Past ~64 doublings the float overflows; the cap has long been reached by then.
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 64))

    def next(self) -> float:
        ceiling = self.ceiling()
        self.attempt += 1
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


async def repeat_every(
    stop: asyncio.Event, seconds: float, step: Callable[[], Awaitable[object]], unreachable: str
) -> None:
    """Run `step` every `seconds` until `stop` is set. A Redis error skips that round, logged as
    a warning with `unreachable` as its event; the next tick tries again."""
    while not stop.is_set():
        try:
            await step()
        except RedisError as error:
            log.warning(unreachable, error=type(error).__name__)
        await sleep_or_stop(stop, seconds)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less if `stop` is set meanwhile. True when `stop` is set."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    return stop.is_set()
