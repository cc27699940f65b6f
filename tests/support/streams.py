"""Redis stream entries as a decoding client returns them, typed for the tests.

redis-py annotates stream replies for every client configuration (bytes or str, entries that
may be None); the tests' clients decode responses and read entries that exist, so the
entries are `(id, fields)` with str everywhere. Saying so once here keeps the tests typed.
"""

from __future__ import annotations

from typing import Any, cast

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys

Entry = tuple[str, dict[str, str]]


async def stream_entries(
    redis: RedisClient, stream: str, min: str = "-", max: str = "+", count: int | None = None
) -> list[Entry]:
    """The stream's entries from `min` to `max` (XRANGE), oldest first; [] if it has none."""
    return cast(list[Entry], await redis.xrange(stream, min=min, max=max, count=count) or [])


async def read_group(
    redis: RedisClient, group: str, consumer: str, stream: str, count: int | None = None
) -> list[Entry]:
    """New entries of one stream for `consumer` of `group` (XREADGROUP >); [] if none."""
    return _entries_of(await redis.xreadgroup(group, consumer, {stream: ">"}, count=count))


async def read_stream(
    redis: RedisClient,
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


async def generation_jobs(redis: RedisClient, keys: Keys, chat_id: int) -> list[dict[str, Any]]:
    """Every chat-turn generation job handed to ml for `chat_id` (its `turns`, `persona`, ...),
    oldest first, decoded from the generate stream."""
    # Imported here: the job codec is product code this typing helper otherwise never needs.
    from aiconv.jobs.codec import JobCodec

    stream = keys.stream_for("generate", chat_id)
    codec = JobCodec(None)
    jobs = []
    for _, fields in await stream_entries(redis, stream):
        payload = codec.decode(stream, fields.get("job"))
        if payload is not None and payload.get("chat_id") == chat_id:
            jobs.append(payload)
    return jobs
