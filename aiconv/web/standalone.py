"""`aiconv web`: granian with WEB_WORKERS processes, plus the ops port in the main process."""

from __future__ import annotations

import asyncio
import threading

from granian import Granian
from granian.constants import Interfaces

from aiconv.config import Settings
from aiconv.observability.ops import ops_app
from aiconv.resources import make_redis, open_resources
from aiconv.runtime import _retrying, register_webhook
from aiconv.web.server import serve


def run_web(settings: Settings) -> None:
    if settings.webhook_mode:
        asyncio.run(_register(settings))
    threading.Thread(target=_serve_ops, args=(settings,), daemon=True, name="ops").start()
    Granian(
        "aiconv.web.app:create_app",
        factory=True,
        address="0.0.0.0",
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.web_workers,
        log_access=False,
    ).serve()


async def _register(settings: Settings) -> None:
    async with open_resources(settings, database=False) as resources:
        await _retrying(register_webhook, resources, asyncio.Event())


def _serve_ops(settings: Settings) -> None:
    async def main() -> None:
        redis = make_redis(settings)

        async def redis_ping() -> object:
            return await redis.ping()

        await serve(
            ops_app({"redis": redis_ping}), "0.0.0.0", settings.metrics_port, asyncio.Event()
        )

    asyncio.run(main())
