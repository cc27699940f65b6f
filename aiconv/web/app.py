"""The web mode's Starlette app: the webhook and probes. Resources are owned by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route

from aiconv.config import Settings
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import JobQueue
from aiconv.observability.ops import health_routes
from aiconv.resources import make_redis
from aiconv.web.webhook import make_webhook


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    redis = make_redis(settings)
    queue = JobQueue(redis, Keys(settings.redis_key_prefix))

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await redis.aclose()

    async def redis_ping() -> object:
        return await redis.ping()

    routes = [
        Route(
            "/webhook",
            make_webhook(settings.telegram_webhook_secret, queue),  # type: ignore[arg-type]
            methods=["POST"],
        ),
        *health_routes({"redis": redis_ping}),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
