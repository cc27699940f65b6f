"""One-off SQL for tests that look at (or arrange) what the processes under test stored.

Invariant: each call opens its own connection and closes it before it returns, so a test never
holds a connection (or a transaction) that the code under test, or the DROP DATABASE at the end
of the run, would have to wait for.
"""

from __future__ import annotations

from typing import Any

import psycopg


def query_rows(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Every row `sql` (with `params` for its %s placeholders) returns, as tuples."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()
