"""BIND_ADDRESS and METRICS_BIND_ADDRESS as real processes (issue 13, item 11).

On a bare host the web port (with /admin) and the ops port (with /metrics) must be able to stay
off the public interface. Linux routes all of 127.0.0.0/8 to the loopback interface, so the test
uses two addresses of it as "the interface bound" and 127.0.0.1 as "another interface": a
listener bound to every interface (the old hard-coded 0.0.0.0) would answer on 127.0.0.1 too.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from aiconv.testing.botapi import BotApiDouble
from tests.support.processes import AiconvProcess, base_env

pytestmark = pytest.mark.e2e

WEB_ADDRESS = "127.0.0.2"
OPS_ADDRESS = "127.0.0.3"


class BoundProcess(AiconvProcess):
    """An aiconv process probed at the addresses it was told to bind."""

    @property
    def web_url(self) -> str:
        return f"http://{self.env['BIND_ADDRESS']}:{self.env['PORT']}"

    @property
    def ops_url(self) -> str:
        return f"http://{self.env['METRICS_BIND_ADDRESS']}:{self.env['METRICS_PORT']}"


def refuses(host: str, port: str) -> bool:
    """Whether nothing accepts a TCP connection at host:port."""
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.parametrize("mode", ["web", "worker", "all"])
async def test_ports_listen_only_on_the_addresses_set(
    mode: str, database_url: str, redis_prefix: str, double: BotApiDouble, tmp_path: Path
) -> None:
    env = base_env(database_url, redis_prefix, double.url, double.token)
    env.update(BIND_ADDRESS=WEB_ADDRESS, METRICS_BIND_ADDRESS=OPS_ADDRESS)
    process = BoundProcess(env, mode, tmp_path / f"{mode}.log")
    try:
        # Returns once /ready answers 200 at OPS_ADDRESS; for `web` and `all` its checks include
        # "web", a connection to the web port at WEB_ADDRESS (not loopback: nothing listens there).
        await process.start(timeout=120)
        async with httpx.AsyncClient(timeout=5) as http:
            ready = await http.get(f"{process.ops_url}/ready")
            assert ready.status_code == 200, ready.text
            if mode in ("web", "all"):
                assert ready.json()["checks"]["web"] == "ok"
                assert (await http.get(f"{process.web_url}/health")).status_code == 200
        assert refuses("127.0.0.1", env["METRICS_PORT"])
        assert refuses(WEB_ADDRESS, env["METRICS_PORT"])
        if mode in ("web", "all"):
            assert refuses("127.0.0.1", env["PORT"])
            assert refuses(OPS_ADDRESS, env["PORT"])
    finally:
        assert process.stop(20) == 0, process.logs()
