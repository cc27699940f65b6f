"""The scheduler's jobs: stream sweep, business gauges, retention purges, database backup.

Every job's run is recorded in scheduled_runs; those records are purged after
SCHEDULED_RUNS_KEEP_DAYS (always on, unlike message retention) so the table stays small.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path
from typing import Any

import psycopg.conninfo

from aiconv.config import Settings
from aiconv.observability.gauges import business_key
from aiconv.resources import Resources
from aiconv.store.repository import SchedulerStore
from aiconv.worker.scheduler import ScheduledJob
from aiconv.worker.turns import Turns

# Acknowledged stream entries stay this long for inspection (XRANGE) before they are trimmed.
STREAM_RETENTION_SECONDS = 3600.0
# The recovery sweep looks this far back for stored messages without a reply, and leaves alone
# those younger than RECOVERY_MIN_AGE_SECONDS (still on their way to a turn).
RECOVERY_WINDOW_SECONDS = 24 * 3600.0
RECOVERY_MIN_AGE_SECONDS = 10.0
RECOVERY_BATCH = 1000
# Run records are for recent operations (did the backup run last night?); two weeks is plenty.
SCHEDULED_RUNS_KEEP_DAYS = 14


def scheduled_jobs(
    resources: Resources, maintenance: SchedulerStore, turns: Turns
) -> list[ScheduledJob]:
    settings = resources.settings
    schedule = settings.schedule

    async def recover_unanswered() -> str:
        """PostgreSQL is the truth: every stored message without a reply gets its turn, even
        when Redis lost what it knew (restart without persistence, FLUSHALL, failover)."""
        chats = await resources.store.unanswered_chats(
            RECOVERY_WINDOW_SECONDS, RECOVERY_BATCH, min_age_seconds=RECOVERY_MIN_AGE_SECONDS
        )
        found = [
            (c.chat_id, c.telegram_message_id, c.topic) for c in chats if c.telegram_message_id
        ]
        recovered = await turns.recover(found)
        return f"{recovered} of {len(found)} unanswered conversations queued again"

    async def sweep_streams() -> str:
        # Every stage's stream in every shard, and the /v1 stream. Dead-letter streams are not
        # trimmed: their entries wait for an operator (aiconv dlq, /admin/dlq).
        trimmed = 0
        for stream in resources.keys.job_streams:
            trimmed += await resources.queue.trim(stream, STREAM_RETENTION_SECONDS)
        return f"trimmed {trimmed} acknowledged entries"

    async def refresh_business_gauges() -> str:
        stats = await maintenance.business_stats()
        figures: dict[Any, Any] = {}
        figures.update({f"active_users:{w}": n for w, n in stats.active_users.items()})
        figures.update({f"conversations:{w}": n for w, n in stats.conversations.items()})
        figures.update({f"messages:{role}": n for role, n in stats.messages.items()})
        if figures:
            await resources.redis.hset(business_key(resources.keys), mapping=figures)
        return f"{len(figures)} figures"

    async def purge_runs() -> str:
        deleted = await maintenance.purge_scheduled_runs(SCHEDULED_RUNS_KEEP_DAYS)
        return f"deleted {deleted} run records"

    jobs = [
        ScheduledJob("stream_sweep", schedule.sweep_seconds, sweep_streams),
        ScheduledJob("gauges_refresh", schedule.gauges_seconds, refresh_business_gauges),
        ScheduledJob("runs_purge", schedule.retention_seconds, purge_runs),
        ScheduledJob("recovery_sweep", schedule.recovery_seconds, recover_unanswered),
    ]
    if settings.message_retention_days is not None:
        days = settings.message_retention_days

        async def purge() -> str:
            return f"deleted {await maintenance.purge_messages_older_than(days)} messages"

        jobs.append(ScheduledJob("retention_purge", schedule.retention_seconds, purge))
    if settings.backup_dir is not None:
        folder = settings.backup_dir

        async def backup() -> str:
            path = await backup_database(settings, folder)
            removed = rotate_backups(folder, settings.backup_keep)
            return f"{path.name}, {len(removed)} old removed"

        jobs.append(ScheduledJob("database_backup", schedule.backup_seconds, backup))
    return jobs


async def backup_database(settings: Settings, folder: Path) -> Path:
    """pg_dump in custom format, written under a temporary name and renamed when complete."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    final = folder / f"aiconv-{stamp}.dump"
    partial = final.with_suffix(".dump.partial")
    params = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    password = params.pop("password", None)  # via the environment: never on a command line
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    process = await asyncio.create_subprocess_exec(
        "pg_dump",
        "--format=custom",
        f"--file={partial}",
        f"--dbname={psycopg.conninfo.make_conninfo(**params)}",  # type: ignore[arg-type]
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
        raise RuntimeError(f"pg_dump failed: {stderr.decode(errors='replace')[-300:]}")
    await asyncio.to_thread(partial.rename, final)
    return final


def rotate_backups(folder: Path, keep: int) -> list[Path]:
    dumps = sorted(folder.glob("aiconv-*.dump"))
    old = dumps[:-keep] if keep > 0 else dumps
    for path in old:
        path.unlink()
    return old
