"""Waiting between attempts: one backoff policy and one interruptible sleep for every loop.

Every retry loop waits with `Backoff` (exponential growth to a cap, full jitter), so many
processes that lost the same dependency at the same moment do not come back in lock-step and
hammer it together. Every loop that waits between rounds does it with `sleep_or_stop`, so a
graceful stop never waits out a sleep: the wait ends as soon as the stop event is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


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


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less if `stop` is set meanwhile. True when `stop` is set."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    return stop.is_set()
