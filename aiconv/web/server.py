"""Serving an ASGI app inside a running event loop (modes `all`, `demo`, and the ops port).

Every listener binds the address its setting names (BIND_ADDRESS, METRICS_BIND_ADDRESS), never
a hard-coded wildcard: on a bare host the operator must be able to keep /admin and /metrics off
the public interface. Checks that connect back to a listener go through `local_address`, so a
listener on one specific address is still found.
"""

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


WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def local_address(bind_address: str) -> str:
    """The address this host reaches a listener bound to `bind_address` at: loopback for a
    wildcard (every interface), else the address itself."""
    return WILDCARDS.get(bind_address, bind_address)


def accepting(port: int, bind_address: str) -> Callable[[], Awaitable[None]]:
    """A readiness check: something accepts connections on this port (a web worker) at the
    address it was bound to."""
    host = local_address(bind_address)

    async def check() -> None:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    return check
