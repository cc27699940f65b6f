"""How many entries of a stream its consumer group has not read yet (its lag).

Redis 7 says so in XINFO GROUPS (`lag`), except when entries were deleted inside the unread range
(it answers nil); Redis 6.2 (the embedded demo's) never does. Then the unread entries are counted
by hand, bounded: a gauge or an estimate that stops at LAG_COUNT_CAP is still the right signal,
and the count never costs more than one bounded XRANGE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiconv.jobs.client import RedisClient

LAG_COUNT_CAP = 10_000


async def group_lag(redis: RedisClient, stream: str, group: Mapping[Any, Any]) -> int:
    """The lag of one group of `stream`, given its XINFO GROUPS entry."""
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    last = group.get("last-delivered-id") or "0-0"
    last = last.decode() if isinstance(last, bytes) else str(last)
    unread = await redis.xrange(stream, min=f"({last}", max="+", count=LAG_COUNT_CAP)
    return len(unread or [])
