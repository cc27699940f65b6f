"""The admin API under test: its signing key, settings, an in-process client and tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from aiconv.config import Settings
from aiconv.web import auth
from aiconv.web.app import create_standalone_app
from tests.support.services import REDIS_URL

KEY = "admin-test-signing-key-0123456789abcdef"
WRITE = ("read", "write")


def settings_for(database_url: str, prefix: str, key: str | None = KEY) -> Settings:
    env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix}
    if key is not None:
        env["JWT_SECRET_KEY"] = key
    return Settings.from_env(env)


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The whole web app, its lifespan (the pool) included, behind an in-process transport."""
    app = create_standalone_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aiconv") as http:
            yield http


def bearer(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or auth.mint(KEY, 'tests', 600, WRITE)}"}
