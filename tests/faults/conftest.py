"""Fixtures of the fault scenarios (the shared ones come from tests/support/fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.redis_server import RedisServer


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, RedisServer]]:
    """A Redis of this test's own (URL and server), to restart, flush or kill."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield f"redis://127.0.0.1:{server.port}/0", server
    server.stop()
