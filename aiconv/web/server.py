"""Serving an ASGI app inside a running event loop (modes `all`, `demo`, and the ops port)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from granian.constants import Interfaces
from granian.server.embed import Server
from starlette.types import ASGIApp


async def serve(app: ASGIApp, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, on granian's in-loop server."""
    server = Server(app, address=host, port=port, interface=Interfaces.ASGI, log_enabled=False)
    task = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        server.stop()  # type: ignore[no-untyped-call]
        with contextlib.suppress(asyncio.CancelledError):
            await task
    task.result()  # a failure to bind surfaces here


def accepting(port: int) -> Callable[[], Awaitable[None]]:
    """A readiness check: something accepts connections on this local port (a web worker)."""

    async def check() -> None:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    return check
