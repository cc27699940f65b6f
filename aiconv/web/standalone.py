"""`aiconv web`: granian with WEB_WORKERS processes, plus the ops port in the main process."""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import os
import shutil
import tempfile
import threading
from pathlib import Path

from granian import Granian
from granian.constants import Interfaces

from aiconv.config import Settings
from aiconv.observability.ops import ops_app
from aiconv.resources import make_redis, open_resources
from aiconv.runtime import _retrying, register_webhook
from aiconv.web.server import serve


def run_web(settings: Settings) -> None:
    if settings.web_workers > 1:
        _share_metrics_between_workers()
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


def _share_metrics_between_workers() -> None:
    """Workers write their metrics to files in one folder; the ops port merges them.

    prometheus_client picks its storage when first imported, so the workers are spawned (fresh
    interpreters that see PROMETHEUS_MULTIPROC_DIR) rather than forked from this process.
    """
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        made = tempfile.mkdtemp(prefix="aiconv-metrics-")
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # left by an earlier run: its counts are not ours
        stale.unlink()
    multiprocessing.set_start_method("spawn", force=True)


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
