"""The PostgreSQL connection pool, owned by each mode's lifespan."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool


def make_pool(database_url: str, max_size: int, name: str = "aiconv") -> AsyncConnectionPool:
    """A pool that opens lazily and reconnects on its own when PostgreSQL comes back."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        kwargs={"autocommit": True},
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=0,  # keep trying forever: an outage must not kill the process
    )
