"""The worker mode's wiring: update and reply consumers, the typing keeper, the poller."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.exceptions import RedisError

from aiconv.jobs.consumer import Consumer
from aiconv.jobs.queue import Job
from aiconv.resources import Resources
from aiconv.telegram.client import TelegramError
from aiconv.worker.delivery import REPLIES_GROUP, DeliveryHandler
from aiconv.worker.poller import Poller
from aiconv.worker.rate_limit import SendLimiter
from aiconv.worker.turns import Turns
from aiconv.worker.typing_keeper import TypingKeeper
from aiconv.worker.updates import UPDATES_GROUP, UpdateHandler, chat_lane

# Acknowledged entries stay this long for inspection (XRANGE) before they are trimmed.
STREAM_RETENTION_SECONDS = 3600.0
TRIM_INTERVAL_SECONDS = 60.0

log = structlog.get_logger(__name__)


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
    typing = TypingKeeper(resources.redis, resources.keys, resources.bot)
    turns = Turns(resources.redis, resources.keys, settings.turns)
    options = settings.consumer_options(concurrency=settings.worker_concurrency)

    async def release_chat(job: Job) -> None:
        """A reply that can never be delivered must not hold its chat's turn."""
        await turns.finish(int(job.payload["chat_id"]), delivered=False)

    updates = Consumer(
        resources.queue,
        resources.keys.updates,
        UPDATES_GROUP,
        UpdateHandler(resources, typing, turns, await bot_username(resources)),
        lane_of=chat_lane,
        options=options,
    )
    replies = Consumer(
        resources.queue,
        resources.keys.replies,
        REPLIES_GROUP,
        DeliveryHandler(
            resources,
            typing,
            turns,
            SendLimiter(resources.redis, resources.keys, settings.rate_limits),
        ),
        lane_of=chat_lane,
        options=options,
        on_dead_letter=release_chat,
    )
    loops = [
        updates.run(stop),
        replies.run(stop),
        typing.run(stop),
        turns.run(stop),
        trim_streams(resources, stop),
    ]
    if poll:
        loops.append(Poller(resources).run(stop))
    log.info("worker running", polling=poll, consumer=updates.name)
    await asyncio.gather(*loops)


async def trim_streams(resources: Resources, stop: asyncio.Event) -> None:
    """Keep the streams short: drop entries every group has acknowledged, after a while."""
    keys = resources.keys
    while not stop.is_set():
        for stream in (keys.updates, keys.generate, keys.replies):
            try:
                await resources.queue.trim(stream, STREAM_RETENTION_SECONDS)
            except RedisError as error:
                log.warning("stream trim failed", stream=stream, error=type(error).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TRIM_INTERVAL_SECONDS)
