"""A consumer-group reader that runs jobs concurrently, in order within a lane.

Jobs of one lane (a chat) run one after another in stream order; jobs of different lanes run
side by side up to `concurrency`. A job is acknowledged only after its handler returns.

Visibility: from the moment a job is read or claimed until it is settled (acknowledged, handed
over, dead-lettered, or given up at the end of a drain), a heartbeat task refreshes its entry's
idle time (XCLAIM JUSTID to ourselves, which does not count a delivery). The heartbeat lives
until the last job is settled, graceful drain included, so the visibility timeout only has to
outlast a dead consumer, never the slowest job or the drain: no live job is claimed by another
consumer.

Take-over: entries idle past the visibility timeout belong to a dead consumer and are claimed
with XAUTOCLAIM whatever our own load. Redis scans at most 10 × COUNT pending entries per call,
so the cursor is kept from call to call (a pass restarts at 0-0 once Redis returns 0-0) and each
round makes up to `_CLAIM_CALLS_PER_ROUND` calls: a dead consumer's jobs are all taken within
the visibility timeout plus a claim interval. Claimed jobs beyond our free slots wait locally for
a slot; the heartbeat keeps them ours meanwhile. Consumers idle for long with nothing pending are
removed from the group. The check and the removal are one script, so a consumer that has just
read something is kept (its pending entries would go with it); removing a live consumer that has
nothing pending loses nothing, Redis adds it back on its next delivery.

Attempts: an outage (see `aiconv.jobs.errors`) is waited out with backoff and never counted; the
job's own failures and deliveries that ended without an ack (crashes) count toward
`max_deliveries`, after which the job moves to its stream's dead-letter stream (`Keys.dlq`,
in the stream's hash slot).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from redis.exceptions import RedisError, ResponseError

from aiconv.jobs.errors import REDIS_OUTAGES, TRANSIENT_ERRORS, DependencyUnavailable
from aiconv.jobs.queue import Job, JobQueue
from aiconv.jobs.retry import Backoff, sleep_or_stop
from aiconv.observability.metrics import JOB_DURATION, JOBS

__all__ = [
    "TRANSIENT_ERRORS",
    "Backoff",  # re-exported: imported from here by older callers
    "Consumer",
    "ConsumerOptions",
    "DependencyUnavailable",
    "Slots",
    "consumer_name",
]

Handler = Callable[[Job], Awaitable[None]]
LaneOf = Callable[[Job], str | None]

log = structlog.get_logger(__name__)


# Reading cannot go on: waited out with backoff, the group recreated afterwards if need be.
_REDIS_DOWN: tuple[type[BaseException], ...] = (*REDIS_OUTAGES, OSError)
# At most this many entries per read (one reply stays small).
_READ_BATCH = 32
# XAUTOCLAIM calls per claim round: each scans up to 10 x COUNT pending entries.
_CLAIM_CALLS_PER_ROUND = 10
# Removes the group's consumers idle longer than ARGV[2] ms with nothing pending, except
# ARGV[3] (ourselves). One script, so a consumer that reads between the check and the delete
# (and would lose its pending entries with it) cannot exist. Returns the removed names.
# KEYS: stream; ARGV: group, idle bound ms, own name.
_FORGET_IDLE_CONSUMERS = """
local removed = {}
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(removed, info['name'])
  end
end
return removed
"""


class Slots:
    """How many jobs the consumers of one stage hold at once (read or claimed, waiting or
    running), and how many run: shared by a stage's consumers, one per shard stream, so that a
    process takes on `size` jobs of that stage however many shards there are.

    A consumer reserves slots *before* it reads and reads at most that many entries, giving back
    what it did not get: two consumers reading at once can then never hold more than `size`
    reads together (checking `free` and reading after would let each fill the same free slots).
    A consumer waiting on an empty stream holds one slot only, so the stage's other streams keep
    the rest. Waiters are served first come, first served, and a slot given back is handed
    straight to the oldest waiter: a consumer that just gave one back cannot take it again
    ahead of another that has been waiting. Claimed jobs (a dead consumer's) are taken whatever
    is free, so `held` may exceed `size` then; `running` still bounds how many run.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a stage needs at least one slot")
        self.size = size
        self.held = 0
        self.running = asyncio.Semaphore(size)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def free(self) -> int:
        return self.size - self.held

    @property
    def waiting(self) -> int:
        """Consumers waiting for a slot."""
        return len(self._waiters)

    async def reserve(self, wanted: int, wait_seconds: float) -> int:
        """Hold up to `wanted` free slots (at least one), waiting up to `wait_seconds` for
        one; returns how many were taken (0: none came in time)."""
        if not self._waiters and self.free > 0:
            return self._take_free(wanted)
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(handed)
        try:
            await asyncio.wait([handed], timeout=wait_seconds)
        except BaseException:
            if handed.done() and not handed.cancelled():
                self.give_back(1)  # handed to us as we were cancelled: not ours to keep
            raise
        finally:
            if not handed.done():
                handed.cancel()
                self._waiters.remove(handed)
        if handed.cancelled():
            return 0
        return 1 + (0 if self._waiters else self._take_free(wanted - 1))

    def take(self) -> None:
        """Hold one more job, free slot or not (a claimed job)."""
        self.held += 1

    def give_back(self, count: int = 1) -> None:
        self.held -= count
        while self._waiters and self.free > 0:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1  # reserved on the waiter's behalf before it runs again
                waiter.set_result(None)

    def _take_free(self, wanted: int) -> int:
        taken = max(0, min(wanted, self.free))
        self.held += taken
        return taken


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
    retry_max_seconds: float = 30.0  # also the longest wait between tries during an outage
    drain_seconds: float = 25.0  # graceful stop: how long in-flight jobs may finish
    claim_batch: int = 100  # XAUTOCLAIM COUNT, whatever our free slots
    # A consumer idle this long with nothing pending has died: it leaves the group.
    # None: 10 x the visibility timeout.
    forget_consumers_after: float | None = None

    @property
    def claim_interval(self) -> float:
        return max(0.5, min(self.visibility_timeout / 2, 5.0))

    @property
    def heartbeat_interval(self) -> float:
        return self.visibility_timeout / 3

    @property
    def forget_after(self) -> float:
        if self.forget_consumers_after is not None:
            return self.forget_consumers_after
        return 10 * self.visibility_timeout


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
        slots: Slots | None = None,
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
        # Metrics name stages, not keys: "updates", "generate", "generate:openai", "replies"
        # (the prefix and the shard left out, so a stage's shards add up under one label).
        self.stream_label = queue.keys.label(stream)
        self.ready = asyncio.Event()  # set once the group exists and reading has begun
        # Shared with the stage's other consumers when given; else `concurrency` of our own.
        self.slots = slots or Slots(self.options.concurrency)
        self._claim_cursor = "0-0"  # where the next XAUTOCLAIM continues its pass
        self._forget_idle = queue.redis.register_script(_FORGET_IDLE_CONSUMERS)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Read, claim and run jobs until `stop`; then drain. Heartbeats last until the end."""
        heartbeat = asyncio.create_task(self._keep_fresh(), name=f"heartbeat-{self.name}")
        try:
            await self._consume(stop)
            await self._drain()
        finally:
            # Not a graceful stop (run itself cancelled): whatever still runs is given up, so
            # that no job outlives its heartbeat.
            for task in self._tasks.values():
                task.cancel()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _consume(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.1, 5.0)
        last_claim = last_forget = 0.0
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.queue.ensure_group(self.stream, self.group)
                    self.ready.set()
                now = time.monotonic()
                if now - last_claim > self.options.claim_interval:
                    await self._claim_abandoned()
                    last_claim = now
                if now - last_forget > max(1.0, self.options.forget_after / 4):
                    await self._forget_dead_consumers()
                    last_forget = now
                await self._read_some()
                backoff.reset()
            except _REDIS_DOWN as error:
                self.ready.clear()
                delay = backoff.next()
                self._log.warning(
                    "redis unavailable, retrying",
                    error=type(error).__name__,
                    retry_in=round(delay, 2),
                )
                await sleep_or_stop(stop, delay)
            except ResponseError as error:
                if not _stream_lost(error):
                    raise
                # Redis restarted empty, or FLUSHALL: the group is recreated and reading goes on;
                # PostgreSQL's recovery sweep answers what the lost entries were for.
                self.ready.clear()
                self._log.warning("stream or group gone, recreating it", error=str(error)[:120])
                await sleep_or_stop(stop, backoff.next())

    async def _keep_fresh(self) -> None:
        """Refresh the idle time of every job we hold, until cancelled after the drain."""
        while True:
            await asyncio.sleep(self.options.heartbeat_interval)
            try:
                await self._heartbeat()
            except RedisError as error:
                # Retried next beat; a job whose entry goes idle meanwhile may be claimed.
                self._log.warning("heartbeat failed", error=type(error).__name__)

    async def _read_some(self) -> None:
        """Reserve slots, read at most that many new entries, give back the rest.

        What is there is taken at once; only when the stream is empty does the read block, and
        then with a single slot reserved, so the stage's other consumers keep the others.
        """
        reserved = await self.slots.reserve(_READ_BATCH, self.options.block_ms / 1000)
        if not reserved:
            return
        started = 0
        try:
            started = await self._read(reserved, block=None)
            if not started:
                self.slots.give_back(reserved - 1)
                reserved = 1
                started = await self._read(1, block=self.options.block_ms)
        finally:
            self.slots.give_back(reserved - started)

    async def _read(self, count: int, block: int | None) -> int:
        """Start up to `count` new entries on slots already reserved; returns how many."""
        response = await self.queue.redis.xreadgroup(
            self.group, self.name, {self.stream: ">"}, count=count, block=block
        )
        started = 0
        streams = cast(list[Any], response or [])
        for _stream, entries in streams:
            for entry_id, fields in entries:
                if fields is None:  # deleted while pending
                    continue
                job = self.queue.decode_entry(self.stream, entry_id, fields, deliveries=1)
                started += self._start(job, reserved=True)
        return started

    def _start(self, job: Job, *, reserved: bool = False) -> bool:
        """Run `job` (False: it runs already). Its slot was reserved for it, or it takes one."""
        if job.id in self._tasks:
            return False
        lane = self.lane_of(job) if self.lane_of else None
        previous = self._lanes.get(lane) if lane is not None else None
        task = asyncio.create_task(self._process(job, previous), name=f"job-{job.id}")
        self._tasks[job.id] = task
        if not reserved:
            self.slots.take()
        if lane is not None:
            self._lanes[lane] = task
        task.add_done_callback(lambda t: self._forget(job.id, lane, t))
        return True

    def _forget(self, entry_id: str, lane: str | None, task: asyncio.Task[None]) -> None:
        if self._tasks.pop(entry_id, None) is not None:
            self.slots.give_back()
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
        async with self.slots.running:  # jobs beyond the free slots wait here, kept fresh
            if not await self._run_handler(job):
                return
            await self._settle(self.queue.ack, job, self.group)
        JOBS.labels(self.stream_label, "ok").inc()
        JOB_DURATION.labels(self.stream_label).observe(time.perf_counter() - started)

    async def _run_handler(self, job: Job) -> bool:
        """Run the handler until it succeeds (True) or the job is dead-lettered (False)."""
        # Deliveries before this one ended without an ack (a crash, a lost consumer): they
        # count as attempts. Outages met in this delivery do not.
        failures = job.deliveries - 1
        retry = Backoff(self.options.retry_base_seconds, self.options.retry_max_seconds)
        outage = Backoff(self.options.retry_base_seconds, self.options.retry_max_seconds)
        while True:
            try:
                await self.handler(job)
                return True
            except asyncio.CancelledError:
                log.info("job interrupted; left pending for another consumer")
                raise
            except TRANSIENT_ERRORS as error:
                # An outage, not a bad job: wait it out without spending the job's attempts.
                JOBS.labels(self.stream_label, "waiting").inc()
                delay = outage.next()
                log.warning(
                    "job waiting for a dependency",
                    error=type(error).__name__,
                    detail=str(error)[:200],
                    retry_in=round(delay, 2),
                )
            except Exception as error:
                outage.reset()
                failures += 1
                detail = f"{type(error).__name__}: {error}"[:500]
                log.error(
                    "job failed", error=type(error).__name__, detail=detail[:200], attempt=failures
                )
                if failures >= self.options.max_deliveries:
                    await self._settle(self._dead_letter, job, detail)
                    return False
                JOBS.labels(self.stream_label, "retried").inc()
                delay = retry.next()
            await asyncio.sleep(delay)

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
        """Take over entries idle past the visibility timeout, whatever our free slots.

        Continues the pass where the last round stopped and makes up to
        `_CLAIM_CALLS_PER_ROUND` calls, fewer when the pass ends (Redis returns 0-0).
        """
        min_idle_ms = int(self.options.visibility_timeout * 1000)
        count = max(1, self.options.claim_batch, self.slots.free)
        for _ in range(_CLAIM_CALLS_PER_ROUND):
            try:
                result = await self.queue.redis.xautoclaim(
                    self.stream,
                    self.group,
                    self.name,
                    min_idle_time=min_idle_ms,
                    start_id=self._claim_cursor,
                    count=count,
                )
            except ResponseError as error:
                if "NOGROUP" in str(error):
                    self.ready.clear()
                    self._claim_cursor = "0-0"
                    return
                raise
            cursor = result[0]
            self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            await self._take_over(
                [(entry_id, fields) for entry_id, fields in result[1] if fields is not None]
            )
            if self._claim_cursor == "0-0":
                return  # the pass is done; the next round starts a new one

    async def _take_over(self, entries: list[tuple[Any, Any]]) -> None:
        fresh = [(self._text(entry_id), fields) for entry_id, fields in entries]
        fresh = [(entry_id, fields) for entry_id, fields in fresh if entry_id not in self._tasks]
        if not fresh:
            return
        async with self.queue.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in fresh:
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            pendings = await pipe.execute()
        for (entry_id, fields), pending in zip(fresh, pendings, strict=True):
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            job = self.queue.decode_entry(self.stream, entry_id, fields, deliveries)
            if deliveries > self.options.max_deliveries:
                await self._dead_letter(job, "delivered too many times without completing")
            else:
                JOBS.labels(self.stream_label, "claimed").inc()
                self._log.warning("claimed abandoned job", job_id=entry_id, deliveries=deliveries)
                self._start(job)

    @staticmethod
    def _text(value: str | bytes) -> str:
        return value.decode() if isinstance(value, bytes) else value

    async def _forget_dead_consumers(self) -> None:
        """Remove consumers idle past `forget_after` with nothing pending (dead processes)."""
        bound_ms = int(self.options.forget_after * 1000)
        try:
            removed = await self._forget_idle(
                keys=[self.stream], args=[self.group, bound_ms, self.name]
            )
        except ResponseError as error:  # no stream or group yet: nothing to forget
            self._log.debug("cannot list consumers", error=str(error)[:200])
            return
        for name in removed:
            self._log.info("removed dead consumer from group", removed_consumer=self._text(name))

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
        await self.queue.hand_over(job, self.group, self.queue.keys.dlq(job.stream), record)
        JOBS.labels(self.stream_label, "dead_lettered").inc()
        self._log.error("job moved to dead-letter stream", job_id=job.id, error=error[:200])

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


def _stream_lost(error: ResponseError) -> bool:
    """The stream or its consumer group no longer exists (Redis lost its data; a blocked read
    answers UNBLOCKED when its stream is deleted meanwhile)."""
    text = str(error)
    return "NOGROUP" in text or "no such key" in text.lower() or "no longer exists" in text
