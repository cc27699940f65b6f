"""`aiconv worker`: update and reply consumers, turn claims, the typing keeper, the poller, the
command menu.

Wiring only; what each part does lives in worker/. Never imports llama.cpp (modes/__init__.py).
"""

from __future__ import annotations

import argparse
import asyncio

import structlog

from aiconv.config import Settings
from aiconv.jobs.consumer import Consumer
from aiconv.jobs.keys import REPLIES_GROUP, UPDATES_GROUP
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

    updates = Consumer(
        resources.queue,
        resources.keys.updates,
        UPDATES_GROUP,
        UpdateHandler(resources, typing, turns, await bot_username(resources), pacer),
        lane_of=chat_lane,
        options=options,
        on_dead_letter=abandon,
    )
    replies = Consumer(
        resources.queue,
        resources.keys.replies,
        REPLIES_GROUP,
        DeliveryHandler(
            resources,
            typing,
            turns,
            limiter,
        ),
        lane_of=chat_lane,
        options=options,
        on_dead_letter=abandon,
    )
    scheduler = EmbeddedScheduler(
        resources.redis,
        resources.keys,
        maintenance,
        updates.name,
        scheduled_jobs(resources, maintenance, turns),
    )
    # Core: consuming, claiming turns, polling. Auxiliary (survive their own errors): typing,
    # the leases' sweep (another worker's sweep covers a pause), the scheduler, and the command
    # menu (registered once, retried with backoff; start-up never waits for it).
    loops = [
        updates.run(stop),
        replies.run(stop),
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
    log.info("worker running", polling=poll, consumer=updates.name)
    await asyncio.gather(*loops)
