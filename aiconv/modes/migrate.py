"""`aiconv migrate`: apply the PostgreSQL migrations (idempotent), say which, and exit."""

from __future__ import annotations

import argparse
import asyncio

from aiconv.config import Settings
from aiconv.store.migrate import apply_migrations


def main(settings: Settings, args: argparse.Namespace) -> int:
    applied = asyncio.run(apply_migrations(settings.database_url))
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (up to date)"
    print(f"migrations applied: {names}")
    return 0
