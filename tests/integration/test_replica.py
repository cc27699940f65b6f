"""Lag-tolerant reads against a real streaming replica of the test server (pg_replica.py).

Which server answered is proven by staleness, not by trusting the router: replay is paused on the
replica, a row is written on the primary, and a read that does not see the row came from the
replica (one that sees it, from the primary). The fallback counter and the lag gauge are read
from the metrics the router sets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import pytest_asyncio
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from aiconv.config import ConfigError, Settings
from aiconv.jobs.keys import Keys
from aiconv.observability.gauges import run_gauges
from aiconv.observability.metrics import DB_REPLICA_FALLBACKS, DB_REPLICA_LAG, DB_REPLICA_UP
from aiconv.resources import open_resources
from aiconv.store.admin import AdminStore
from aiconv.store.db import (
    REPLICA_RETRY_SECONDS,
    REPLICA_WAIT_SECONDS,
    ReadRouter,
    make_pool,
    measure_replica_lag,
)
from aiconv.store.repository import SchedulerStore
from aiconv.web import auth
from aiconv.web.app import create_standalone_app
from tests.faults.pgproxy import PgProxy
from tests.support.database import open_pool
from tests.support.fuzzing import protocol_settings
from tests.support.messages import incoming_message
from tests.support.pg_replica import StreamingReplica, server_binaries, wait_for
from tests.support.services import ADMIN_DATABASE_URL, REDIS_URL, RUN_ID, migrated_database

DATABASE = f"aiconv_test_{RUN_ID}_replica"
CATCH_UP_SECONDS = 30.0


@pytest.fixture(scope="session")
def replica() -> Iterator[StreamingReplica]:
    """A streaming replica of the test server, started once for the session and removed."""
    binaries = server_binaries(ADMIN_DATABASE_URL)
    if binaries is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("pg_basebackup/pg_ctl are not installed; CI must run the replica tests")
        pytest.skip("pg_basebackup/pg_ctl are not installed: no streaming replica to test against")
    node = StreamingReplica(ADMIN_DATABASE_URL, *binaries)
    try:
        node.create()
        yield node
    finally:
        node.destroy()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def primary_url(replica: StreamingReplica) -> AsyncIterator[str]:
    """The replica tests' own database on the primary, migrated, once the replica has it too."""
    async with migrated_database(DATABASE) as url:
        wait_for(
            lambda: (
                replica.has_database(DATABASE)
                and replica.execute(DATABASE, "SELECT to_regclass('messages') IS NOT NULL")
            ),
            CATCH_UP_SECONDS,
            "the migrated database reaches the replica",
        )
        yield url


@pytest.fixture
async def primary(primary_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with open_pool(primary_url, name="primary") as pool:
        yield pool


class FakeClock:
    """The router's monotonic clock, moved by the test (the retry pause without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def router_with(
    primary: AsyncConnectionPool, replica: StreamingReplica
) -> AsyncIterator[Callable[..., ReadRouter]]:
    """Routers over the primary and a replica pool of their own, closed after the test."""
    made: list[ReadRouter] = []

    def make(max_lag_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> Any:
        pool = make_pool(replica.url(DATABASE), 2, "replica", application_name="aiconv-replica")
        router = ReadRouter(primary, pool, max_lag_seconds, clock=clock)
        made.append(router)
        return router

    yield make
    for router in made:
        await router.close()


def fallbacks(reason: str) -> float:
    return float(DB_REPLICA_FALLBACKS.labels(reason)._value.get())


async def add_user(pool: AsyncConnectionPool) -> int:
    """A new user row on the primary; returns its id."""
    user_id = uuid.uuid4().int % 2**40 + 10**12
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO users (id, first_name) VALUES (%s, 'r')", (user_id,))
    return user_id


async def primary_users(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM users")).fetchone()
    assert row is not None
    return int(row[0])


async def replica_caught_up(replica: StreamingReplica, primary: AsyncConnectionPool) -> None:
    """Wait until the replica has replayed a row written on the primary just now."""
    user_id = await add_user(primary)
    await asyncio.to_thread(
        wait_for,
        lambda: replica.execute(DATABASE, f"SELECT count(*) FROM users WHERE id = {user_id}") == 1,
        CATCH_UP_SECONDS,
        "the replica replays the primary's newest row",
    )


class ReplayPaused:
    """Replay paused on the replica for the block (WAL is still received), resumed after."""

    def __init__(self, replica: StreamingReplica) -> None:
        self.replica = replica

    def __enter__(self) -> ReplayPaused:
        self.replica.execute(DATABASE, "SELECT pg_wal_replay_pause()::text")
        return self

    def __exit__(self, *_: object) -> None:
        self.replica.execute(DATABASE, "SELECT pg_wal_replay_resume()::text")


async def test_admin_stats_and_exports_are_read_on_the_replica(
    replica: StreamingReplica, primary: AsyncConnectionPool, router_with: Callable[..., ReadRouter]
) -> None:
    router = router_with(max_lag_seconds=30.0)
    await router.open()
    admin = AdminStore(primary, reads=router)
    await replica_caught_up(replica, primary)
    before = (await admin.stats(1))["totals"]["users"]
    down, lagging = fallbacks("down"), fallbacks("lagging")
    with ReplayPaused(replica):
        user_id = await add_user(primary)
        assert await primary_users(primary) == before + 1
        # The replica lags by seconds only (the row it last replayed is fresh), so it serves:
        # its answer lacks the row the primary has.
        assert (await admin.stats(1))["totals"]["users"] == before
        assert await admin.export_user(user_id) is None
        assert DB_REPLICA_UP._value.get() == 1
        assert DB_REPLICA_LAG._value.get() <= 30.0
    assert (fallbacks("down"), fallbacks("lagging")) == (down, lagging)
    await replica_caught_up(replica, primary)
    exported = await admin.export_user(user_id)
    assert exported is not None and exported["user"]["id"] == user_id


async def test_business_gauges_figures_are_read_on_the_replica(
    replica: StreamingReplica, primary: AsyncConnectionPool, router_with: Callable[..., ReadRouter]
) -> None:
    router = router_with(max_lag_seconds=30.0)
    await router.open()
    maintenance = SchedulerStore(primary, reads=router)
    await replica_caught_up(replica, primary)
    before = (await maintenance.business_stats()).messages.get("user", 0)
    with ReplayPaused(replica):
        chat_id = uuid.uuid4().int % 2**40 + 10**12
        async with primary.connection() as conn, conn.transaction():
            await conn.execute("INSERT INTO chats (id, type) VALUES (%s, 'private')", (chat_id,))
            await conn.execute(
                """INSERT INTO messages (chat_id, role, text, idempotency_key)
                   VALUES (%s, 'user', 'hi', %s)""",
                (chat_id, uuid.uuid4().hex),
            )
        assert (await maintenance.business_stats()).messages.get("user", 0) == before
    await replica_caught_up(replica, primary)
    assert (await maintenance.business_stats()).messages.get("user", 0) == before + 1


async def test_a_replica_lagging_past_the_limit_is_skipped_for_the_primary(
    replica: StreamingReplica, primary: AsyncConnectionPool, router_with: Callable[..., ReadRouter]
) -> None:
    max_lag = 0.5
    router = router_with(max_lag_seconds=max_lag)
    await router.open()
    admin = AdminStore(primary, reads=router)
    await replica_caught_up(replica, primary)
    lagging = fallbacks("lagging")
    with ReplayPaused(replica):
        await add_user(primary)
        # Received but not replayed: the lag grows from the last replayed commit on.
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while (lag := await router.refresh_lag()) is None or lag <= max_lag:
            assert time.monotonic() < deadline, f"lag stayed at {lag}"
            await asyncio.sleep(0.1)
        assert DB_REPLICA_LAG._value.get() > max_lag
        assert (await admin.stats(1))["totals"]["users"] == await primary_users(primary)
        assert fallbacks("lagging") == lagging + 1
    # Replay resumed: once it has replayed all it received, the replica is caught up (lag 0,
    # however old its last replayed commit) and serves again.
    await replica_caught_up(replica, primary)
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while (lag := await router.refresh_lag()) != 0.0:
        assert time.monotonic() < deadline, f"lag stayed at {lag}"
        await asyncio.sleep(0.1)
    async with router.connection() as conn:
        row = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone()
        assert row == (True,)
    assert fallbacks("lagging") == lagging + 1


async def test_a_stopped_replica_falls_back_to_the_primary_and_is_used_again_when_back(
    replica: StreamingReplica, primary: AsyncConnectionPool, router_with: Callable[..., ReadRouter]
) -> None:
    clock = FakeClock()
    router = router_with(max_lag_seconds=30.0, clock=clock)
    await router.open()
    admin = AdminStore(primary, reads=router)
    await replica_caught_up(replica, primary)
    assert await router.refresh_lag() is not None
    down = fallbacks("down")
    await asyncio.to_thread(replica.stop)
    try:
        await add_user(primary)
        # Served by the primary: the row written after the replica stopped is counted.
        assert (await admin.stats(1))["totals"]["users"] == await primary_users(primary)
        assert fallbacks("down") == down + 1
        assert DB_REPLICA_UP._value.get() == 0
        # Within the retry pause the replica is not even tried.
        assert (await admin.stats(1))["totals"]["users"] == await primary_users(primary)
        assert fallbacks("down") == down + 2
    finally:
        await asyncio.to_thread(replica.start)
    # Back: once the pool has reconnected, reads are the replica's again.
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while True:
        clock.now += REPLICA_RETRY_SECONDS + 1
        if await router.refresh_lag() is not None:
            break
        assert time.monotonic() < deadline, "the replica pool never reconnected"
        await asyncio.sleep(0.2)
    assert DB_REPLICA_UP._value.get() == 1
    down = fallbacks("down")
    async with router.connection() as conn:
        row = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone()
        assert row == (True,)
    assert fallbacks("down") == down


async def test_the_conversation_path_never_touches_the_replica(
    replica: StreamingReplica, primary_url: str
) -> None:
    settings = dataclasses.replace(
        Settings(),
        database_url=primary_url,
        database_replica_url=replica.url(DATABASE),
        redis_url=REDIS_URL,
    )
    async with open_resources(settings) as resources:
        reads = resources.reads
        assert reads is not None and reads.replica is not None
        replica_requests = reads.replica.get_stats().get("requests_num", 0)
        chat_id = uuid.uuid4().int % 2**40 + 10**12
        with ReplayPaused(replica):
            message = incoming_message(chat_id=chat_id, user_id=chat_id)
            assert await resources.store.record_sender(message)
            await resources.store.add_message(
                chat_id=chat_id,
                role="user",
                text="the message just stored",
                idempotency_key=f"in:{chat_id}:1",
                user_id=chat_id,
                telegram_message_id=1,
            )
            # A reply's history must include the message just stored, however far behind the
            # replica is: it comes from the primary.
            history = await resources.store.history(chat_id, 10)
            assert [turn.text for turn in history] == ["the message just stored"]
            assert await resources.store.message_by_key(f"in:{chat_id}:1") is not None
        assert reads.replica.get_stats().get("requests_num", 0) == replica_requests


async def test_without_a_replica_every_read_is_the_primarys_and_no_fallback_is_counted(
    primary: AsyncConnectionPool,
) -> None:
    router = ReadRouter.for_primary(primary, None, 30.0, 2)
    await router.open()
    down, lagging = fallbacks("down"), fallbacks("lagging")
    async with router.connection() as conn:
        row = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone()
    assert row == (False,)
    assert await router.refresh_lag() is None
    assert (fallbacks("down"), fallbacks("lagging")) == (down, lagging)
    await router.close()


async def test_the_lag_of_a_server_not_in_recovery_is_zero(primary: AsyncConnectionPool) -> None:
    async with primary.connection() as conn:
        assert await measure_replica_lag(conn) == 0.0


def test_replica_settings_are_read_and_checked() -> None:
    env = {
        "DATABASE_REPLICA_URL": "postgresql://app@db-ro:5432/aiconv",
        "REPLICA_MAX_LAG_SECONDS": "12.5",
    }
    settings = Settings.from_env(env)
    assert settings.database_replica_url == "postgresql://app@db-ro:5432/aiconv"
    assert settings.replica_max_lag_seconds == 12.5
    defaults = Settings.from_env({})
    assert defaults.database_replica_url is None and defaults.replica_max_lag_seconds == 30.0
    with pytest.raises(ConfigError, match="DATABASE_REPLICA_URL"):
        Settings.from_env({"DATABASE_REPLICA_URL": "mysql://db-ro/aiconv"})
    # Only the host: the primary's user, password, port and database.
    parts = {"DB_HOST": "db-rw", "DB_USER": "app", "DB_PASSWORD": "p@ss", "DB_PORT": "5433"}
    by_host = Settings.from_env({**parts, "DB_REPLICA_HOST": "db-ro"})
    assert by_host.database_replica_url == "postgresql://app:p%40ss@db-ro:5433/aiconv"
    assert Settings.from_env(parts).database_replica_url is None
    # Like the primary's, its password is no placeholder in production.
    production = {"ENVIRONMENT": "production", "TELEGRAM_BOT_TOKEN": "123:real"}
    with pytest.raises(ConfigError, match="DATABASE_REPLICA_URL"):
        Settings.from_env({**production, "DATABASE_REPLICA_URL": "postgresql://u:change-me@ro/a"})


async def test_the_admin_api_of_the_web_app_reads_on_the_replica(
    replica: StreamingReplica, primary: AsyncConnectionPool, primary_url: str, redis_prefix: str
) -> None:
    """The wiring: create_app gives the admin API a router over DATABASE_REPLICA_URL."""
    key = "replica-test-signing-key-0123456789abcdef"
    settings = Settings.from_env(
        {
            "DATABASE_URL": primary_url,
            "DATABASE_REPLICA_URL": replica.url(DATABASE),
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": redis_prefix,
            "JWT_SECRET_KEY": key,
        }
    )
    headers = {"Authorization": f"Bearer {auth.mint(key, 'tests', 600, ('read',))}"}
    app = create_standalone_app(settings)
    await replica_caught_up(replica, primary)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aiconv") as http:
            before = (await http.get("/admin/stats?days=1", headers=headers)).json()
            with ReplayPaused(replica):
                await add_user(primary)
                answer = await http.get("/admin/stats?days=1", headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.json()["totals"]["users"] == before["totals"]["users"]
            assert await primary_users(primary) == before["totals"]["users"] + 1


async def test_the_gauges_loop_measures_the_replica(
    replica: StreamingReplica,
    router_with: Callable[..., ReadRouter],
    redis_prefix: str,
) -> None:
    """Every process's gauges loop measures the lag, so the alert does not wait for a read."""
    router = router_with()
    await router.open()
    DB_REPLICA_UP.set(-1)
    DB_REPLICA_LAG.set(-1)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    stop = asyncio.Event()
    loop = asyncio.create_task(run_gauges(redis, Keys(redis_prefix), None, stop, router))
    try:
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while DB_REPLICA_UP._value.get() != 1:
            assert time.monotonic() < deadline and not loop.done(), "the loop never measured"
            await asyncio.sleep(0.05)
        assert 0 <= DB_REPLICA_LAG._value.get() <= 30
    finally:
        stop.set()
        await loop
        await redis.aclose()


class RouterMachine(RuleBasedStateMachine):
    """The router's choice as a state machine, against the real primary and the real replica
    behind a proxy that a rule cuts (an outage as clients see one) and restores.

    Model: a read goes to the replica exactly when the replica is reachable and not inside the
    retry pause that its last failure started; every read the primary serves instead counts one
    ``down`` fallback; ``aiconv_db_replica_up`` says what the last attempt found.
    """

    primary_url = ""
    replica_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.proxy = PgProxy(target_port=urlsplit(self.replica_url).port or 5432)
        self.run(self.proxy.start())
        self.primary = make_pool(self.primary_url, 2, "primary")
        replica = make_pool(self.proxy.url(self.replica_url), 2, "replica")
        self.router = ReadRouter(self.primary, replica, 30.0, clock=self.clock)
        self.run(self.primary.open())
        self.run(self.router.open())
        self.reachable = True
        self.paused_until = -math.inf
        self.run(self.until_the_replica_serves())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.router.close())
        self.run(self.primary.close())
        self.run(self.proxy.stop())
        self.loop.close()

    async def until_the_replica_serves(self) -> None:
        """After an outage the pool reconnects in the background (about once a second)."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while await self.router.refresh_lag() is None:
            assert time.monotonic() < deadline, "the replica pool never reconnected"
            self.clock.now += REPLICA_RETRY_SECONDS
            await asyncio.sleep(0.1)
        self.paused_until = -math.inf

    @rule()
    def cut(self) -> None:
        self.run(self.proxy.cut())
        self.reachable = False

    async def until_the_pool_has_reconnected(self) -> None:
        """Straight through the replica pool, so the router's pause is left as it is."""
        pool = self.router.replica
        assert pool is not None
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while True:
            try:
                async with pool.connection(timeout=REPLICA_WAIT_SECONDS):
                    return
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "the replica pool never reconnected"

    @rule()
    def restore(self) -> None:
        if not self.reachable:
            self.run(self.proxy.restore())
            self.run(self.until_the_pool_has_reconnected())
            self.reachable = True

    @rule(seconds=st.sampled_from([0.5, REPLICA_RETRY_SECONDS]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def read(self) -> None:
        tried = self.clock.now >= self.paused_until
        expect_replica = tried and self.reachable
        down = fallbacks("down")

        async def served_by_replica() -> bool:
            async with self.router.connection() as conn:
                row = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone()
            return bool(row and row[0])

        assert self.run(served_by_replica()) == expect_replica
        assert fallbacks("down") == down + (0 if expect_replica else 1)
        if tried:
            assert DB_REPLICA_UP._value.get() == (1 if self.reachable else 0)
            if not self.reachable:
                self.paused_until = self.clock.now + REPLICA_RETRY_SECONDS


@pytest.mark.timeout(600, method="thread")
def test_the_router_state_machine(replica: StreamingReplica, primary_url: str) -> None:
    RouterMachine.primary_url = primary_url
    RouterMachine.replica_url = replica.url(DATABASE)
    run_state_machine_as_test(
        RouterMachine,
        settings=protocol_settings(15, 10),
    )


def test_a_replica_back_within_the_pause_is_used_only_after_it(
    replica: StreamingReplica, primary_url: str
) -> None:
    """The machine's sharpest path, always run: after a failure the replica is not tried until
    the pause is over, even once it is reachable again."""
    RouterMachine.primary_url = primary_url
    RouterMachine.replica_url = replica.url(DATABASE)
    machine = RouterMachine()
    try:
        machine.cut()
        machine.read()  # the primary's, the pause begins
        machine.restore()
        machine.read()  # still the primary's: inside the pause
        machine.time_passes(REPLICA_RETRY_SECONDS)
        machine.read()  # the replica's again
    finally:
        machine.teardown()
