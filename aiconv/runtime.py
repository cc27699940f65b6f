"""Runs one or more modes in this process until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterable

import structlog

from aiconv.config import Settings
from aiconv.ml.engine import Engine
from aiconv.ml.main import engine_config, run_ml
from aiconv.observability.gauges import run_gauges
from aiconv.observability.metrics import MODEL_LOADED
from aiconv.observability.ops import Check, ops_app
from aiconv.resources import Resources, open_resources
from aiconv.telegram.client import TelegramError
from aiconv.web.app import create_app
from aiconv.web.server import serve
from aiconv.worker.main import run_worker
from aiconv.worker.poller import ALLOWED_UPDATES

MODES = ("web", "worker", "ml")
log = structlog.get_logger(__name__)


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def register_webhook(resources: Resources) -> None:
    settings = resources.settings
    assert settings.telegram_webhook_url and settings.telegram_webhook_secret
    await resources.bot.set_webhook(
        settings.telegram_webhook_url, settings.telegram_webhook_secret, ALLOWED_UPDATES
    )
    log.info("webhook registered", url=settings.telegram_webhook_url)


async def run_modes(
    settings: Settings,
    modes: Iterable[str],
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Resources], Awaitable[None]] | None = None,
) -> None:
    wanted = set(modes)
    stop = stop or asyncio.Event()
    async with open_resources(settings) as resources:
        engines: list[Engine] = []

        async def model_loaded() -> None:
            if not engines:
                raise RuntimeError("model still loading")

        checks: dict[str, Check] = {"redis": resources.redis.ping, "postgres": resources.store.ping}
        if "ml" in wanted:
            checks["model"] = model_loaded
        # Probes and metrics answer first, so a slow model load reads as "not ready yet".
        tasks = [
            asyncio.ensure_future(serve(ops_app(checks), "0.0.0.0", settings.metrics_port, stop)),
            asyncio.ensure_future(
                run_gauges(resources.redis, resources.keys, resources.store.pool, stop)
            ),
        ]
        try:
            if "ml" in wanted:
                engines.append(await Engine.load(engine_config(settings)))
                MODEL_LOADED.set(1)
                tasks.append(
                    asyncio.ensure_future(run_ml(engines[0], resources.queue, settings, stop))
                )
            if "worker" in wanted:
                poll = not settings.webhook_mode
                tasks.append(asyncio.ensure_future(run_worker(resources, stop, poll=poll)))
            if "web" in wanted:
                if settings.webhook_mode:
                    await _retrying(register_webhook, resources, stop)
                app = create_app(settings)
                tasks.append(asyncio.ensure_future(serve(app, "0.0.0.0", settings.port, stop)))
            log.info("aiconv running", modes=sorted(wanted), environment=settings.environment)
            if on_ready is not None:  # e.g. the demo's chat; it sets `stop` when it is done
                tasks.append(asyncio.ensure_future(on_ready(resources)))
            stopping = asyncio.ensure_future(stop.wait())
            # Loops end only after `stop`; one that ends earlier has failed and stops the rest.
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            failures = [t.exception() for t in done if t is not stopping and t.exception()]
            if failures:
                raise failures[0]  # type: ignore[misc]
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for engine in engines:
                engine.close()
        log.info("aiconv stopped")


async def _retrying(
    action: Callable[[Resources], Awaitable[None]], resources: Resources, stop: asyncio.Event
) -> None:
    delay = 1.0
    while not stop.is_set():
        try:
            await action(resources)
            return
        except TelegramError as error:
            log.warning("telegram call failed at start-up, retrying", error=str(error)[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)
