"""PostgreSQL for tests: one-off SQL on what the processes under test stored, and the product's
own pool for tests that drive the store directly.

Invariant: nothing here outlives its call or block. `query_rows` opens its own connection and
closes it before it returns; `open_pool` closes its pool when the block ends, however it ends. So
a test never holds a connection that the code under test, or the DROP DATABASE at the end of the
run, would have to wait for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from aiconv.store.db import make_pool


def query_rows(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Every row `sql` (with `params` for its %s placeholders) returns, as tuples."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


@asynccontextmanager
async def open_pool(
    database_url: str, max_size: int = 2, name: str = "aiconv"
) -> AsyncIterator[AsyncConnectionPool]:
    """A pool as the product makes it (`make_pool`), open for the length of the block."""
    pool = make_pool(database_url, max_size, name)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()
