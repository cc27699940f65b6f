"""The embedded scheduler of worker mode: periodic jobs, each run exactly once across workers.

Every worker runs an APScheduler whose interval triggers are aligned to the epoch, so all of them
agree on when a run is due. Only the holder of the Redis leader lease (an owned `Lease`: only its
holder renews or releases it) executes jobs, and each run
also takes a per-slot Redis key with SET NX, so a leadership hand-over in the middle of an
interval still runs that slot once. Runs are recorded in `scheduled_runs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from redis.exceptions import RedisError

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.lease import Lease
from aiconv.jobs.retry import sleep_or_stop
from aiconv.observability.metrics import SCHEDULED_RUNS
from aiconv.store.repository import SchedulerStore

LEASE_SECONDS = 15.0
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    interval_seconds: float
    run: Callable[[], Awaitable[str | None]]  # returns a short detail for the record


@dataclass(eq=False)  # a service: compared by identity
class EmbeddedScheduler:
    redis: RedisClient
    keys: Keys
    maintenance: SchedulerStore
    runner: str
    jobs: list[ScheduledJob]
    leading: bool = field(default=False, init=False)
    _lease: Lease = field(init=False)

    def __post_init__(self) -> None:
        self._lease = Lease(self.redis, self.keys.scheduler_leader, self.runner, LEASE_SECONDS)

    async def run(self, stop: asyncio.Event) -> None:
        scheduler = AsyncIOScheduler(timezone=dt.UTC)
        for job in self.jobs:
            scheduler.add_job(
                self._execute,
                IntervalTrigger(seconds=job.interval_seconds, start_date=EPOCH),
                args=[job],
                id=job.name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(job.interval_seconds)),
            )
        scheduler.start()
        try:
            while not stop.is_set():
                await self._hold_lease()
                await sleep_or_stop(stop, LEASE_SECONDS / 3)
        finally:
            scheduler.shutdown(wait=False)
            if self.leading:
                self.leading = False
                with contextlib.suppress(RedisError):
                    await self._lease.release()

    async def _hold_lease(self) -> None:
        was_leading = self.leading
        try:
            self.leading = await self._lease.hold()
        except RedisError as error:
            self.leading = False
            log.warning("scheduler cannot reach redis", error=type(error).__name__)
        if self.leading != was_leading:
            log.info("scheduler leadership", leading=self.leading)

    async def _execute(self, job: ScheduledJob) -> None:
        if not self.leading:
            return
        slot = round(time.time() / job.interval_seconds)
        claimed = await self.redis.set(
            self.keys.scheduler_slot(job.name, slot),
            self.runner,
            nx=True,
            ex=max(60, int(job.interval_seconds * 3)),
        )
        if not claimed:
            return
        bound = log.bind(scheduled_job=job.name, slot=slot)
        run_id = await self.maintenance.record_run_start(job.name, slot, self.runner)
        try:
            detail = await job.run()
        except Exception as error:  # a failed run is recorded and retried next interval
            SCHEDULED_RUNS.labels(job.name, "failed").inc()
            bound.error("scheduled job failed", error=type(error).__name__, detail=str(error)[:200])
            await self.maintenance.record_run_end(run_id, "failed", str(error)[:500])
            return
        SCHEDULED_RUNS.labels(job.name, "ok").inc()
        bound.info("scheduled job done", detail=detail)
        await self.maintenance.record_run_end(run_id, "ok", detail)
