"""Which failures are outages and which are the job's own.

An outage of something outside the job (Redis, PostgreSQL, the network, Telegram answering 5xx)
says nothing about the job: retried later, the same job succeeds. The consumer waits such a
failure out with backoff and does not count it toward the job's attempts, however long it lasts;
only the job's own failures (a definite 4xx, a bug, bad data) use attempts up and finally move
the job to the dead-letter stream. Handlers translate an outside service's outage into
`DependencyUnavailable`; Redis, PostgreSQL and OS-level errors are recognised as they are.
"""

from __future__ import annotations

import psycopg
from redis.exceptions import (
    ClusterError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class DependencyUnavailable(Exception):
    """An outside service the job needs is down or unreachable (e.g. Telegram 5xx, network).

    Raise it `from` the service's own error: `raise DependencyUnavailable("telegram") from error`.
    """

    def __init__(self, service: str, detail: str = "") -> None:
        super().__init__(f"{service} unavailable" + (f": {detail}" if detail else ""))
        self.service = service
        self.detail = detail


# Redis unreachable (a cluster client says so with an error of its own, not a ConnectionError),
# or a Redis Cluster between states (a failover: CLUSTERDOWN, slots not covered yet, TRYAGAIN
# during a resharding): each passes once Redis is back or the cluster settles.
REDIS_OUTAGES: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterUnreachableError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
)

# Failures of a dependency rather than of the job itself: waited out, never counted as attempts.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    DependencyUnavailable,
    *REDIS_OUTAGES,
    psycopg.OperationalError,
    OSError,
)
