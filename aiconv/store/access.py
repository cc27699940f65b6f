"""The run-time allow-list: users and chats granted by the admin API (ACCESS_MODE=allowlist).

Grants live in PostgreSQL (table access_grants, migration 0005), so every worker sees a grant or a
revocation at its next message; the ids in ALLOWED_USER_IDS / ALLOWED_CHAT_IDS are allowed on top
and cannot be revoked here (change the setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from psycopg_pool import AsyncConnectionPool

GrantKind = Literal["user", "chat"]


@dataclass(frozen=True)
class Grant:
    kind: GrantKind
    id: int
    granted_by: str
    created_at: datetime


class AccessStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def grant(self, kind: GrantKind, entity_id: int, granted_by: str) -> Grant:
        """Allow a user or chat; granting twice keeps the first grant."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """INSERT INTO access_grants (kind, id, granted_by) VALUES (%s, %s, %s)
                   ON CONFLICT (kind, id) DO UPDATE SET kind = EXCLUDED.kind
                   RETURNING kind, id, granted_by, created_at""",
                (kind, entity_id, granted_by),
            )
            row = await cursor.fetchone()
        assert row is not None  # RETURNING yields the row, new or existing
        return Grant(row[0], row[1], row[2], row[3])

    async def revoke(self, kind: GrantKind, entity_id: int) -> bool:
        """Withdraw a grant; False when there was none."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM access_grants WHERE kind = %s AND id = %s", (kind, entity_id)
            )
        return cursor.rowcount > 0

    async def grants(self) -> list[Grant]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT kind, id, granted_by, created_at FROM access_grants
                   ORDER BY kind, id"""
            )
            rows = await cursor.fetchall()
        return [Grant(row[0], row[1], row[2], row[3]) for row in rows]
