"""`aiconv web`: granian with WEB_WORKERS processes, plus the ops port in the main process.

Start-up order and why:
1. Ports are probed (a port already taken is one line, exit 2).
2. The ops thread opens this process's clients (one Redis client, no database: see
   resources.py) and, in production, checks that Redis persists its data (see preflight.py); a
   Redis that does not is one line, exit 2, before any worker starts. It then serves /health,
   /ready and /metrics on METRICS_PORT and, in webhook mode, registers the webhook in the
   background: /health answers whatever Telegram does, and /ready fails with `webhook` until
   setWebhook succeeded (see registration.py). The clients are the thread's: opened and closed
   on its event loop (a Redis client belongs to the loop it first connected on).
3. granian starts its workers with the "spawn" start method: each is a fresh interpreter
   (fork + exec), never a fork of this process. A fork copies a process whose other threads (the
   ops thread, granian's Rust runtime) may hold locks; the copy then waits on them forever. That
   is how a worker once never accepted a connection, and the main process, joining it, outlived
   SIGTERM. Each worker's app owns its own clients (web/app.py: create_standalone_app).
4. SIGTERM: granian stops its workers, killing any that has not stopped after
   WORKER_KILL_SECONDS, then the ops thread is stopped, and the process ends without finalizing
   the interpreter under granian's native threads (see `exit_now`): within seconds, status 0.

Wiring only, and never imports llama.cpp (see modes/__init__.py).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

import structlog
from granian import Granian
from granian.constants import Interfaces

from aiconv.config import ConfigError, Settings
from aiconv.observability.loops import LoopFailed, core, supervised
from aiconv.observability.ops import Check, ops_app
from aiconv.preflight import ensure_port_free, require_durable_redis
from aiconv.resources import open_resources
from aiconv.web.multiproc import share_metrics_between_workers
from aiconv.web.registration import WebhookRegistration
from aiconv.web.server import accepting, serve

# A worker has no long jobs (a webhook answers in milliseconds): a few seconds to finish the
# requests in flight, then it is killed.
WORKER_KILL_SECONDS = 5
OPS_STOP_SECONDS = 5.0
# Opening the clients and the Redis persistence check: connect (3 s) and two replies (15 s each)
# at most, see jobs/client.py; beyond that something is stuck, and the start fails.
OPS_START_SECONDS = 40.0

log = structlog.get_logger(__name__)


def main(settings: Settings, args: argparse.Namespace) -> int:
    run_web(settings)  # ends the process itself (see exit_now)


def run_web(settings: Settings) -> NoReturn:
    """Serve until SIGTERM/SIGINT, then end the process: 0 after a signal, 1 when a worker or the
    ops port failed (2 when that was a configuration error, e.g. the port taken meanwhile)."""
    ensure_port_free(settings.bind_address, settings.port, "PORT")
    ensure_port_free(settings.metrics_bind_address, settings.metrics_port, "METRICS_PORT")
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # the CLI sets it up before any import
        share_metrics_between_workers()
    multiprocessing.set_start_method("spawn", force=True)
    server = Granian(
        "aiconv.web.app:create_worker_app",  # configures logging and Sentry in each worker
        factory=True,
        address=settings.bind_address,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.web_workers,
        workers_kill_timeout=WORKER_KILL_SECONDS,
        log_access=False,
    )
    ops = OpsThread(settings, on_failure=server.signal_handler_interrupt)
    ops.start()
    ops.wait_started()  # raises what stopped it, e.g. ConfigError for a Redis without persistence
    code = 0
    try:
        server.serve()
    except SystemExit as exit:  # granian's way to report a worker that failed
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        ops.stop()
    if ops.failed:
        cause = ops.failed[0].__cause__
        if isinstance(cause, ConfigError):
            print(f"aiconv: configuration error: {cause}", file=sys.stderr)
        code = 2 if isinstance(cause, ConfigError) else 1
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the process without finalizing the interpreter.

    The ops server's native (Rust) threads keep calling into Python until the process ends; an
    interpreter finalizing under them aborts the process (a panic, exit status -6) now and then.
    Everything is stopped by now: run the exit handlers, flush, and leave.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class OpsThread(threading.Thread):
    """The process's clients, the ops port and the webhook registration, on an event loop of
    their own."""

    def __init__(self, settings: Settings, on_failure: Callable[[], None]) -> None:
        super().__init__(name="ops", daemon=True)
        self.settings = settings
        self.on_failure = on_failure
        self.failed: list[LoopFailed] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._opened = threading.Event()
        self._start_error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:
            if self._opened.is_set():  # after the start: the thread's own failure, reported
                raise
            self._start_error = error  # during the start: raised by the waiting main thread
        finally:
            self._opened.set()  # never leave the main thread waiting

    def wait_started(self) -> None:
        """Return once the clients are open, Redis checked and the ops port starting; raise what
        stopped the thread before that."""
        if not self._opened.wait(OPS_START_SECONDS):
            raise RuntimeError(f"the ops thread did not start within {OPS_START_SECONDS:.0f} s")
        if self._start_error is not None:
            raise self._start_error

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        stop = self._stop_event = asyncio.Event()
        self._ready.set()
        settings = self.settings
        # Telegram only to register the webhook; no database at all.
        telegram = settings.webhook_mode
        async with open_resources(settings, database=False, telegram=telegram) as resources:
            try:
                await require_durable_redis(resources.redis, settings)
            except Exception as error:
                self._start_error = error
                return
            checks: dict[str, Check] = {
                "redis": resources.ping_redis,
                "web": accepting(settings.port, settings.bind_address),  # a granian worker listens
            }
            async with asyncio.TaskGroup() as group:
                if settings.webhook_mode:
                    registration = WebhookRegistration(settings, resources.bot)
                    checks["webhook"] = registration.check
                    retrying = supervised("webhook_registration", registration.register, stop)
                    group.create_task(retrying)
                ops_port = ops_app(checks, metrics=settings.metrics_enabled)
                ops = serve(ops_port, settings.metrics_bind_address, settings.metrics_port, stop)
                group.create_task(core("ops", ops, stop, self.failed))
                self._opened.set()
        if self.failed:
            self.on_failure()  # stops granian, so the process exits

    def stop(self) -> None:
        self._ready.wait(OPS_STOP_SECONDS)
        if self._loop is not None and self._stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._stop_event.set)
        self.join(OPS_STOP_SECONDS)
