"""The shared fixtures, loaded by the root conftest with `pytest_plugins`.

Every fixture that touches a real service cleans up after itself: the run's database is
dropped at the end of the session, a test's Redis keys when the test ends, processes and
servers at teardown. Async resources are async fixtures on pytest-asyncio's loops; nothing
here starts an event loop of its own.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.store.migrate import apply_migrations, ensure_database
from aiconv.testing.botapi import BotApiDouble
from tests.support.processes import AiconvProcess, Launcher, base_env
from tests.support.redis_targets import KINDS, RedisTarget, delete_prefixed_on, target
from tests.support.services import (
    RUN_ID,
    database_url_named,
    delete_prefixed,
    drop_database,
    new_redis_prefix,
)

if TYPE_CHECKING:
    from aiconv.ml.engine import Engine
    from aiconv.resources import Resources


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def run_databases() -> AsyncIterator[dict[str, str]]:
    """The run's databases, one per kind of Redis (made when first asked for), dropped at the
    end of the session."""
    made: dict[str, str] = {}
    yield made
    for name in made:
        await drop_database(name)


@pytest.fixture
async def database_url(run_databases: dict[str, str], redis_target: RedisTarget) -> str:
    """The test run's own database, migrated. A `both_redis` test's second run gets a database
    of its own: its chats and message ids would otherwise meet the first run's (a message
    already stored is a redelivery, and is not answered again)."""
    name = f"aiconv_test_{RUN_ID}" + ("" if not redis_target.cluster else "_cluster")
    if name not in run_databases:
        url = database_url_named(name)
        await ensure_database(url)
        await apply_migrations(url)
        run_databases[name] = url
    return run_databases[name]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_redis: run against one Redis and a Redis Cluster (tests/support/redis_targets.py)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_target" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_redis"
    ):
        metafunc.parametrize("redis_target", KINDS, indirect=True)


@pytest.fixture
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The Redis this test runs against: the single server, or (in `both_redis` modules, as
    a second run) the loopback cluster."""
    return target(getattr(request, "param", "single"))


@pytest.fixture
async def redis_prefix(redis_target: RedisTarget) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = new_redis_prefix()
    yield prefix
    if redis_target.cluster:
        await delete_prefixed_on(redis_target, prefix)
    await delete_prefixed(prefix)


@pytest.fixture
def keys(redis_target: RedisTarget, redis_prefix: str) -> Keys:
    """The key layout of this test's prefix on its Redis (the cluster's has several shards)."""
    return redis_target.keys(redis_prefix)


@pytest.fixture
async def redis(redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    """A client of the test's Redis (decoded responses); keys go under `redis_prefix`."""
    client = redis_target.client()
    yield client
    await client.aclose()


@pytest.fixture
def double_options() -> Mapping[str, Any]:
    """`BotApiDouble` arguments for `double` (a token, say); a module overrides this fixture."""
    return {}


@pytest.fixture
async def double(double_options: Mapping[str, Any]) -> AsyncIterator[BotApiDouble]:
    """The Bot API double, with update ids of this test's own (as two bots' would be)."""
    options: dict[str, Any] = {"first_update_id": random.randrange(10**6, 10**9)}
    options.update(double_options)
    async with BotApiDouble(**options) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the test's own requests (10 s timeouts)."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


@pytest.fixture
async def launch(
    database_url: str,
    redis_prefix: str,
    redis_target: RedisTarget,
    double: BotApiDouble,
    tmp_path: Path,
) -> AsyncIterator[Launcher]:
    """Start aiconv processes (any mode, extra settings); all are stopped at teardown."""
    started: list[AiconvProcess] = []

    async def start(mode: str = "all", **settings: str) -> AiconvProcess:
        env = base_env(database_url, redis_prefix, double.url, double.token)
        env.update(redis_target.env())
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


@pytest.fixture(scope="module")
def engine_options() -> Mapping[str, Any]:
    """`EngineConfig` fields for the module's `engine`; a module overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def engine(engine_options: Mapping[str, Any]) -> Iterator[Engine]:
    """The bundled model in a batching engine, greedy (reproducible), shared by a module."""
    # Imported here: loading llama.cpp is for the modules that use the model, not every test.
    from aiconv.config import default_model_path
    from aiconv.ml.engine import Engine, EngineConfig

    options: dict[str, Any] = {
        "model_path": default_model_path(),
        "n_ctx": 1024,
        "n_threads": 2,
        "max_tokens": 16,
        "temperature": 0.0,
        "parallel": 4,
        "cache_mb": 64,
    }
    options.update(engine_options)
    engine = Engine.open(EngineConfig(**options))
    yield engine
    engine.close()


InProcess = Callable[..., Awaitable["Resources"]]


@pytest.fixture
async def in_process(
    database_url: str, redis_prefix: str, redis_target: RedisTarget, double: BotApiDouble
) -> AsyncIterator[InProcess]:
    """Run aiconv's modes in this test's process, polling the double, until the test ends:
    `await in_process(("worker", "ml"), SETTING="value")` returns the modes' Resources once they
    are ready and the poller waits on getUpdates."""
    # Imported here: the modes pull in the whole product, which most tests never start.
    from aiconv.config import Settings
    from aiconv.modes import process

    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def run(modes: tuple[str, ...] = ("worker",), **settings: str) -> Resources:
        env = base_env(database_url, redis_prefix, double.url, double.token)
        env.update(redis_target.env())
        env.update(settings)
        ready: asyncio.Future[Resources] = asyncio.get_running_loop().create_future()

        async def on_ready(resources: Resources) -> None:
            ready.set_result(resources)
            await stop.wait()

        running = asyncio.create_task(
            process.run_modes(Settings.from_env(env), modes, stop, on_ready)
        )
        tasks.append(running)
        waiting: list[asyncio.Future[Any]] = [running, ready]
        await asyncio.wait(waiting, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # surfaces the start-up error
        await double.wait_for(lambda: double.polling > 0, timeout=30)
        return ready.result()

    yield run
    stop.set()
    for task in tasks:
        await asyncio.wait_for(task, 60)
