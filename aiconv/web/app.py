"""The web mode's Starlette app: the webhook and probes. Resources are owned by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from aiconv.config import Settings
from aiconv.jobs.codec import JobCodec
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import JobQueue
from aiconv.observability.ops import health_routes
from aiconv.resources import make_redis
from aiconv.store.db import ReadRouter, make_pool
from aiconv.web.admin import ADMIN_POOL_SIZE, admin_routes
from aiconv.web.errors import EXCEPTION_HANDLERS
from aiconv.web.instrument import MetricsMiddleware
from aiconv.web.openai import openai_routes
from aiconv.web.webhook import make_webhook


def create_worker_app() -> Starlette:
    """The app of one granian worker: a fresh interpreter (spawned), which inherits nothing from
    the `aiconv web` process, so it sets up what every aiconv process does before serving:
    logging (format, level, redaction of secrets and message text) and Sentry (scrubbed).
    Metrics need nothing here: PROMETHEUS_MULTIPROC_DIR, set by the CLI before granian started,
    is inherited, and the ops port merges the workers' files."""
    from aiconv.observability.logging import configure_logging
    from aiconv.observability.sentry import init_sentry

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    init_sentry(settings)
    return create_app(settings)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    redis = make_redis(settings)
    queue = JobQueue(
        redis, Keys(settings.redis_key_prefix), JobCodec.from_setting(settings.encryption_key)
    )
    # PostgreSQL serves only the admin API here (enabled by JWT_SECRET_KEY); the pool opens
    # without waiting, so a database outage never stops the webhook.
    pool = (
        make_pool(settings.database_url, min(settings.db_pool_size, ADMIN_POOL_SIZE), "admin")
        if settings.jwt_secret_key
        else None
    )
    reads = (
        ReadRouter.for_primary(
            pool,
            settings.database_replica_url,
            settings.replica_max_lag_seconds,
            min(settings.db_pool_size, ADMIN_POOL_SIZE),
        )
        if pool is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if pool is not None:
            await pool.open(wait=False)
        if reads is not None:
            await reads.open()
        try:
            yield
        finally:
            if reads is not None:
                await reads.close()
            if pool is not None:
                await pool.close()
            await redis.aclose()

    async def redis_ping() -> object:
        return await redis.ping()

    routes = [
        Route(
            "/webhook",
            # Live only in webhook mode: when polling, a known or leaked secret must not let
            # anyone forge updates (the answer is 404, as with no secret at all).
            make_webhook(  # type: ignore[arg-type]
                settings.telegram_webhook_secret if settings.webhook_mode else None, queue
            ),
            methods=["POST"],
        ),
        *health_routes({"redis": redis_ping}),
        *openai_routes(settings, queue),
        *admin_routes(settings, redis, pool, queue.codec, reads),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(MetricsMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,  # one error shape per surface (web/errors.py)
    )
    # Starlette answers `/path/` with a redirect to `/path` built from the Host header, which a
    # client chooses: `Host: evil.example` made a redirect to http://evil.example/. No path here
    # has two spellings, so none is redirected: a wrong one is a 404.
    app.router.redirect_slashes = False
    return app
