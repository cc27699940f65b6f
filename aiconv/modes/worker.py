"""`aiconv worker`: update and reply consumers, turn claims, the typing keeper, the poller, the
command menu.

Wiring only; what each part does lives in worker/. Never imports llama.cpp (modes/__init__.py).

Each stage reads one stream per shard (REDIS_SHARDS, aiconv/jobs/keys.py): one Consumer per shard
stream, the stage's consumers sharing one `Slots`, so a worker holds WORKER_CONCURRENCY jobs of a
stage however many shards there are. They run and drain together; "worker running" is logged once
every one of them has its group and reads.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import structlog

from aiconv.config import Settings
from aiconv.jobs.consumer import Consumer, Handler, Slots, consumer_name
from aiconv.jobs.keys import REPLIES_GROUP, UPDATES_GROUP, Stage
from aiconv.jobs.queue import Job
from aiconv.observability.loops import supervised
from aiconv.resources import Resources
from aiconv.store.repository import SchedulerStore
from aiconv.telegram.client import TelegramError
from aiconv.worker.capacity import CapacityView, Pacer, PacingPolicy
from aiconv.worker.commands import CommandMenu
from aiconv.worker.delivery import DeliveryHandler
from aiconv.worker.drafts import DraftSender
from aiconv.worker.maintenance import scheduled_jobs
from aiconv.worker.poller import Poller
from aiconv.worker.rate_limit import SendLimiter
from aiconv.worker.scheduler import EmbeddedScheduler
from aiconv.worker.turns import Turns
from aiconv.worker.typing_keeper import TypingKeeper
from aiconv.worker.updates import UpdateHandler, chat_lane

log = structlog.get_logger(__name__)


def main(settings: Settings, args: argparse.Namespace) -> int:
    from aiconv.modes.process import run_until_signalled

    settings.require_bot_token()
    return run_until_signalled(settings, ("worker",))


async def bot_username(resources: Resources) -> str | None:
    """Used to tell `/cmd@thisbot` from commands meant for other bots in groups."""
    try:
        me = await resources.bot.get_me()
    except TelegramError as error:
        log.warning(
            "getMe failed; group commands are accepted for any bot", error=type(error).__name__
        )
        return None
    username = me.get("username")
    return str(username) if username else None


async def run_worker(resources: Resources, stop: asyncio.Event, *, poll: bool) -> None:
    settings = resources.settings
    # Chat actions and messages share one Bot API budget.
    limiter = SendLimiter(resources.redis, resources.keys, settings.rate_limits)
    typing = TypingKeeper(resources.redis, resources.keys, resources.bot, limiter)
    maintenance = SchedulerStore(resources.store.pool, resources.reads)
    turns = Turns(resources.redis, resources.keys, settings.turns)
    pacer = Pacer(
        CapacityView(resources.redis, resources.keys),
        typing,
        turns,
        resources.queue,
        PacingPolicy(settings.busy_notice_seconds, settings.max_queue_wait_seconds),
    )
    options = settings.consumer_options(concurrency=settings.worker_concurrency)

    async def abandon(job: Job) -> None:
        """A turn whose job can never complete must not hold its chat; its user is told."""
        await turns.abandon(resources.queue, job.payload)

    # One name in every stream's group: this process, however many shards it reads.
    name = consumer_name()
    update_handler = UpdateHandler(resources, typing, turns, await bot_username(resources), pacer)
    delivery = DeliveryHandler(resources, typing, turns, limiter)

    def stage_consumers(stage: Stage, group: str, handler: Handler) -> list[Consumer]:
        """The stage's consumers, one per shard stream, sharing the stage's slots."""
        slots = Slots(options.concurrency)
        return [
            Consumer(
                resources.queue,
                stream,
                group,
                handler,
                name=name,
                lane_of=chat_lane,
                options=options,
                on_dead_letter=abandon,
                slots=slots,
            )
            for stream in resources.keys.stage_streams(stage)
        ]

    consumers = [
        *stage_consumers("updates", UPDATES_GROUP, update_handler),
        *stage_consumers("replies", REPLIES_GROUP, delivery),
    ]
    scheduler = EmbeddedScheduler(
        resources.redis,
        resources.keys,
        maintenance,
        name,
        scheduled_jobs(resources, maintenance, turns),
    )
    # Core: consuming, claiming turns, polling. Auxiliary (survive their own errors): typing,
    # the leases' sweep (another worker's sweep covers a pause), the scheduler, and the command
    # menu (registered once, retried with backoff; start-up never waits for it).
    loops = [
        *(consumer.run(stop) for consumer in consumers),
        announce_when_ready(consumers, stop, polling=poll, consumer=name),
        turns.run_claims(stop),
        supervised("turn_leases", lambda: turns.run_sweeps(stop), stop),
        supervised("typing", lambda: typing.run(stop), stop),
        supervised("scheduler", lambda: scheduler.run(stop), stop),
        supervised("command_menu", CommandMenu(resources.bot).register, stop),
    ]
    if settings.draft_interval is not None:  # REPLY_STYLE=draft
        drafts = DraftSender(
            resources.redis, resources.keys, resources.bot, limiter, settings.draft_interval
        )
        loops.append(supervised("drafts", lambda: drafts.run(stop), stop))
    if poll:
        loops.append(Poller(resources).run(stop))
    await asyncio.gather(*loops)


async def announce_when_ready(
    consumers: list[Consumer], stop: asyncio.Event, **fields: object
) -> None:
    """Log "worker running" once every consumer (each stage, each shard) reads its stream."""

    async def all_ready() -> None:
        for consumer in consumers:
            await consumer.ready.wait()

    ready = asyncio.ensure_future(all_ready())
    stopping = asyncio.ensure_future(stop.wait())
    waiting: list[asyncio.Future[Any]] = [ready, stopping]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if ready.done():
        log.info("worker running", streams=len(consumers), **fields)
    else:
        ready.cancel()
