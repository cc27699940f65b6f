"""Checks a long-running mode makes before it serves: each failure is one line and exit code 2.

- Ports: a port another process holds stops this one. granian binds with SO_REUSEPORT, so a
  second aiconv on the same port would start "fine" and silently take part of the first one's
  traffic; a probe bound without SO_REUSEPORT fails on any listener, shared or not.
- Redis persistence (production): the webhook answers Telegram 200 once an update is in Redis,
  and Telegram never resends an update it got a 200 for. A Redis without persistence (no AOF, no
  RDB save points) loses those updates on restart, so production refuses it unless the operator
  accepts that with REDIS_EPHEMERAL_OK=true. Managed Redis often disables CONFIG: then INFO alone
  decides, and when it cannot (AOF off, save points unknown) the process warns and starts.
"""

from __future__ import annotations

import socket

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from aiconv.config import ConfigError, Settings

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


async def require_durable_redis(redis: Redis, settings: Settings) -> None:
    """In production, refuse a Redis that would lose accepted updates on restart."""
    if settings.environment != "production" or settings.redis_ephemeral_ok:
        return
    try:
        info = await redis.info("persistence")
    except (RedisError, OSError) as error:
        # Not reachable yet: the modes wait outages out, and the check must not turn one into a
        # crash loop. It runs again at the next start.
        log.warning("cannot tell whether Redis persists its data", error=type(error).__name__)
        return
    if str(info.get("aof_enabled", "0")) == "1":
        return
    try:
        save = str((await redis.config_get("save")).get("save", "")).strip()
    except ResponseError:  # CONFIG disabled or renamed (managed Redis), or not allowed by ACL
        log.warning(
            "Redis has AOF off and CONFIG is not available: cannot tell whether RDB snapshots "
            "are on; a Redis without persistence loses accepted updates when it restarts"
        )
        return
    if save:
        return
    raise ConfigError(
        "REDIS_EPHEMERAL_OK",
        "Redis has no persistence (appendonly no, no RDB save points): a restart would lose "
        "updates already accepted from Telegram. Turn on appendonly yes in Redis, or set "
        "REDIS_EPHEMERAL_OK=true to accept that loss",
    )
