"""Auxiliary loops survive their own errors; a core loop's failure stops the process (issue 9, 15).

Against the real Redis and PostgreSQL. The failing loops are the test's own functions put in place
of the real ones: what is checked is how `run_modes` treats a failure, whatever raised it.
"""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
import structlog.testing
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from aiconv.config import Settings
from aiconv.jobs.keys import Keys
from aiconv.jobs.retry import repeat_every
from aiconv.modes import process, worker
from aiconv.observability.gauges import refresh_streams
from aiconv.observability.loops import LoopFailed, supervised
from aiconv.observability.metrics import BACKGROUND_ERRORS, STREAM_OLDEST_PENDING_AGE
from tests.support.ports import free_port
from tests.support.services import REDIS_URL
from tests.support.waiting import eventually


def errors_of(loop: str) -> float:
    return float(BACKGROUND_ERRORS.labels(loop)._value.get())


async def test_supervised_retries_a_failing_body_until_it_succeeds() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ValueError("not yet")

    before = errors_of("test-flaky")
    await asyncio.wait_for(supervised("test-flaky", flaky, asyncio.Event(), first_delay=0.01), 10)
    assert calls == 3
    assert errors_of("test-flaky") == before + 2


async def test_supervised_ends_when_stopped_during_its_backoff() -> None:
    stop = asyncio.Event()

    async def broken() -> None:
        stop.set()  # asked to stop while failing: the retry must not come
        raise RuntimeError("broken")

    await asyncio.wait_for(supervised("test-broken", broken, stop, first_delay=60), 5)


async def test_repeat_every_outlives_a_redis_error_and_ends_on_stop() -> None:
    stop = asyncio.Event()
    rounds = 0

    async def step() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RedisConnectionError("Redis is restarting")
        if rounds == 3:
            stop.set()

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(repeat_every(stop, 0.01, step, "test step cannot reach redis"), 10)
    assert rounds == 3  # the error cost one round, not the loop; stop ended it
    assert [entry["event"] for entry in logs] == ["test step cannot reach redis"]
    assert logs[0]["error"] == "ConnectionError"


class AckAfterXinfo(Redis):
    """The real Redis, with the jobs acknowledged between XINFO GROUPS and XPENDING: the
    interleaving that killed a worker during a 1000-user run."""

    async def xinfo_groups(self, name: str) -> list[dict[str, object]]:  # type: ignore[override]
        groups: list[dict[str, object]] = await super().xinfo_groups(name)
        for group in groups:
            for entry in await self.xpending_range(name, str(group["name"]), "-", "+", 100):
                await self.xack(name, str(group["name"]), entry["message_id"])
        return groups


async def test_gauges_survive_jobs_acknowledged_between_two_reads(keys: Keys) -> None:
    redis = AckAfterXinfo.from_url(REDIS_URL, decode_responses=True)
    try:
        stream = keys.updates(0)
        await redis.xgroup_create(stream, keys.group_of(stream), id="0", mkstream=True)
        await redis.xadd(stream, {"job": "{}"})
        await redis.xreadgroup(keys.group_of(stream), "c1", {stream: ">"}, count=1)
        await refresh_streams(redis, keys)  # raised ValueError: XPENDING's min was None
        assert STREAM_OLDEST_PENDING_AGE.labels("updates")._value.get() == 0
    finally:
        await redis.aclose()


def small_settings(database_url: str, redis_prefix: str) -> Settings:
    return dataclasses.replace(
        Settings.from_env({}),
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
        metrics_port=free_port(),
        port=free_port(),
    )


async def test_a_failing_auxiliary_loop_does_not_stop_the_process(
    monkeypatch: pytest.MonkeyPatch, database_url: str, redis_prefix: str
) -> None:
    async def gauges_that_fail(*_: object) -> None:
        raise ValueError("a gauge read raced an acknowledgement")

    monkeypatch.setattr(process, "run_gauges", gauges_that_fail)
    monkeypatch.setattr("aiconv.observability.loops.Backoff.next", lambda self: 0.05)
    settings = small_settings(database_url, redis_prefix)
    stop = asyncio.Event()
    before = errors_of("gauges")
    running = asyncio.create_task(process.run_modes(settings, (), stop))
    await eventually(lambda: errors_of("gauges") >= before + 3 or running.done(), timeout=30)
    assert not running.done(), "the process stopped on an auxiliary loop's error"
    async with httpx.AsyncClient() as http:
        health = await http.get(f"http://127.0.0.1:{settings.metrics_port}/health")
        assert health.status_code == 200
        metrics = (await http.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")).text
    assert 'aiconv_background_errors_total{loop="gauges"}' in metrics
    stop.set()
    await asyncio.wait_for(running, 30)  # a clean stop: no exception


async def test_a_failing_core_loop_stops_the_process_with_an_error(
    monkeypatch: pytest.MonkeyPatch, database_url: str, redis_prefix: str
) -> None:
    gauges_stopped = asyncio.Event()

    async def worker_that_fails(*_: object, **__: object) -> None:
        raise ConnectionError("the consumer died")

    async def gauges(*args: object, **_: object) -> None:
        stop = args[-1]
        assert isinstance(stop, asyncio.Event)
        await stop.wait()
        gauges_stopped.set()

    monkeypatch.setattr(worker, "run_worker", worker_that_fails)
    monkeypatch.setattr(process, "run_gauges", gauges)
    settings = small_settings(database_url, redis_prefix)
    with pytest.raises(LoopFailed) as failure:
        await asyncio.wait_for(process.run_modes(settings, ("worker",)), 30)
    assert failure.value.name == "worker"
    assert isinstance(failure.value.__cause__, ConnectionError)
    assert gauges_stopped.is_set()  # the other loops were stopped, not left running


async def test_a_core_loop_that_ends_early_stops_the_process(
    monkeypatch: pytest.MonkeyPatch, database_url: str, redis_prefix: str
) -> None:
    async def worker_that_returns(*_: object, **__: object) -> None:
        return

    monkeypatch.setattr(worker, "run_worker", worker_that_returns)
    settings = small_settings(database_url, redis_prefix)
    with pytest.raises(LoopFailed, match="worker"):
        await asyncio.wait_for(process.run_modes(settings, ("worker",)), 30)
