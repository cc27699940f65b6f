"""Redis stream entries as a decoding client returns them, typed for the tests.

redis-py annotates stream replies for every client configuration (bytes or str, entries that
may be None); the tests' clients decode responses and read entries that exist, so the
entries are `(id, fields)` with str everywhere. Saying so once here keeps the tests typed.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

Entry = tuple[str, dict[str, str]]


async def stream_entries(
    redis: Redis, stream: str, min: str = "-", max: str = "+", count: int | None = None
) -> list[Entry]:
    """The stream's entries from `min` to `max` (XRANGE), oldest first; [] if it has none."""
    return cast(list[Entry], await redis.xrange(stream, min=min, max=max, count=count) or [])


async def read_group(
    redis: Redis, group: str, consumer: str, stream: str, count: int | None = None
) -> list[Entry]:
    """New entries of one stream for `consumer` of `group` (XREADGROUP >); [] if none."""
    return _entries_of(await redis.xreadgroup(group, consumer, {stream: ">"}, count=count))


async def read_stream(
    redis: Redis,
    stream: str,
    after: str = "0-0",
    count: int | None = None,
    block: int | None = None,
) -> list[Entry]:
    """Entries of one stream after `after` (XREAD), waiting up to `block` ms; [] if none."""
    return _entries_of(await redis.xread({stream: after}, count=count, block=block))


def _entries_of(reply: object) -> list[Entry]:
    # A read of one stream answers [[stream, entries]], or nothing when there was nothing new.
    if not reply:
        return []
    [(_, entries)] = cast(list[tuple[str, list[Entry]]], reply)
    return entries
