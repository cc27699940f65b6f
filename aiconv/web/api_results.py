"""/v1 results, read for every waiting request of a web process by ONE task on ONE connection.

Invariant: however many /v1 requests wait for ml, a web process holds at most one Redis
connection reading their results (the reader's blocking XREAD, while anyone waits) besides the
pool's short commands. Before, each waiting request ran its own blocking XREAD, and so held its
own connection for as long as it waited: a few hundred abandoned requests could exhaust Redis's
connections and take the webhook down with them (issue 13, item 1).

How: a request registers a `ResultWaiter` (its response stream, the last entry id seen, a queue
of events) before its job is queued. The reader XREADs every registered stream at once, and also
this process's wake stream: registering XADDs an entry there, so a reader blocked on the old set
of streams returns at once and reads again with the new one. Nothing can be missed either way:
a waiter starts at 0-0 and its stream keeps its entries until RESPONSE_TTL_SECONDS. A waiter
leaves when its request ends (answered, timed out, or its client gone), and at the latest when
its lifetime is over (a request that never got to end it leaks nothing for long); with no
waiter left the reader task ends and its connection goes back to the pool. A Redis error ends
every current wait with that error (those requests answer 503), as each request's own XREAD did
before.

On a Redis Cluster one XREAD over many keys needs them all in one hash slot: every response
stream of this reader and its wake stream carry the reader's hash tag (`Keys.api_response(reader,
id)`, `Keys.openai_reader_wake(reader)`, tag `{oai:<reader>}`), and the job tells ml the reader
(`reader_id`, in the job's payload) so that it writes its events there. The read stays one call
on one connection, to the node that holds the reader's slot; readers of different web processes
spread over the cluster by their random ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from redis.exceptions import RedisClusterException, RedisError

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.ml.protocol import RESPONSE_TTL_SECONDS

# What a Redis that cannot answer raises: a cluster client raises RedisClusterException (no
# RedisError) when no node or no owner of a slot can be reached.
REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

# The reader's XREAD returns at least this often even when nothing comes (a stop is noticed).
READ_BLOCK_MS = 5000
ENTRIES_PER_READ = 256

Event = dict[str, Any]
Decode = Callable[[str, Any], Event | None]

UNREADABLE: Event = {
    "type": "error",
    "status": 502,
    "code": "unreadable",
    "message": "the model's answer could not be read",
}

log = structlog.get_logger(__name__)


class ResultWaiter:
    """One request's place at the reader: the events of its response stream, in order."""

    def __init__(self, stream: str, expires_at: float) -> None:
        self.stream = stream
        self.expires_at = expires_at  # loop time after which the reader drops it
        self.last_entry_id = "0-0"
        self._events: asyncio.Queue[Event | RedisError] = asyncio.Queue()

    def deliver(self, item: Event | RedisError) -> None:
        self._events.put_nowait(item)

    async def next(self) -> Event:
        """The next event, or the reader's RedisError (the caller bounds the wait)."""
        item = await self._events.get()
        if isinstance(item, RedisError):
            raise item
        return item


class ResultReader:
    """The process's one reader of /v1 response streams (see the module docstring)."""

    def __init__(
        self, redis: RedisClient, keys: Keys, decode: Decode, block_ms: int = READ_BLOCK_MS
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.decode = decode
        self.block_ms = block_ms
        # Names this reader's hash slot: the jobs carry it to ml (see the module docstring).
        self.reader_id = uuid.uuid4().hex
        self.wake_stream = keys.openai_reader_wake(self.reader_id)
        self._wake_last_id = "0-0"
        self._waiters: dict[str, ResultWaiter] = {}  # response stream -> its waiter
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Requests registered now (a metric for tests and debugging)."""
        return len(self._waiters)

    async def open(self, request_id: str, lifetime_seconds: float) -> ResultWaiter:
        """Register a request before its job is queued; RedisError if the reader cannot be woken."""
        expires_at = asyncio.get_running_loop().time() + lifetime_seconds
        waiter = ResultWaiter(self.response_stream(request_id), expires_at)
        self._waiters[waiter.stream] = waiter
        if self._task is None or self._task.done():
            # A fresh reader's first XREAD already includes this waiter: no wake-up needed.
            self._task = asyncio.create_task(self._run(), name="openai-result-reader")
            return waiter
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_stream, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self.wake_stream, RESPONSE_TTL_SECONDS)
                await pipe.execute()
        except REDIS_FAILURES as error:
            self.close(waiter)
            raise _as_redis_error(error) from error
        return waiter

    def response_stream(self, request_id: str) -> str:
        """Where ml writes the events of a request this reader waits for."""
        return self.keys.api_response(self.reader_id, request_id)

    def close(self, waiter: ResultWaiter) -> None:
        """The request is over: its events are no longer read. Idempotent."""
        if self._waiters.get(waiter.stream) is waiter:
            del self._waiters[waiter.stream]

    @property
    def running(self) -> bool:
        """Whether the reader task is alive (it ends by itself once nobody waits)."""
        return self._task is not None and not self._task.done()

    async def aclose(self) -> None:
        """Stop the reader now (shutdown); waiting requests time out or are answered 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        # Ends when nobody waits: checked with no await between the check and the return, so a
        # waiter registered meanwhile either is seen by the next XREAD or starts a new reader.
        loop = asyncio.get_running_loop()
        while self._waiters:
            for stream in [s for s, w in self._waiters.items() if w.expires_at < loop.time()]:
                del self._waiters[stream]
            if not self._waiters:
                return
            streams = {self.wake_stream: self._wake_last_id}
            streams.update({stream: w.last_entry_id for stream, w in self._waiters.items()})
            try:
                response: Any = await self.redis.xread(
                    streams,  # type: ignore[arg-type]
                    count=ENTRIES_PER_READ,
                    block=self.block_ms,
                )
            except REDIS_FAILURES as error:
                log.warning("api result reader cannot reach redis", error=type(error).__name__)
                for waiter in self._waiters.values():
                    waiter.deliver(_as_redis_error(error))
                self._waiters.clear()  # each of them answers now; newcomers start a new reader
                return
            for stream, entries in response or []:
                if stream == self.wake_stream:
                    self._wake_last_id = entries[-1][0]
                    continue
                receiver = self._waiters.get(stream)
                if receiver is None:
                    continue  # its request ended while the read was under way
                for entry_id, fields in entries:
                    receiver.last_entry_id = entry_id
                    receiver.deliver(self.decode(stream, fields.get("event")) or UNREADABLE)


def _as_redis_error(error: Exception) -> RedisError:
    """A cluster's failure as the RedisError the requests answer 503 for."""
    return (
        error if isinstance(error, RedisError) else RedisError(f"{type(error).__name__}: {error}")
    )
