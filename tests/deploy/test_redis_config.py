"""Redis as compose and the dev overlay run it, under the real redis-server (issue 13: item 1's
memory bound, item 11's password off the command line).

Each test takes the shipped configuration (compose's `configs.redis-conf` with the variables of
compose/.env filled in; the dev overlay's ConfigMap and start script), starts redis-server with
it on a free loopback port in a temporary folder, and checks what an operator relies on: the
password is required but on no command line (`ps` reads /proc/PID/cmdline), the health check's
`redis-cli ping` passes with REDISCLI_AUTH, AOF is on, and at the memory bound writes fail
instead of evicting queued jobs.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import yaml

from . import test_kustomize
from ._support import COMPOSE_DIR, free_port, require_tool, server_process
from .test_compose import VAR_RE, env_example

CONF_IN_CONTAINER = "/usr/local/etc/redis/redis.conf"


def compose_redis_conf(password: str) -> str:
    """compose's redis.conf as compose renders it from compose/.env (the template's values)."""
    compose = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    service = compose["services"]["redis"]
    assert service["command"] == ["redis-server", CONF_IN_CONTAINER]
    assert service["configs"] == [{"source": "redis-conf", "target": CONF_IN_CONTAINER}]
    values = {**env_example(), "REDIS_PASSWORD": password}
    content = compose["configs"]["redis-conf"]["content"]
    assert isinstance(content, str)
    return VAR_RE.sub(lambda m: values.get(m.group(1), m.group(3) or ""), content)


@contextmanager
def serving(argv: list[str], env: dict[str, str], port: int) -> Iterator[int]:
    """Run redis-server (argv) until it answers on `port`; yield its process id."""

    def answers() -> bool:
        try:
            redis.Redis(port=port, socket_timeout=1).ping()
        except redis.AuthenticationError:
            return True  # it answers (and wants a password)
        except redis.ConnectionError:
            return False
        return True

    with server_process(argv, answers, within=20, env=env) as process:
        yield process.pid


def check_running(pid: int, port: int, password: str) -> int:
    """Check a running Redis as described above; return its configured maxmemory in bytes."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert password not in cmdline, cmdline
    environ_free = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, socket_timeout=5).ping()
    # The health check / probes: `redis-cli ping` with the password in REDISCLI_AUTH.
    cli = require_tool("redis-cli")
    pong = subprocess.run(
        [cli, "-p", str(port), "ping"],
        env={**environ_free, "REDISCLI_AUTH": password},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert pong.stdout.strip() == "PONG", pong.stdout + pong.stderr
    client = redis.Redis(port=port, password=password, socket_timeout=5, decode_responses=True)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    configured = int(str(client.config_get("maxmemory")["maxmemory"]))
    # At the bound, a write fails and what is queued stays (no eviction).
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 256 * 1024)
    client.xadd("jobs", {"job": "first"})
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        for _ in range(10_000):
            client.xadd("jobs", {"job": "x" * 1024})
    [(_, first)] = list(client.xrange("jobs", count=1) or [])
    assert first == {"job": "first"}
    return configured


def test_compose_redis_reads_its_password_and_memory_bound_from_a_file(tmp_path: Path) -> None:
    server = require_tool("redis-server")
    password = secrets.token_hex(32)
    conf = tmp_path / "redis.conf"
    conf.write_text(compose_redis_conf(password))
    assert re.search(r"^maxmemory 512mb$", conf.read_text(), flags=re.MULTILINE)
    port = free_port()
    argv = [server, str(conf), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    with serving(argv, dict(os.environ), port) as pid:
        assert check_running(pid, port, password) == 512 * 1024 * 1024


def test_dev_overlay_redis_writes_its_config_at_start_and_keeps_the_password_off_argv(
    tmp_path: Path,
) -> None:
    server = require_tool("redis-server")
    docs = test_kustomize.built("dev", str(tmp_path / "kustomize"))
    [config] = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "redis-config"
    ]
    [statefulset] = [
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "redis"
    ]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    assert "REDIS_PASSWORD" not in " ".join(container["command"])
    assert container["command"] == ["/bin/sh", "-c"]
    [script] = container["args"]
    assert "$(REDIS_PASSWORD)" not in script  # kubelet would expand that into the command line
    assert "maxmemory 256mb" in config["data"]["redis.conf"].splitlines()
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    (etc / "redis.conf").write_text(config["data"]["redis.conf"])
    port = free_port()
    start = "exec redis-server /run/redis/redis.conf"
    assert start in script
    script = (
        script.replace(start, f"{start} --port {port} --bind 127.0.0.1 --dir {tmp_path}")
        .replace("/etc/redis/", f"{etc}/")
        .replace("/run/redis/", f"{run}/")
    )
    script = script.replace("exec redis-server", f"exec {server}")
    password = secrets.token_hex(32)
    env = {**os.environ, "REDIS_PASSWORD": password}
    with serving(["/bin/sh", "-c", script], env, port) as pid:
        assert check_running(pid, port, password) == 256 * 1024 * 1024
    assert (run / "redis.conf").stat().st_mode & 0o777 == 0o600
