"""How a process runs its loops: auxiliary loops survive their own errors, core loops do not.

Invariants:
- An auxiliary loop (gauges, webhook registration, sweeps...) never stops the process. An
  exception is logged, counted in `aiconv_background_errors_total{loop}` and the loop starts again
  after a backoff, until `stop`. Why: a worker once died because a gauge read raced an XACK, and
  850 users went unanswered until something restarted it; a gauge is not worth that.
- A core loop (a consumer, a server) that fails, or ends before `stop`, stops the process: every
  other loop is told to stop, and the caller then exits non-zero. Why: a process that serves
  probes but no longer consumes looks healthy while it loses users' time; its supervisor
  (Kubernetes, compose) restarts it only when it exits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from aiconv.jobs.retry import Backoff, sleep_or_stop
from aiconv.observability.metrics import BACKGROUND_ERRORS

log = structlog.get_logger(__name__)

Body = Callable[[], Awaitable[None]]


class LoopFailed(Exception):
    """A core loop failed or ended before it was asked to stop; the process must exit."""

    def __init__(self, name: str) -> None:
        super().__init__(f"core loop {name!r} stopped unexpectedly")
        self.name = name


async def supervised(
    name: str,
    body: Body,
    stop: asyncio.Event,
    *,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> None:
    """Run an auxiliary loop: restart `body` after an error until it returns or `stop` is set.

    `body` returning normally means it is done (a one-off such as registering the webhook, or a
    loop that saw `stop`). The backoff starts again once a run lasted longer than `max_delay`, so
    a rare error in a long-lived loop is retried quickly.
    """
    backoff = Backoff(first_delay, max_delay)
    while not stop.is_set():
        started = time.monotonic()
        try:
            await body()
            return
        except Exception as error:  # an auxiliary loop's failure is survivable; cancelling is not
            BACKGROUND_ERRORS.labels(name).inc()
            if time.monotonic() - started > max_delay:
                backoff.attempt = 0  # it ran well for a while: a new streak of failures
            delay = backoff.next()
            # The traceback once per streak: an outage of minutes is not a page of tracebacks.
            log.warning(
                "background loop failed, retrying",
                loop=name,
                error=f"{type(error).__name__}: {str(error)[:200]}",
                retry_in=round(delay, 1),
                exc_info=backoff.attempt == 1,
            )
        if await sleep_or_stop(stop, delay):
            return


async def core(
    name: str, body: Awaitable[None], stop: asyncio.Event, failed: list[LoopFailed]
) -> None:
    """Run a core loop; when it fails or ends before `stop`, record it in `failed` and set `stop`.

    It does not raise, so the loops beside it in a TaskGroup are stopped gracefully (through
    `stop`, within their own drain time) rather than cancelled mid-job.
    """
    try:
        await body
    except Exception as error:
        log.exception("core loop failed, stopping the process", loop=name)
        failure = LoopFailed(name)
        failure.__cause__ = error
        failed.append(failure)
        stop.set()
        return
    if not stop.is_set():
        log.error("core loop ended before it was asked to stop, stopping the process", loop=name)
        failed.append(LoopFailed(name))
        stop.set()
