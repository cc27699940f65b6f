"""Start-up checks: a Redis that would lose accepted updates, and a port another process holds.

The local test Redis runs without persistence (no AOF, no RDB save points): production settings
against it are refused. Private redis-server processes show the accepted configurations; two
of them joined into a private Redis Cluster show that every primary is asked.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from aiconv.config import ConfigError, Settings
from aiconv.preflight import ensure_port_free, require_durable_redis
from tests.support.ports import free_port
from tests.support.private_redis import private_cluster, private_redis
from tests.support.services import REDIS_URL

PRODUCTION = dataclasses.replace(Settings(), environment="production")


async def test_production_refuses_a_redis_without_persistence(redis: Redis) -> None:
    assert (await redis.info("persistence"))["aof_enabled"] == 0  # the test Redis, as set up
    assert (await redis.config_get("save"))["save"] == ""
    with pytest.raises(ConfigError) as refused:
        await require_durable_redis(redis, PRODUCTION)
    assert refused.value.variable == "REDIS_EPHEMERAL_OK"
    assert "appendonly" in str(refused.value)


async def test_an_ephemeral_redis_is_accepted_when_the_operator_says_so(redis: Redis) -> None:
    await require_durable_redis(redis, dataclasses.replace(PRODUCTION, redis_ephemeral_ok=True))
    await require_durable_redis(redis, Settings())  # development: never checked


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(("--appendonly", "yes", "--save", ""), id="aof"),
        pytest.param(
            ("--appendonly", "no", "--save", "900", "1"), id="rdb"
        ),  # one arg each: Redis 6.2 too
    ],
)
async def test_a_persistent_redis_is_accepted(options: tuple[str, ...], tmp_path: Path) -> None:
    dir_options = ("--dir", str(tmp_path), "--appendfilename", "aof.aof")
    async with private_redis(*options, *dir_options) as redis:
        await require_durable_redis(redis, PRODUCTION)


async def test_on_a_cluster_every_primary_must_persist(tmp_path: Path) -> None:
    aof = ("--appendonly", "yes", "--appendfilename", "aof.aof", "--save", "")
    async with private_cluster(tmp_path / "durable", aof, aof) as (durable, _, _):
        await require_durable_redis(durable, PRODUCTION)
    # One primary persists, the other does not: its chats' updates would be lost.
    async with private_cluster(tmp_path / "half", aof, ("--save", "")) as (half, names, _):
        with pytest.raises(ConfigError) as refused:
            await require_durable_redis(half, PRODUCTION)
    assert refused.value.variable == "REDIS_EPHEMERAL_OK"
    assert f"(primaries {names[1]})" in str(refused.value)
    assert names[0] not in str(refused.value)


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
async def test_production_refuses_a_redis_that_evicts_keys(policy: str, tmp_path: Path) -> None:
    aof = ("--appendonly", "yes", "--appendfilename", "aof.aof", "--dir", str(tmp_path))
    async with private_redis(*aof, "--maxmemory", "64mb", "--maxmemory-policy", policy) as redis:
        with pytest.raises(ConfigError) as refused:
            await require_durable_redis(redis, PRODUCTION)
        assert refused.value.variable == "REDIS_EPHEMERAL_OK"
        assert f"maxmemory-policy {policy}" in str(refused.value)
        await require_durable_redis(redis, dataclasses.replace(PRODUCTION, redis_ephemeral_ok=True))
        # The bound alone is fine: at it, writes fail (waited out), nothing is deleted.
        await redis.config_set("maxmemory-policy", "noeviction")
        await require_durable_redis(redis, PRODUCTION)
        # Without a bound no policy ever applies.
        await redis.config_set("maxmemory-policy", policy)
        await redis.config_set("maxmemory", 0)
        await require_durable_redis(redis, PRODUCTION)


async def test_on_a_cluster_no_primary_may_evict(tmp_path: Path) -> None:
    aof = ("--appendonly", "yes", "--appendfilename", "aof.aof", "--save", "")
    lru = (*aof, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    async with private_cluster(tmp_path, aof, lru) as (cluster, names, _):
        with pytest.raises(ConfigError) as refused:
            await require_durable_redis(cluster, PRODUCTION)
    assert f"(primaries {names[1]})" in str(refused.value)
    assert names[0] not in str(refused.value)


async def test_an_unreachable_cluster_is_waited_out_not_refused() -> None:
    # The modes wait outages out; a start during one must not become a crash loop.
    unreachable = RedisCluster(
        host="127.0.0.1", port=free_port(), decode_responses=True, socket_connect_timeout=1
    )
    try:
        await require_durable_redis(unreachable, PRODUCTION)
    finally:
        await unreachable.aclose()


async def test_without_config_an_unknown_rdb_setting_warns_and_starts(tmp_path: Path) -> None:
    async with private_redis(
        "--save", "", "--rename-command", "CONFIG", "", "--dir", str(tmp_path)
    ) as redis:
        await require_durable_redis(redis, PRODUCTION)  # managed Redis: cannot tell, so a warning


def production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "REDIS_"))}
    env.update(
        ENVIRONMENT="production",
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX="aiconv-test-preflight:",
        TELEGRAM_BOT_TOKEN="123456:real-looking-token",
        PORT=str(free_port()),
        METRICS_PORT=str(free_port()),
    )
    env.update(extra)
    return env


@pytest.mark.parametrize("mode", ["worker", "web"])
def test_production_modes_stop_with_one_line_on_an_ephemeral_redis(mode: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiconv.cli", mode],
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("aiconv: configuration error: REDIS_EPHEMERAL_OK: Redis has no persistence")
    )


def listener(reuse_port: bool) -> socket.socket:
    sock = socket.socket()
    if reuse_port:  # as granian binds: a second process could share the port unnoticed
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("reuse_port", [True, False], ids=["shared-listener", "plain-listener"])
def test_a_taken_port_is_refused_naming_the_variable(reuse_port: bool) -> None:
    with listener(reuse_port) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"PORT: port {port} on 0.0.0.0 is not available"):
            ensure_port_free("0.0.0.0", port, "PORT")
    ensure_port_free("0.0.0.0", port, "PORT")  # free again once the listener is gone


@pytest.mark.parametrize(
    ("mode", "variable"),
    [("web", "PORT"), ("web", "METRICS_PORT"), ("all", "PORT"), ("all", "METRICS_PORT")],
)
def test_a_mode_stops_with_one_line_when_its_port_is_taken(mode: str, variable: str) -> None:
    with listener(reuse_port=True) as taken:
        port = str(taken.getsockname()[1])
        env = production_env(ENVIRONMENT="dev", **{variable: port})
        result = subprocess.run(
            [sys.executable, "-m", "aiconv.cli", mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"aiconv: configuration error: {variable}: port {port} on 0.0.0.0 is not available "
        "(Address already in use)"
    )
