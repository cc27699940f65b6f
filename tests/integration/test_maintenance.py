"""The scheduler's jobs on the real database: retention purges and pg_dump backups."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import psycopg
import pytest
from redis.asyncio import Redis

from aiconv.config import Settings
from aiconv.jobs.keys import Keys
from aiconv.resources import Resources
from aiconv.store.repository import SchedulerStore
from aiconv.worker.maintenance import (
    SCHEDULED_RUNS_KEEP_DAYS,
    backup_database,
    rotate_backups,
    scheduled_jobs,
)
from aiconv.worker.turns import TurnConfig, Turns
from tests.support.database import open_pool, query_rows


@pytest.fixture
async def maintenance(database_url: str) -> AsyncIterator[SchedulerStore]:
    async with open_pool(database_url) as pool:
        yield SchedulerStore(pool)


async def test_retention_purges_only_old_messages(
    maintenance: SchedulerStore, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO chats (id, type) VALUES (7001, 'private') ON CONFLICT DO NOTHING")
        for n, age in enumerate((40, 31, 29, 0)):
            conn.execute(
                "INSERT INTO messages (chat_id, role, text, idempotency_key, created_at) "
                "VALUES (7001, 'user', 'x', %s, now() - make_interval(days => %s))",
                (f"retention-{n}", age),
            )
    assert await maintenance.purge_messages_older_than(30, batch=1) == 2
    left = query_rows(
        database_url, "SELECT idempotency_key FROM messages WHERE chat_id = 7001 ORDER BY id"
    )
    assert [row[0] for row in left] == ["retention-2", "retention-3"]


async def test_old_scheduled_run_records_are_purged(
    maintenance: SchedulerStore, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for age in (40, 15, 13, 0):
            conn.execute(
                "INSERT INTO scheduled_runs (job, slot, runner, started_at) "
                "VALUES ('purge-test', %s, 'test', now() - make_interval(days => %s))",
                (age, age),
            )
    assert await maintenance.purge_scheduled_runs(14, batch=1) == 2
    assert await maintenance.purge_scheduled_runs(14) == 0
    left = query_rows(
        database_url, "SELECT slot FROM scheduled_runs WHERE job = 'purge-test' ORDER BY slot"
    )
    assert [row[0] for row in left] == [0, 13]


async def test_the_run_records_purge_is_always_scheduled(
    maintenance: SchedulerStore, database_url: str, redis: Redis
) -> None:
    settings = dataclasses.replace(Settings.from_env({}), database_url=database_url)
    assert settings.message_retention_days is None  # independent of message retention
    resources = cast(Resources, SimpleNamespace(settings=settings))
    turns = Turns(redis, Keys(), TurnConfig())  # not run here
    jobs = {job.name: job for job in scheduled_jobs(resources, maintenance, turns)}
    purge = jobs["runs_purge"]
    assert purge.interval_seconds == settings.schedule.retention_seconds
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO scheduled_runs (job, slot, runner, started_at) "
            "VALUES ('purge-job-test', 1, 'test', now() - make_interval(days => %s))",
            (SCHEDULED_RUNS_KEEP_DAYS + 1,),
        )
    assert await purge.run() == "deleted 1 run records"


async def test_business_stats_count_recent_activity(maintenance: SchedulerStore) -> None:
    stats = await maintenance.business_stats()
    assert set(stats.active_users) == {"5m", "1h", "24h"}
    assert stats.active_users["5m"] <= stats.active_users["24h"]


async def test_backups_are_restorable_and_rotated(database_url: str, tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings.from_env({}), database_url=database_url)
    made = await backup_database(settings, tmp_path)
    listing = subprocess.run(
        ["pg_restore", "--list", str(made)], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE public messages" in listing and "TABLE public scheduled_runs" in listing
    older = [tmp_path / f"aiconv-2026010{day}-020000.dump" for day in (1, 2, 3)]
    for path in older:
        path.write_bytes(b"an older backup")
    removed = rotate_backups(tmp_path, keep=2)
    assert removed == older[:2]
    assert sorted(tmp_path.glob("aiconv-*.dump")) == [older[2], made]
