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

Read replica (``ReadRouter``). Invariant: a read that can tolerate lag (admin statistics and
exports, the business gauges) is served by the replica only when the replica answers within
REPLICA_WAIT_SECONDS and its replay lag, measured on that very connection just before, is at most
``max_lag_seconds``; otherwise the primary serves it and ``aiconv_db_replica_fallbacks_total``
counts why. Nothing on the conversation path is given the router: a reply's history must include
the message just stored, which only the primary guarantees.

Lag is ``now() - pg_last_xact_replay_timestamp()`` on the replica, except that a replica which has
replayed everything it received from a live WAL receiver is caught up (lag 0): an idle primary
writes no transactions, so the replay timestamp ages while nothing is behind. A replica whose WAL
receiver is not running cannot know what it misses, so its timestamp's age counts, which makes it
look lagging (the safe side). After a failed replica connection, lag-tolerant reads go straight to
the primary for REPLICA_RETRY_SECONDS, so an unreachable replica costs one short wait per interval,
not one per read. That pause is local to this process (monotonic time, nothing shared).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from aiconv.observability.metrics import DB_REPLICA_FALLBACKS, DB_REPLICA_LAG, DB_REPLICA_UP

log = structlog.get_logger(__name__)

RECONNECT_WINDOW_SECONDS = 2.0  # one attempt's backoff: sleeps of ~1 s, then a fresh attempt
CONNECTION_WAIT_SECONDS = 10.0  # a caller's wait for a connection before PoolTimeout
CONNECT_TIMEOUT_SECONDS = 5  # one connection attempt (libpq connect_timeout, whole seconds)
REPLICA_WAIT_SECONDS = 1.0  # a lag-tolerant read's wait for a replica connection
REPLICA_RETRY_SECONDS = 5.0  # after the replica failed, the primary serves reads this long
REPLICA_POOL_NAME = "replica"  # also its connections' application_name, seen in pg_stat_activity

# Seconds the replica's replayed data is behind the primary; NULL when it cannot tell (nothing
# replayed since it started and not caught up). A server not in recovery (promoted, or a primary
# named by mistake) is current by definition.
REPLICA_LAG_SQL = """
    SELECT CASE
        WHEN NOT pg_is_in_recovery() THEN 0.0
        WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
             AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0.0
        ELSE greatest(0.0, extract(epoch FROM clock_timestamp()
                                              - pg_last_xact_replay_timestamp()))::float8
    END
"""


async def _keep_reconnecting(pool: AsyncConnectionPool[Any]) -> None:
    """psycopg_pool gave up one attempt: start the next (check() grows a pool lacking one)."""
    if pool.closed:
        return  # shutting down: nothing to reconnect for
    log.warning("postgresql unreachable; still reconnecting", pool=pool.name)
    await pool.check()


def make_pool(
    database_url: str, max_size: int, name: str = "aiconv", application_name: str | None = None
) -> AsyncConnectionPool:
    """A pool that opens lazily and reconnects on its own when PostgreSQL comes back."""
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if application_name is not None:
        kwargs["application_name"] = application_name
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        kwargs=kwargs,
        check=AsyncConnectionPool.check_connection,
        timeout=CONNECTION_WAIT_SECONDS,
        reconnect_timeout=RECONNECT_WINDOW_SECONDS,
        reconnect_failed=_keep_reconnecting,
    )


async def measure_replica_lag(conn: psycopg.AsyncConnection[Any]) -> float:
    """The replay lag in seconds of the server behind ``conn``; infinite when it cannot tell."""
    cursor = await conn.execute(REPLICA_LAG_SQL)
    row = await cursor.fetchone()
    return math.inf if row is None or row[0] is None else float(row[0])


class ReadRouter:
    """Hands out connections for lag-tolerant reads: the replica's when usable, else the primary's.

    It owns the replica pool (``open``/``close``), never the primary one. Without a replica every
    read goes to the primary and nothing is counted as a fallback.
    """

    def __init__(
        self,
        primary: AsyncConnectionPool,
        replica: AsyncConnectionPool | None = None,
        max_lag_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag_seconds = max_lag_seconds
        self._clock = clock
        self._skip_replica_until = -math.inf

    @classmethod
    def for_primary(
        cls,
        primary: AsyncConnectionPool,
        replica_url: str | None,
        max_lag_seconds: float,
        max_size: int,
    ) -> ReadRouter:
        """A router over ``primary`` and, when ``replica_url`` is set, a replica pool of its own."""
        replica = (
            make_pool(replica_url, max_size, REPLICA_POOL_NAME, application_name="aiconv-replica")
            if replica_url
            else None
        )
        return cls(primary, replica, max_lag_seconds)

    async def open(self) -> None:
        """Open the replica pool without waiting: an absent replica only means primary reads."""
        if self.replica is not None:
            await self.replica.open(wait=False)

    async def close(self) -> None:
        if self.replica is not None:
            await self.replica.close()

    async def refresh_lag(self) -> float | None:
        """Measure the replica's lag now for the gauges; None when there is no replica or it is
        unreachable (``aiconv_db_replica_up`` then says 0)."""
        if self.replica is None:
            return None
        try:
            async with self.replica.connection(timeout=REPLICA_WAIT_SECONDS) as conn:
                return await self._measured(conn)
        except psycopg.Error as error:
            self._replica_failed(error)
            return None

    @asynccontextmanager
    async def connection(
        self, wait_seconds: float = CONNECTION_WAIT_SECONDS
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for a read that may be up to ``max_lag_seconds`` stale; ``wait_seconds``
        bounds the wait for the primary's when the replica cannot serve."""
        async with AsyncExitStack() as stack:
            replica = await self._usable_replica(stack)
            if replica is not None:
                yield replica
            else:
                yield await stack.enter_async_context(self.primary.connection(timeout=wait_seconds))

    async def _usable_replica(self, stack: AsyncExitStack) -> psycopg.AsyncConnection[Any] | None:
        """A replica connection held on ``stack`` when the replica is up and close enough."""
        if self.replica is None:
            return None
        if self._clock() < self._skip_replica_until:
            DB_REPLICA_FALLBACKS.labels("down").inc()
            return None
        attempt = AsyncExitStack()
        try:
            conn = await attempt.enter_async_context(
                self.replica.connection(timeout=REPLICA_WAIT_SECONDS)
            )
            lag = await self._measured(conn)
        except psycopg.Error as error:
            await attempt.aclose()
            self._replica_failed(error)
            DB_REPLICA_FALLBACKS.labels("down").inc()
            return None
        except BaseException:
            await attempt.aclose()  # cancelled: the connection goes back to its pool
            raise
        if lag > self.max_lag_seconds:
            await attempt.aclose()
            DB_REPLICA_FALLBACKS.labels("lagging").inc()
            return None
        stack.push_async_exit(attempt)
        return conn

    async def _measured(self, conn: psycopg.AsyncConnection[Any]) -> float:
        lag = await measure_replica_lag(conn)
        DB_REPLICA_UP.set(1)
        DB_REPLICA_LAG.set(lag)
        self._skip_replica_until = -math.inf
        return lag

    def _replica_failed(self, error: psycopg.Error) -> None:
        DB_REPLICA_UP.set(0)
        self._skip_replica_until = self._clock() + REPLICA_RETRY_SECONDS
        log.warning(
            "postgresql replica unusable; reading from the primary", error=type(error).__name__
        )
