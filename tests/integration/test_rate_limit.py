"""Send limits shared by workers whose clocks disagree, on a real Redis.

A worker's process clock is simulated by patching `time.time` to add a skew that belongs to the
running task (a context variable): tasks started "on" a skewed clock see that skew, all others
the real time. The limiter must not care: Redis's clock is the only one its shared state uses.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from aiconv.jobs.keys import Keys
from aiconv.worker.rate_limit import RateLimits, SendLimiter
from tests.support.clocks import on_clock, process_clocks
from tests.support.services import REDIS_URL, RUN_ID, delete_prefixed

LIMITS = RateLimits(global_per_second=10, chat_per_second=1, group_per_minute=20, group_burst=3)


@pytest.mark.parametrize("skew", [30.0, -30.0])
async def test_a_skewed_process_clock_does_not_move_the_limits(
    redis: Redis, redis_prefix: str, skew: float
) -> None:
    keys = Keys(redis_prefix)
    skewed, honest = SendLimiter(redis, keys, LIMITS), SendLimiter(redis, keys, LIMITS)
    clock = {skewed: skew, honest: 0.0}

    async def process_time() -> float:
        return time.time()

    with process_clocks():
        # The simulation itself: the skewed worker's clock really is off.
        assert await on_clock(skew, process_time()) == pytest.approx(time.time() + skew, abs=1)
        waits = [
            await on_clock(clock[limiter], limiter.reserve_chat(7, "private"))
            for limiter in (skewed, honest, skewed, honest)
        ]
        global_waits = [
            await on_clock(clock[limiter], limiter.reserve_global())
            for limiter in (skewed, honest) * 3
        ]
    # One a second in the chat, 10 a second overall, whichever worker asks and whatever its clock.
    assert waits == pytest.approx([0, 1, 2, 3], abs=0.2)
    assert global_waits == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5], abs=0.05)


def _model(chat_type: str, count: int) -> list[float]:
    """When each of `count` back-to-back sends may go, by the limits alone (first at 0)."""
    chat_tat = group_tat = 0.0
    starts = []
    group_interval = 60.0 / LIMITS.group_per_minute
    for _ in range(count):
        start = max(0.0, chat_tat)
        if chat_type in ("group", "supergroup"):
            start = max(start, group_tat - group_interval * (LIMITS.group_burst - 1))
            group_tat = max(group_tat, start) + group_interval
        chat_tat = max(chat_tat, start) + 1.0 / LIMITS.chat_per_second
        starts.append(start)
    return starts


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    skews=st.lists(st.floats(min_value=-120, max_value=120), min_size=2, max_size=3),
    order=st.lists(st.integers(min_value=0, max_value=2), min_size=2, max_size=7),
    chat_type=st.sampled_from(["private", "group", "supergroup"]),
)
def test_sends_of_one_chat_are_spaced_by_the_limits_whichever_worker_reserves(
    skews: list[float], order: list[int], chat_type: str
) -> None:
    prefix = f"aiconv-test-{RUN_ID}-{uuid.uuid4().hex[:6]}:"

    async def scenario() -> list[float]:
        redis = Redis.from_url(REDIS_URL, decode_responses=True)
        limiters = [SendLimiter(redis, Keys(prefix), LIMITS) for _ in skews]
        send_at = []
        try:
            for n in order:
                which = n % len(skews)
                before = time.monotonic()
                wait = await on_clock(skews[which], limiters[which].reserve_chat(9, chat_type))
                send_at.append((before + time.monotonic()) / 2 + wait)
        finally:
            await delete_prefixed(prefix)
            await redis.aclose()
        return send_at

    with process_clocks():
        send_at = asyncio.run(scenario())
    # Times relative to the first send match the limits' own schedule (a reservation's moment
    # is known to within the round trip to Redis).
    relative = [at - send_at[0] for at in send_at]
    assert relative == pytest.approx(_model(chat_type, len(order)), abs=0.25)
