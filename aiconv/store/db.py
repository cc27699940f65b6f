"""The PostgreSQL connection pool, owned by each mode's lifespan.

Invariant: a PostgreSQL outage of any length is waited out, and once PostgreSQL is back a request
gets a connection within about a second; during the outage callers get a transient error
(psycopg.OperationalError: PoolTimeout is a subclass) after at most CONNECTION_WAIT_SECONDS.

Why it is configured as it is (psycopg_pool 3.2/3.3, pool_async.py and base.py):
- A connection attempt that fails is retried with exponential backoff (1 s, 2 s, 4 s, ...,
  uncapped) until ``reconnect_timeout`` has passed, then given up: the pool shrinks by one and
  calls ``reconnect_failed``. ``reconnect_timeout=0`` is not "forever": it gives up at once, and a
  client already queued for a connection gets nothing until its own ``timeout`` (30 s by default)
  runs out, which is why delivery resumed ~20 s after PostgreSQL was back. A long
  ``reconnect_timeout`` is no better: its backoff reaches minutes, and no other attempt starts
  while it sleeps (the pool grows one connection at a time).
- So each attempt gives up after RECONNECT_WINDOW_SECONDS (its sleeps stay near a second), and
  ``reconnect_failed`` starts the next attempt at once through the public ``check()``, which grows
  a pool that lacks connections. Attempts go on about once a second for as long as the outage
  lasts, a queued client is handed the first connection made after it, and nothing ever gives up.
- ``timeout`` bounds a caller's wait for a connection, and ``connect_timeout`` one attempt (a
  server that drops packets would otherwise hang an attempt for minutes).
"""

from __future__ import annotations

from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

RECONNECT_WINDOW_SECONDS = 2.0  # one attempt's backoff: sleeps of ~1 s, then a fresh attempt
CONNECTION_WAIT_SECONDS = 10.0  # a caller's wait for a connection before PoolTimeout
CONNECT_TIMEOUT_SECONDS = 5  # one connection attempt (libpq connect_timeout, whole seconds)


async def _keep_reconnecting(pool: AsyncConnectionPool[Any]) -> None:
    """psycopg_pool gave up one attempt: start the next (check() grows a pool lacking one)."""
    if pool.closed:
        return  # shutting down: nothing to reconnect for
    log.warning("postgresql unreachable; still reconnecting", pool=pool.name)
    await pool.check()


def make_pool(database_url: str, max_size: int, name: str = "aiconv") -> AsyncConnectionPool:
    """A pool that opens lazily and reconnects on its own when PostgreSQL comes back."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
        check=AsyncConnectionPool.check_connection,
        timeout=CONNECTION_WAIT_SECONDS,
        reconnect_timeout=RECONNECT_WINDOW_SECONDS,
        reconnect_failed=_keep_reconnecting,
    )
