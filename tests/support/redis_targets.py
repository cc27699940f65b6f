"""The two kinds of Redis a suite runs against: one server, or a real Redis Cluster.

A test module that holds for both marks itself `pytestmark = pytest.mark.both_redis`; its tests
then run once per kind (ids `[single]`, `[cluster]`), through the same fixtures (`redis_target`,
`redis`, `keys`, `launch`, `in_process`). Unmarked tests run against the single server only.

The cluster is the one `.ci/redis-cluster start` keeps on loopback (3 primaries, 3 replicas),
started here when it is not up; its conversation path is split into 3 shards, one per primary,
so every hand-over between stages and every turn crosses the real slot rules.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from tests.support.services import REDIS_URL

CLUSTER_FIRST_PORT = int(os.environ.get("AICONV_TEST_REDIS_CLUSTER_PORT", "7101"))
CLUSTER_NODES = tuple(f"127.0.0.1:{CLUSTER_FIRST_PORT + i}" for i in range(6))
CLUSTER_SHARDS = 3
SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "redis-cluster"
KINDS = ("single", "cluster")


@dataclass(frozen=True)
class RedisTarget:
    kind: str
    shards: int = 1
    nodes: tuple[str, ...] = field(default=())

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    def env(self) -> dict[str, str]:
        """The settings of an aiconv process that talks to this Redis."""
        if not self.cluster:
            return {"REDIS_URL": REDIS_URL}
        return {
            "REDIS_CLUSTER_ENABLED": "true",
            "REDIS_CLUSTER_NODES": ",".join(self.nodes),
            "REDIS_SHARDS": str(self.shards),
        }

    def client(self) -> RedisClient:
        """A new client (decoded responses); the caller closes it."""
        if not self.cluster:
            return Redis.from_url(REDIS_URL, decode_responses=True)
        return RedisCluster(startup_nodes=startup_nodes(self.nodes), decode_responses=True)

    def keys(self, prefix: str) -> Keys:
        return Keys(prefix, self.shards)


SINGLE = RedisTarget("single")
CLUSTER = RedisTarget("cluster", CLUSTER_SHARDS, CLUSTER_NODES)


def startup_nodes(nodes: tuple[str, ...]) -> list[ClusterNode]:
    return [ClusterNode(host, int(port)) for host, _, port in (n.rpartition(":") for n in nodes)]


def target(kind: str) -> RedisTarget:
    if kind == "cluster":
        ensure_cluster()
        return CLUSTER
    return SINGLE


_started = False


def ensure_cluster(first_port: int = CLUSTER_FIRST_PORT) -> None:
    """Start the loopback cluster unless it is up and healthy (idempotent, once per run)."""
    global _started
    if _started and first_port == CLUSTER_FIRST_PORT:
        return
    subprocess.run(["bash", str(SCRIPT), "start", str(first_port)], check=True, timeout=120)
    _started = first_port == CLUSTER_FIRST_PORT


def stop_cluster(first_port: int) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", str(first_port)], check=True, timeout=60)


async def delete_prefixed_on(target_: RedisTarget, prefix: str) -> None:
    """Delete every key under `prefix` on this Redis (every primary of a cluster)."""
    client = target_.client()
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        # One key per DEL: in a cluster the keys lie in many slots. A pipeline, not one task per
        # key: thousands of concurrent calls exhaust a cluster client's connections per node.
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
            await pipe.execute()
    finally:
        await client.aclose()


def kinds_of(marked: bool) -> Iterator[str]:
    yield from KINDS if marked else ("single",)
