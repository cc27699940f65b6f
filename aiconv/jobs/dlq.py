"""The dead-letter stream: jobs that failed too often, kept with their error for operators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from aiconv.jobs.codec import PLAIN, JobCodec
from aiconv.jobs.keys import Keys


@dataclass(frozen=True)
class DeadJob:
    id: str  # the entry's id in the dead-letter stream
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
    def __init__(self, redis: Redis, keys: Keys, codec: JobCodec = PLAIN) -> None:
        self.redis = redis
        self.keys = keys
        self.codec = codec  # dead-letter records are sealed like any job (they hold its payload)

    async def count(self) -> int:
        return int(await self.redis.xlen(self.keys.dlq))

    async def list(self, limit: int = 100) -> list[DeadJob]:
        entries = await self.redis.xrange(self.keys.dlq, count=limit)
        return [self._decode(entry) for entry in entries or []]

    async def get(self, entry_id: str) -> DeadJob | None:
        entries = await self.redis.xrange(self.keys.dlq, min=entry_id, max=entry_id)
        return self._decode(entries[0]) if entries else None

    async def replay(self, entry_id: str) -> str | None:
        """Put the job back on its stream as a fresh delivery; returns the new entry id.

        A dead-lettered job released its chat's turn (and the user was told), so a replayed
        reply is delivered on its own, outside any turn. A replayed `turn` or `generate` job
        finds its turn released and ends without effect: the chat's next message starts a new
        turn as usual.
        """
        dead = await self.get(entry_id)
        if dead is None:
            return None
        payload = dict(dead.payload)
        if dead.stream == self.keys.replies:
            payload.pop("turn", None)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(dead.stream, {"job": self.codec.encode(dead.stream, payload)})
            pipe.xdel(self.keys.dlq, entry_id)
            new_id, _ = await pipe.execute()
        return str(new_id)

    async def drop(self, entry_id: str) -> bool:
        return bool(await self.redis.xdel(self.keys.dlq, entry_id))

    def _decode(self, entry: Any) -> DeadJob:
        entry_id, fields = entry
        return _decode(entry_id, self.codec.decode(self.keys.dlq, (fields or {}).get("job")))


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
