"""Runs one or more modes in this process until asked to stop (`worker`, `ml`, `all`, `demo`).

Loops are of two kinds (see observability/loops.py): core loops (the ops server, the web server,
the worker, ml, the demo's chat) stop the process when they fail or end early, and the process
then exits non-zero; auxiliary loops (gauges, webhook registration) are retried and never stop
it. All of them live in one asyncio.TaskGroup, so none outlives `run_modes`.

The process's clients are opened here, once, and passed to every mode (one Redis client, one
PostgreSQL pool: see resources.py); they are closed here after the last loop has stopped.

The modes' parts are imported when their mode is wanted, not before: a worker process never
loads llama.cpp (see modes/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import structlog

from aiconv.config import Settings
from aiconv.observability.gauges import run_gauges
from aiconv.observability.loops import Body, LoopFailed, core, supervised
from aiconv.observability.ops import Check, ops_app
from aiconv.preflight import ensure_port_free, require_durable_redis
from aiconv.resources import Resources, open_resources
from aiconv.web.registration import WebhookRegistration
from aiconv.web.server import accepting, serve

if TYPE_CHECKING:
    from aiconv.ml.engine import Engine

IN_PROCESS_MODES = ("web", "worker", "ml")
log = structlog.get_logger(__name__)


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def run_until_signalled(settings: Settings, modes: Iterable[str]) -> int:
    """Run `modes` until SIGTERM/SIGINT; 0 after a clean stop (LoopFailed is raised otherwise)."""

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await run_modes(settings, modes, stop)

    asyncio.run(run())
    return 0


async def run_modes(
    settings: Settings,
    modes: Iterable[str],
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Resources], Awaitable[None]] | None = None,
) -> None:
    """Run `modes` until `stop`; raise LoopFailed when a core loop failed or ended early."""
    wanted = set(modes)
    unknown = wanted - set(IN_PROCESS_MODES)
    if unknown:
        raise ValueError(f"not a mode that runs in process: {', '.join(sorted(unknown))}")
    stop = stop or asyncio.Event()
    # Before anything starts: a port taken by another process is one clear line, not a half-up
    # process sharing its traffic (granian binds with SO_REUSEPORT).
    ensure_port_free(settings.metrics_bind_address, settings.metrics_port, "METRICS_PORT")
    if "web" in wanted:
        ensure_port_free(settings.bind_address, settings.port, "PORT")
    async with open_resources(settings) as resources:
        if wanted & {"web", "worker"}:
            await require_durable_redis(resources.redis, settings)
        engines: list[Engine] = []

        async def model_loaded() -> None:
            if not engines:
                raise RuntimeError("model still loading")

        checks: dict[str, Check] = {"redis": resources.ping_redis, "postgres": resources.store.ping}
        if "ml" in wanted:
            checks["model"] = model_loaded
        if "web" in wanted:
            checks["web"] = accepting(settings.port, settings.bind_address)
        registration = None
        if "web" in wanted and settings.webhook_mode:
            registration = WebhookRegistration(settings, resources.bot)
            checks["webhook"] = registration.check
        loops = Loops(stop)
        startup_error: Exception | None = None
        try:
            async with loops.group:
                # Probes and metrics answer first, so a slow model load reads as "not ready yet".
                loops.core(
                    "ops",
                    serve(
                        ops_app(checks, metrics=settings.metrics_enabled),
                        settings.metrics_bind_address,
                        settings.metrics_port,
                        stop,
                    ),
                )
                loops.aux(
                    "gauges",
                    lambda: run_gauges(
                        resources.redis,
                        resources.keys,
                        resources.store.pool,
                        stop,
                        reads=resources.reads,
                    ),
                )
                try:
                    await _start(loops, resources, wanted, engines, registration, on_ready)
                except Exception as error:
                    # Not raised inside the group: that would cancel the loops already started
                    # instead of letting them stop (and drain) through `stop`.
                    startup_error = error
                    stop.set()
        finally:
            for engine in engines:
                engine.close()
        if startup_error is not None:
            raise startup_error
        if loops.failed:
            raise loops.failed[0]
        log.info("aiconv stopped")


class Loops:
    """The process's loops, in one TaskGroup: core ones stop the process, auxiliary ones retry."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.group = asyncio.TaskGroup()
        self.failed: list[LoopFailed] = []

    def core(self, name: str, body: Awaitable[None]) -> None:
        self.group.create_task(core(name, body, self.stop, self.failed), name=name)

    def aux(self, name: str, body: Body) -> None:
        self.group.create_task(supervised(name, body, self.stop), name=name)


async def _start(
    loops: Loops,
    resources: Resources,
    wanted: set[str],
    engines: list[Engine],
    registration: WebhookRegistration | None,
    on_ready: Callable[[Resources], Awaitable[None]] | None,
) -> None:
    settings, stop = resources.settings, loops.stop
    # Each mode's parts are imported here, when (and only when) the mode runs.
    if "ml" in wanted:
        from aiconv.modes import ml

        engines.append(await ml.load_engine(settings))
        loops.core("ml", ml.run_ml(engines[0], resources.queue, settings, stop))
    if "worker" in wanted:
        from aiconv.modes import worker

        loops.core("worker", worker.run_worker(resources, stop, poll=not settings.webhook_mode))
    if "web" in wanted:
        from aiconv.web.app import create_app

        loops.core("web", serve(create_app(resources), settings.bind_address, settings.port, stop))
        if registration is not None:  # serve first, register in the background
            loops.aux("webhook_registration", registration.register)
    log.info("aiconv running", modes=sorted(wanted), environment=settings.environment)
    if on_ready is not None:  # e.g. the demo's chat; it sets `stop` when it is done
        loops.core("on_ready", on_ready(resources))
