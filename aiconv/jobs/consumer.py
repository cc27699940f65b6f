"""A consumer-group reader that runs jobs concurrently, in order within a lane.

Jobs of one lane (a chat) run one after another in stream order; jobs of different lanes run
side by side up to `concurrency`. A job is acknowledged only after its handler returns. While a
job runs, its entry's idle time is refreshed (XCLAIM to ourselves), so the visibility timeout
only has to outlast a dead consumer, not the slowest job; entries idle past it are claimed back
from dead consumers with XAUTOCLAIM, and a job delivered too often goes to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiconv.jobs.queue import Job, JobQueue, decode_entry
from aiconv.observability.metrics import JOB_DURATION, JOBS

Handler = Callable[[Job], Awaitable[None]]
LaneOf = Callable[[Job], str | None]

log = structlog.get_logger(__name__)


# Failures of a dependency (Redis, PostgreSQL, the network) rather than of the job itself.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    psycopg.OperationalError,
    OSError,
)


class Backoff:
    """Exponential backoff with full jitter."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)


def consumer_name() -> str:
    """Unique per process, readable in XINFO: host-pid-random."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class ConsumerOptions:
    concurrency: int = 16
    block_ms: int = 1000
    # Idle time after which a dead consumer's job is claimed. Live consumers refresh their jobs'
    # idle time every third of it, so it need not outlast the slowest job.
    visibility_timeout: float = 30.0
    max_deliveries: int = 5  # attempts (failures and crashes) before the job goes to the DLQ
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    drain_seconds: float = 25.0  # graceful stop: how long in-flight jobs may finish


class Consumer:
    def __init__(
        self,
        queue: JobQueue,
        stream: str,
        group: str,
        handler: Handler,
        *,
        name: str | None = None,
        lane_of: LaneOf | None = None,
        options: ConsumerOptions | None = None,
        on_dead_letter: Handler | None = None,
    ) -> None:
        self.queue = queue
        self.stream = stream
        self.group = group
        self.handler = handler
        self.name = name or consumer_name()
        self.lane_of = lane_of
        self.options = options or ConsumerOptions()
        self.on_dead_letter = on_dead_letter  # e.g. release the chat the job was holding
        self._tasks: dict[str, asyncio.Task[None]] = {}  # entry id -> its task
        self._lanes: dict[str, asyncio.Task[None]] = {}  # lane -> its last task
        self._log = log.bind(stream=stream, group=group, consumer=self.name)
        # Metrics name streams without the key prefix: "updates", "generate", "replies".
        self.stream_label = stream.removeprefix(queue.keys.prefix)
        self.ready = asyncio.Event()  # set once the group exists and reading has begun

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        last_claim = last_heartbeat = 0.0
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.queue.ensure_group(self.stream, self.group)
                    self.ready.set()
                now = time.monotonic()
                if now - last_heartbeat > self.options.visibility_timeout / 3:
                    await self._heartbeat()
                    last_heartbeat = now
                if now - last_claim > max(1.0, self.options.visibility_timeout / 2):
                    await self._claim_abandoned()
                    last_claim = now
                free = self.options.concurrency - len(self._tasks)
                if free <= 0:
                    await self._wait_for_slot(stop)
                    continue
                await self._read(free)
                backoff = 0.1
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                self.ready.clear()
                self._log.warning(
                    "redis unavailable, retrying",
                    error=type(error).__name__,
                    retry_in=round(backoff, 2),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
        await self._drain()

    async def _read(self, free: int) -> None:
        response = await self.queue.redis.xreadgroup(
            self.group,
            self.name,
            {self.stream: ">"},
            count=min(free, 32),
            block=self.options.block_ms,
        )
        streams = cast(list[Any], response or [])
        for _stream, entries in streams:
            for entry_id, fields in entries:
                if fields is None:  # deleted while pending
                    continue
                self._start(decode_entry(self.stream, entry_id, fields, deliveries=1))

    def _start(self, job: Job) -> None:
        if job.id in self._tasks:
            return
        lane = self.lane_of(job) if self.lane_of else None
        previous = self._lanes.get(lane) if lane is not None else None
        task = asyncio.create_task(self._process(job, previous), name=f"job-{job.id}")
        self._tasks[job.id] = task
        if lane is not None:
            self._lanes[lane] = task
        task.add_done_callback(lambda t: self._forget(job.id, lane, t))

    def _forget(self, entry_id: str, lane: str | None, task: asyncio.Task[None]) -> None:
        self._tasks.pop(entry_id, None)
        if lane is not None and self._lanes.get(lane) is task:
            del self._lanes[lane]

    async def _process(self, job: Job, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own; we only keep the order
        # Every log line on this job's path carries its ids (contextvars are per task).
        structlog.contextvars.bind_contextvars(
            stream=self.stream,
            job_id=job.id,
            job_key=job.key,
            chat_id=job.payload.get("chat_id"),
            update_id=job.payload.get("update_id"),
        )
        started = time.perf_counter()
        if job.payload.get("invalid"):
            await self._settle(self._dead_letter, job, "unreadable job payload")
            return
        failures = job.deliveries - 1  # deliveries before this one ended without an ack
        backoff = Backoff(self.options.retry_base_seconds, self.options.retry_max_seconds)
        while True:
            try:
                await self.handler(job)
                break
            except asyncio.CancelledError:
                log.info("job interrupted; left pending for another consumer")
                raise
            except TRANSIENT_ERRORS as error:
                # An outage, not a bad job: wait it out without spending the job's attempts.
                JOBS.labels(self.stream_label, "waiting").inc()
                log.warning("job waiting for a dependency", error=type(error).__name__)
            except Exception as error:
                failures += 1
                detail = f"{type(error).__name__}: {error}"[:500]
                log.error(
                    "job failed", error=type(error).__name__, detail=detail[:200], attempt=failures
                )
                if failures >= self.options.max_deliveries:
                    await self._settle(self._dead_letter, job, detail)
                    return
                JOBS.labels(self.stream_label, "retried").inc()
            await asyncio.sleep(backoff.next())
        await self._settle(self.queue.ack, job, self.group)
        JOBS.labels(self.stream_label, "ok").inc()
        JOB_DURATION.labels(self.stream_label).observe(time.perf_counter() - started)

    async def _settle(self, action: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run an acknowledging Redis call, retrying through a Redis outage."""
        backoff = Backoff(self.options.retry_base_seconds, self.options.retry_max_seconds)
        while True:
            try:
                await action(*args)
                return
            except TRANSIENT_ERRORS as error:
                self._log.warning("cannot settle job yet", error=type(error).__name__)
                await asyncio.sleep(backoff.next())

    async def _heartbeat(self) -> None:
        ids = list(self._tasks)
        if ids:
            await self.queue.redis.xclaim(
                self.stream,
                self.group,
                self.name,
                min_idle_time=0,
                message_ids=list[Any](ids),
                justid=True,
            )

    async def _claim_abandoned(self) -> None:
        free = self.options.concurrency - len(self._tasks)
        if free <= 0:
            return
        min_idle_ms = int(self.options.visibility_timeout * 1000)
        try:
            result = await self.queue.redis.xautoclaim(
                self.stream,
                self.group,
                self.name,
                min_idle_time=min_idle_ms,
                start_id="0-0",
                count=free,
            )
        except ResponseError as error:
            if "NOGROUP" in str(error):
                self.ready.clear()
                return
            raise
        for entry_id, fields in result[1]:
            if entry_id in self._tasks or fields is None:
                continue
            deliveries = await self._deliveries(entry_id)
            job = decode_entry(self.stream, entry_id, fields, deliveries=deliveries)
            if deliveries > self.options.max_deliveries:
                await self._dead_letter(job, "delivered too many times without completing")
            else:
                JOBS.labels(self.stream_label, "claimed").inc()
                self._log.warning("claimed abandoned job", job_id=entry_id, deliveries=deliveries)
                self._start(job)

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self.queue.redis.xpending_range(
            self.stream, self.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _dead_letter(self, job: Job, error: str) -> None:
        with contextlib.suppress(Exception):
            if self.on_dead_letter is not None:
                await self.on_dead_letter(job)
        record: dict[str, Any] = {
            "stream": job.stream,
            "group": self.group,
            "id": job.id,
            "deliveries": job.deliveries,
            "error": error,
            "payload": job.payload,
            "failed_at": time.time(),
        }
        await self.queue.hand_over(job, self.group, self.queue.keys.dlq, record)
        JOBS.labels(self.stream_label, "dead_lettered").inc()
        self._log.error("job moved to dead-letter stream", job_id=job.id, error=error[:200])

    async def _wait_for_slot(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                [stopping, *self._tasks.values()],
                timeout=self.options.block_ms / 1000,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopping.cancel()

    async def _drain(self) -> None:
        """Let in-flight jobs finish; cancel the rest, which stay pending for others to claim."""
        if not self._tasks:
            return
        tasks = list(self._tasks.values())
        self._log.info("draining", in_flight=len(tasks))
        _, unfinished = await asyncio.wait(tasks, timeout=self.options.drain_seconds)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
