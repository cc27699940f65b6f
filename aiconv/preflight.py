"""Checks a long-running mode makes before it serves: each failure is one line and exit code 2.

- Ports: a port another process holds stops this one. granian binds with SO_REUSEPORT, so a
  second aiconv on the same port would start "fine" and silently take part of the first one's
  traffic; a probe bound without SO_REUSEPORT fails on any listener, shared or not.
- Redis persistence (production): the webhook answers Telegram 200 once an update is in Redis,
  and Telegram never resends an update it got a 200 for. A Redis without persistence (no AOF, no
  RDB save points) loses those updates on restart, so production refuses it unless the operator
  accepts that with REDIS_EPHEMERAL_OK=true. Managed Redis often disables CONFIG: then INFO alone
  decides, and when it cannot (AOF off, save points unknown) the process warns and starts.
  On a Redis Cluster every primary is asked: the updates of a chat live on its shard's primary,
  so one primary without persistence loses that part of them. (Replicas are not asked: a
  failover promotes one, and the check runs again at the next start.)
- Redis eviction (production): at its memory bound a Redis with a `maxmemory-policy` other than
  `noeviction` deletes keys to make room: stream entries, turn state, idempotency markers, so
  messages would be lost or answered twice without a trace. `noeviction` fails the writes
  instead, which the modes wait out like an outage. INFO memory tells, on every primary;
  REDIS_EPHEMERAL_OK=true accepts the risk here too.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any, cast

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from aiconv.config import ConfigError, Settings
from aiconv.jobs.client import RedisClient

log = structlog.get_logger(__name__)


def ensure_port_free(host: str, port: int, variable: str) -> None:
    """Raise ConfigError naming `variable` when something already listens on host:port."""
    if port == 0:
        return  # the kernel picks a free one
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count as "in use";
        # no SO_REUSEPORT: a listener that allows sharing still makes this bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                variable, f"port {port} on {host} is not available ({error.strerror})"
            ) from None


async def require_durable_redis(redis: RedisClient, settings: Settings) -> None:
    """In production, refuse a Redis that would lose accepted updates on restart, or evict
    keys at its memory bound."""
    if settings.environment != "production" or settings.redis_ephemeral_ok:
        return
    try:
        memory = await _per_primary(redis, "memory")
        infos = await _per_primary(redis, "persistence")
    except (RedisError, RedisClusterException, OSError) as error:
        # Not reachable yet (a cluster none of whose nodes answers raises RedisClusterException,
        # not a RedisError): the modes wait outages out, and the check must not turn one into a
        # crash loop. It runs again at the next start.
        log.warning("cannot tell whether Redis persists its data", error=type(error).__name__)
        return
    evicting = {
        node: str(info.get("maxmemory_policy"))
        for node, info in memory.items()
        if int(info.get("maxmemory") or 0) > 0
        and str(info.get("maxmemory_policy", "noeviction")) != "noeviction"
    }
    if evicting:
        policies = ", ".join(sorted(set(evicting.values())))
        raise _risky_redis(
            redis,
            evicting,
            f"Redis evicts keys at its memory bound{{where}} (maxmemory-policy {policies}): it "
            "would delete queued jobs and turn state. Set maxmemory-policy noeviction in Redis, "
            "or set REDIS_EPHEMERAL_OK=true to accept that loss",
        )
    undecided = [node for node, info in infos.items() if str(info.get("aof_enabled", "0")) != "1"]
    if not undecided:
        return
    try:
        saves = await _per_primary(redis, "save")
    except ResponseError:  # CONFIG disabled or renamed (managed Redis), or not allowed by ACL
        log.warning(
            "Redis has AOF off and CONFIG is not available: cannot tell whether RDB snapshots "
            "are on; a Redis without persistence loses accepted updates when it restarts"
        )
        return
    ephemeral = [node for node in undecided if not str(saves.get(node, {}).get("save", "")).strip()]
    if not ephemeral:
        return
    raise _risky_redis(
        redis,
        ephemeral,
        "Redis has no persistence{where} (appendonly no, no RDB save points): a restart would "
        "lose updates already accepted from Telegram. Turn on appendonly yes in Redis, or set "
        "REDIS_EPHEMERAL_OK=true to accept that loss",
    )


def _risky_redis(redis: RedisClient, nodes: Iterable[str], problem: str) -> ConfigError:
    """The refusal to start on a Redis that may lose data; `{where}` in `problem` becomes the
    cluster primaries concerned (nothing for a single Redis)."""
    where = "" if not isinstance(redis, RedisCluster) else f" (primaries {', '.join(nodes)})"
    return ConfigError("REDIS_EPHEMERAL_OK", problem.replace("{where}", where))


async def _per_primary(redis: RedisClient, what: str) -> dict[str, dict[str, Any]]:
    """An INFO section (`what` "persistence" or "memory") or CONFIG GET save ("save") of each
    primary, by node name; a single Redis is the one primary, named "redis"."""

    async def ask(**target: Any) -> dict[str, Any]:
        if what != "save":
            info: dict[str, Any] = await redis.info(what, **target)
            return info
        return cast(dict[str, Any], await redis.config_get("save", **target))

    if not isinstance(redis, RedisCluster):
        return {"redis": await ask()}
    await redis.initialize()  # the slot map: which nodes are primaries now
    # One node at a time, by name: a node's answer is then never merged with another's.
    return {node.name: await ask(target_nodes=node) for node in redis.get_primaries()}
