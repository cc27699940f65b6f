"""The Redis Streams job layer: enqueue, hand over, acknowledge.

A job is one stream entry whose single field `job` holds JSON, sealed when ENCRYPTION_KEY is set
(`aiconv.jobs.codec`: every payload is encoded and decoded here, nowhere else). Producers that
must not enqueue twice pass an idempotency key: the SET NX of a `done:` marker and the XADD run
in one Lua script, so either both happen or neither (the marker lives in the target stream's
hash slot, `Keys.done`, so the script is single-slot on a Redis Cluster too). A stage hands its
result on with `hand_over`, which also XACKs the source entry in the same script: a crash can
never leave a job both acknowledged and lost.

Plain enqueues (the webhook's, one per Telegram update) are coalesced: those made while a round
trip is under way go together in the next pipeline, one script call each, so every one stays
atomic and answers for itself, and a burst costs a few round trips instead of one per update
(bench/ingest.py measures it). A caller waits for its own answer, error included. On a Redis
Cluster the pipeline is split by node (each script call is single-slot); a script the answering
node does not know (a replica promoted by a failover starts without scripts) is loaded and run
again for that call alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from aiconv.jobs.client import RedisClient
from aiconv.jobs.codec import PLAIN, JobCodec
from aiconv.jobs.keys import Keys
from aiconv.jobs.messages import conversation_id, turn_topic

# How long an idempotency marker outlives its job: longer than Telegram keeps retrying a webhook
# (24 h) so a late redelivery still finds it.
DONE_TTL_SECONDS = 2 * 24 * 3600
# A chat turn's lease: renewed while its job is alive (worker/turns.py), so it only bounds how long
# a turn whose work vanished keeps its chat waiting.
TURN_LEASE_SECONDS = 60.0
# At most this many coalesced enqueues in one pipeline (bounds one round trip's size).
ENQUEUE_BATCH = 256

# KEYS: target stream, then in this order those present: done marker, source stream, turn state
#   and turns held (both or neither). A key that is absent is left out, not passed as '': on a
#   Redis Cluster every key of a script must lie in one hash slot, and '' has a slot of its own.
# ARGV: ttl, job json, group, source id, turn, conversation (its member of turns held), lease,
#   then three flags ('1' or ''): a done marker, a source, a turn guard.
# With a turn guard, the next job is added only while that turn owns its chat; the turn's state
# then records where its work is (so its lease is renewed while that entry lives). The source is
# acknowledged either way: a stale turn's work simply ends.
_HAND_OVER = """
local next_key = 2
local done, source, state, held = false, false, false, false
if ARGV[8] == '1' then done = KEYS[next_key]; next_key = next_key + 1 end
if ARGV[9] == '1' then source = KEYS[next_key]; next_key = next_key + 1 end
if ARGV[10] == '1' then state = KEYS[next_key]; held = KEYS[next_key + 1] end
local id = false
local owner = true
if state then owner = redis.call('HGET', state, 'turn') == ARGV[5] end
if owner then
  local fresh = true
  if done then
    fresh = redis.call('SET', done, '1', 'NX', 'EX', ARGV[1])
  end
  if fresh then
    id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
    if state then
      local t = redis.call('TIME')
      local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
      redis.call('HSET', state, 'stage_stream', KEYS[1], 'stage_id', id)
      redis.call('ZADD', held, now + tonumber(ARGV[7]), ARGV[6])
    end
  end
end
if source then
  redis.call('XACK', source, ARGV[3], ARGV[4])
end
return id
"""


@dataclass(frozen=True)
class TurnGuard:
    """The chat turn a job works for: its hand-over happens only while the turn owns its
    conversation (the chat, or the forum topic the turn id names)."""

    chat_id: int
    turn: str

    @property
    def conversation(self) -> str:
        return conversation_id(self.chat_id, self.topic)

    @property
    def topic(self) -> int | None:
        return turn_topic(self.turn)


@dataclass(frozen=True)
class Job:
    stream: str
    id: str
    payload: dict[str, Any]
    deliveries: int = 1

    @property
    def key(self) -> str:
        return str(self.payload.get("key", self.id))


class JobQueue:
    def __init__(self, redis: RedisClient, keys: Keys, codec: JobCodec = PLAIN) -> None:
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self._hand_over = redis.register_script(_HAND_OVER)
        self._waiting: list[tuple[list[str], list[str | int | float], asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def ensure_group(self, stream: str, group: str) -> None:
        try:
            if isinstance(self.redis, RedisCluster):
                # Sent to the stream's node explicitly: redis-py's cluster client cannot always
                # find the key of XGROUP CREATE ("Missing key", seen while its command table
                # was being loaded by a concurrent first command).
                await self.redis.initialize()
                await self.redis.execute_command(
                    "XGROUP",
                    "CREATE",
                    stream,
                    group,
                    "0",
                    "MKSTREAM",
                    target_nodes=self.redis.get_node_from_key(stream),
                )
            else:
                await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def enqueue(
        self, stream: str, payload: dict[str, Any], idempotency_key: str | None = None
    ) -> str | None:
        """Add a job; with a key, a second enqueue of the same key is a no-op returning None."""
        keys, args = self._script_input(stream, payload, idempotency_key, None, None)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, args, answer))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return _entry_or_none(await answer)

    async def _flush(self) -> None:
        """Send what is waiting, a pipeline at a time, until nothing is left."""
        try:
            while self._waiting:
                batch = self._waiting[:ENQUEUE_BATCH]
                del self._waiting[:ENQUEUE_BATCH]
                await self._send(batch)
        finally:  # cancelled (shutdown): nobody may wait forever
            for _, _, answer in self._waiting:
                answer.cancel()
            self._waiting.clear()

    async def _send(
        self, batch: list[tuple[list[str], list[str | int | float], asyncio.Future[Any]]]
    ) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    pipe.evalsha(self._hand_over.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, _, answer in batch:
                answer.cancel()
            raise
        except Exception as error:  # the round trip failed: every caller in it learns why
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            return
        for (keys, args, answer), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted or flushed its scripts
                try:
                    result = await self._hand_over(keys=keys, args=args)  # loads it again
                except Exception as error:
                    result = error
            if answer.done():  # its caller gave up (cancelled)
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)

    async def enqueue_many(self, stream: str, payloads: list[dict[str, Any]]) -> list[str]:
        """Add jobs without idempotency keys in one round trip (bulk producers, benchmarks)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.xadd(stream, {"job": self.codec.encode(stream, payload)})
            ids = await pipe.execute()
        return [str(entry_id) for entry_id in ids]

    async def hand_over(
        self,
        source: Job,
        group: str,
        stream: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
        guard: TurnGuard | None = None,
    ) -> str | None:
        """Enqueue the next stage's job and acknowledge `source`, atomically.

        Returns the new entry's id, or None when nothing was added (the key was already handed
        on, or the guarding turn no longer owns its chat).
        """
        keys, args = self._script_input(stream, payload, idempotency_key, (source, group), guard)
        return _entry_or_none(await self._hand_over(keys=keys, args=args))

    def decode_entry(
        self, stream: str, entry_id: bytes | str, fields: dict[Any, Any], deliveries: int
    ) -> Job:
        return decode_entry(stream, entry_id, fields, deliveries, self.codec)

    async def ack(self, job: Job, group: str) -> None:
        await self.redis.xack(job.stream, group, job.id)

    async def trim(self, stream: str, keep_seconds: float) -> int:
        """Drop entries older than `keep_seconds` that every group has read and acknowledged.

        Streams are never capped at XADD: a length cap could drop unacknowledged work. Reading
        the groups and their pending summaries is not atomic; every interleaving with consumers
        reading and acknowledging meanwhile only keeps more, never drops pending work.
        """
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:
            return 0  # no such stream yet
        if not groups:
            return 0
        seconds, micros = await self.redis.time()  # stream ids are Redis time too
        floor = (seconds * 1000 + micros // 1000 - int(keep_seconds * 1000), 0)
        candidates = [floor]
        for group in groups:
            last = _entry_id(group["last-delivered-id"])
            candidates.append((last[0], last[1] + 1))  # entries after it are not read yet
            if int(group["pending"]) > 0:
                summary = await self.redis.xpending(stream, group["name"])
                # None when the entries were acknowledged since XINFO GROUPS: nothing pending
                # then, and any entry delivered since lies after `last-delivered-id` above.
                if summary.get("min") is not None:
                    candidates.append(_entry_id(summary["min"]))
        oldest_needed = min(candidates)
        # Groups' last-delivered ids are themselves delivered: keep from just after them.
        minid = f"{oldest_needed[0]}-{oldest_needed[1]}"
        return int(await self.redis.xtrim(stream, minid=minid, approximate=False))

    def _script_input(
        self,
        stream: str,
        payload: dict[str, Any],
        idempotency_key: str | None,
        source: tuple[Job, str] | None,
        guard: TurnGuard | None,
    ) -> tuple[list[str], list[str | int | float]]:
        k = self.keys
        keys = [stream]
        if idempotency_key:
            keys.append(k.done(stream, idempotency_key))
        if source:
            keys.append(source[0].stream)
        if guard:
            keys += [
                k.chat_state(guard.chat_id, guard.topic),
                k.turns_held(k.shard_of(guard.chat_id)),
            ]
        if len({key_slot(key.encode()) for key in keys}) > 1:
            # Refused on one Redis too, where it would work: the layout must hold everywhere.
            raise ValueError(f"one script may not touch keys of two hash slots: {keys}")
        args: list[str | int | float] = [
            DONE_TTL_SECONDS,
            self.codec.encode(stream, payload),
            source[1] if source else "",
            source[0].id if source else "",
            guard.turn if guard else "",
            guard.conversation if guard else "",
            TURN_LEASE_SECONDS,
            "1" if idempotency_key else "",
            "1" if source else "",
            "1" if guard else "",
        ]
        return keys, args


def _entry_or_none(result: Any) -> str | None:
    """The script's answer: the new entry's id, or None (Lua false) when nothing was added."""
    if result is None:
        return None
    return result.decode() if isinstance(result, bytes) else str(result)


def _entry_id(raw: str | bytes) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence or 0)


def decode_entry(
    stream: str,
    entry_id: bytes | str,
    fields: dict[Any, Any],
    deliveries: int,
    codec: JobCodec = PLAIN,
) -> Job:
    raw = fields.get(b"job", fields.get("job"))
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    payload = codec.decode(stream, raw)
    if payload is None:
        payload = {"invalid": True}
    return Job(stream=stream, id=entry, payload=payload, deliveries=deliveries)
