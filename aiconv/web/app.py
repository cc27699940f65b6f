"""The web mode's Starlette app: the webhook, the OpenAI API, the admin API and the probes.

The app never opens a client of its own: it serves with the `Resources` it is given, and
whoever opened them closes them (see resources.py). In `aiconv all` and the demo that is the
process (modes/process.py); in a granian worker, a fresh interpreter with nothing else in it,
it is the app's own lifespan (`create_standalone_app`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from aiconv.config import Settings
from aiconv.observability.ops import health_routes
from aiconv.resources import Resources, make_resources
from aiconv.web.admin import ADMIN_POOL_SIZE, admin_routes
from aiconv.web.errors import EXCEPTION_HANDLERS
from aiconv.web.instrument import MetricsMiddleware
from aiconv.web.openai import openai_routes
from aiconv.web.webhook import make_webhook

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


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
    return create_standalone_app(settings)


def create_standalone_app(settings: Settings) -> Starlette:
    """An app that owns its clients: made here, opened and closed by the app's lifespan.

    PostgreSQL serves only the admin API here (enabled by JWT_SECRET_KEY), with a small pool of
    its own; without it no pool is made. The pool opens without waiting, so a database outage
    never stops the webhook. Telegram is never called from here: no HTTP client is made.
    """
    resources = make_resources(
        settings,
        database=bool(settings.jwt_secret_key),
        telegram=False,  # the web app never calls Telegram
        pool_size=min(settings.db_pool_size, ADMIN_POOL_SIZE),
        pool_name="admin",
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            await resources.open()
            yield
        finally:
            await resources.close()

    return create_app(resources, lifespan=lifespan)


def create_app(resources: Resources, *, lifespan: Lifespan | None = None) -> Starlette:
    """The app, serving with `resources` (their settings are the app's); `lifespan` is given only
    by an app that owns its resources."""
    settings = resources.settings
    queue, redis = resources.queue, resources.redis
    # The admin API is off without JWT_SECRET_KEY: then it needs no database either.
    pool = resources.pool if settings.jwt_secret_key else None
    reads = resources.reads if pool is not None else None

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
        *health_routes({"redis": resources.ping_redis}),
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
