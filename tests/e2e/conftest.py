from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aiconv.testing.botapi import BotApiDouble
from tests.e2e.harness import AiconvProcess, base_env

Launcher = Callable[..., AiconvProcess]


@pytest.fixture
async def double() -> AsyncIterator[BotApiDouble]:
    # Update ids of their own per test, as two bots' would be.
    async with BotApiDouble(first_update_id=random.randrange(10**6, 10**9)) as server:
        yield server


@pytest.fixture
async def launch(
    database_url: str, redis_prefix: str, double: BotApiDouble, tmp_path: Path
) -> AsyncIterator[Callable[..., object]]:
    """Start aiconv processes (any mode, extra settings); all are stopped at teardown."""
    started: list[AiconvProcess] = []

    async def start(mode: str = "all", **settings: str) -> AiconvProcess:
        env = base_env(database_url, redis_prefix, double.url, double.token)
        env.update(settings)
        process = AiconvProcess(env, mode, tmp_path / f"aiconv-{mode}-{len(started)}.log")
        started.append(process)
        await process.start()
        return process

    yield start
    for process in started:
        process.stop()
        # Shown by pytest only when the test failed.
        print(f"--- aiconv {process.mode} log ---\n{process.logs()}")
