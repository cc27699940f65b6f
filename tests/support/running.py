"""A loop (`run(stop)`) running in the background for the length of a block.

Invariant: when the block ends, however it ends, the loop has been told to stop and has returned
(or the test fails after `stop_within` seconds): no task outlives the test that started it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


@asynccontextmanager
async def running(
    run: Callable[[asyncio.Event], Awaitable[None]], stop_within: float = 30.0
) -> AsyncIterator[asyncio.Task[None]]:
    """Run `run(stop)` as a task (yielded) until the block ends, then stop it and wait for it."""
    stop = asyncio.Event()

    async def loop() -> None:
        await run(stop)

    task = asyncio.create_task(loop())
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_within)
