"""The Redis client every process talks through: one Redis, or a Redis Cluster.

`RedisClient` is either; the code above it uses only what both offer and never a command whose
keys span two hash slots (aiconv/jobs/keys.py says how the keys are laid out for that). Only
`connect` knows which one a process has.
"""

from __future__ import annotations

from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from aiconv.config import Settings
from aiconv.jobs.keys import Keys

RedisClient: TypeAlias = Redis | RedisCluster

# Above the longest blocking read (XREADGROUP BLOCK), so a slow answer is not a dead connection.
SOCKET_TIMEOUT_SECONDS = 15
CONNECT_TIMEOUT_SECONDS = 3
# Connections per server (per node of a cluster). redis-py refuses one more past it (it does
# not wait), and a process holds one per blocking read (a consumer per shard stream and stage)
# besides its handlers' short commands: the default, 100, is within reach of `aiconv all` with
# many shards or a high WORKER_CONCURRENCY.
MAX_CONNECTIONS = 512


def connect(settings: Settings) -> RedisClient:
    """A client for the configured Redis; it connects on first use."""
    if settings.redis_cluster_enabled:
        nodes = []
        for node in settings.redis_cluster_nodes:
            host, _, port = node.rpartition(":")
            nodes.append(ClusterNode(host, int(port)))
        return RedisCluster(
            startup_nodes=nodes,
            password=settings.redis_password,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            health_check_interval=15,
            max_connections=MAX_CONNECTIONS,
        )
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=15,
        max_connections=MAX_CONNECTIONS,
    )


def keys_for(settings: Settings) -> Keys:
    """The key layout of these settings (prefix and shards)."""
    return Keys(settings.redis_key_prefix, settings.redis_shards)
