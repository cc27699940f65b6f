"""Dead letters: jobs that failed too often, kept with their error for operators.

Every job stream has its own dead-letter stream (`Keys.dlq`), in the stream's hash slot: the
consumer moves a job there in one script with the acknowledgement of its source entry, and a
replay puts it back on its stream in one MULTI, both single-slot on a Redis Cluster. Operators
see them as one list (oldest first) and one count across every stream of every shard.

A dead job's id names its dead-letter stream and its entry there, so it is unique across them
and round-trips through the admin API and the CLI: `<source>@<entry id>`, where `<source>` is
the stream's stage and shard (`updates.0`, `generate.2`, `replies.1`) or `generate:openai`
for the /v1 stream, e.g. `replies.1@1700000000000-0`. `DEAD_JOB_ID` is its pattern.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass
from typing import Any

from aiconv.jobs.client import RedisClient
from aiconv.jobs.codec import PLAIN, JobCodec
from aiconv.jobs.keys import STAGES, Keys

# `<source>@<millis>-<sequence>`: what `DeadLetters` answers and accepts (admin schema: the same).
DEAD_JOB_ID = (
    r"(?:(?:updates|generate|replies)\.[0-9]{1,5}|generate:openai)@[0-9]{1,20}-[0-9]{1,20}"
)
_DEAD_JOB_ID = re.compile(r"(?P<source>[a-z:.0-9]{1,40})@(?P<entry>[0-9]{1,20}-[0-9]{1,20})")


@dataclass(frozen=True)
class DeadJob:
    id: str  # `<source>@<entry id>`: its dead-letter stream and entry there (module docstring)
    stream: str  # where it came from, and where a replay sends it
    error: str
    deliveries: int
    failed_at: float
    payload: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stream": self.stream,
            "error": self.error,
            "deliveries": self.deliveries,
            "failed_at": self.failed_at,
            "payload": self.payload,
        }


class DeadLetters:
    def __init__(self, redis: RedisClient, keys: Keys, codec: JobCodec = PLAIN) -> None:
        self.redis = redis
        self.keys = keys
        self.codec = codec  # dead-letter records are sealed like any job (they hold its payload)
        # source name -> job stream, for every job stream of every shard
        self._streams = {_source_name(keys, stream): stream for stream in keys.job_streams}

    async def count(self) -> int:
        """Dead jobs in every dead-letter stream (one XLEN each: they lie in many slots)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for dlq in self.keys.dlqs:
                pipe.xlen(dlq)
            lengths = await pipe.execute()
        return sum(int(length) for length in lengths)

    async def list(self, limit: int = 100) -> list[DeadJob]:
        """The oldest `limit` dead jobs across every dead-letter stream, oldest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            # One read per stream (each in its own slot), merged by entry id: Redis time.
            for stream in self._streams.values():
                pipe.xrange(self.keys.dlq(stream), count=limit)
            replies = await pipe.execute()
        entries = [
            (_entry_order(str(entry_id)), source, entry_id, fields)
            for source, reply in zip(self._streams, replies, strict=True)
            for entry_id, fields in reply or []
        ]
        oldest = heapq.nsmallest(limit, entries, key=lambda entry: (entry[0], entry[1]))
        return [self._decode(source, entry_id, fields) for _, source, entry_id, fields in oldest]

    async def get(self, dead_id: str) -> DeadJob | None:
        found = self._locate(dead_id)
        if found is None:
            return None
        source, entry_id = found
        dlq = self.keys.dlq(self._streams[source])
        entries = await self.redis.xrange(dlq, min=entry_id, max=entry_id)
        return self._decode(source, *entries[0]) if entries else None

    async def replay(self, dead_id: str) -> str | None:
        """Put the job back on its stream as a fresh delivery; returns the new entry id.

        The job goes back to the stream its dead-letter stream belongs to (the same hash slot,
        so the MULTI is single-slot), whatever its record says.

        A dead-lettered job released its chat's turn (and the user was told), so a replayed
        reply is delivered on its own, outside any turn. A replayed `turn` or `generate` job
        finds its turn released and ends without effect: the chat's next message starts a new
        turn as usual.
        """
        dead = await self.get(dead_id)
        found = self._locate(dead_id)
        if dead is None or found is None:
            return None
        source, entry_id = found
        stream = self._streams[source]
        payload = dict(dead.payload)
        if self.keys.label(stream) == "replies":
            payload.pop("turn", None)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, {"job": self.codec.encode(stream, payload)})
            pipe.xdel(self.keys.dlq(stream), entry_id)
            new_id, _ = await pipe.execute()
        return str(new_id)

    async def drop(self, dead_id: str) -> bool:
        found = self._locate(dead_id)
        if found is None:
            return False
        source, entry_id = found
        return bool(await self.redis.xdel(self.keys.dlq(self._streams[source]), entry_id))

    def stream_of(self, dead_id: str) -> str | None:
        """The job stream a dead job's id belongs to (where a replay sends it), if any."""
        found = self._locate(dead_id)
        return None if found is None else self._streams[found[0]]

    def _locate(self, dead_id: str) -> tuple[str, str] | None:
        """(source name, entry id) of a dead job's id; None when it names no stream of ours."""
        match = _DEAD_JOB_ID.fullmatch(dead_id)
        if match is None or match["source"] not in self._streams:
            return None
        if any(int(part) >= 2**64 for part in match["entry"].split("-")):
            return None  # well formed, but no stream entry can have it
        return match["source"], match["entry"]

    def _decode(self, source: str, entry_id: Any, fields: Any) -> DeadJob:
        dlq = self.keys.dlq(self._streams[source])
        record = self.codec.decode(dlq, (fields or {}).get("job"))
        return _decode(f"{source}@{entry_id}", record)


def _source_name(keys: Keys, stream: str) -> str:
    """`updates.0` for a sharded stage stream, `generate:openai` for the /v1 stream."""
    for stage in STAGES:
        for shard in keys.all_shards:
            if stream == keys.stream(stage, shard):
                return f"{stage}.{shard}"
    return keys.label(stream)


def _entry_order(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def _decode(entry_id: Any, record: dict[str, Any] | None) -> DeadJob:
    """Read a dead-letter record; a damaged (or unreadable) one is still listed, never an error."""
    if record is None:
        record = {"error": "unreadable dead-letter record"}
    payload = record.get("payload")
    return DeadJob(
        id=str(entry_id),
        stream=str(record.get("stream", "")),
        error=str(record.get("error", "")),
        deliveries=_number(record.get("deliveries"), int, 0),
        failed_at=_number(record.get("failed_at"), float, 0.0),
        payload=payload if isinstance(payload, dict) else {},
    )


def _number(value: Any, kind: type[Any], default: Any) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return default
