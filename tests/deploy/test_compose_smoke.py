"""Compose smoke test without Docker: each aiconv service's command line and environment are
taken from compose/compose.yaml (interpolated with compose/.env.example), pointed at the local
PostgreSQL and Redis, and run here: migrate must exit 0, then web, worker and ml must all report
ready on their ops port (GET /ready on METRICS_PORT), and stop cleanly on SIGTERM.

Only the hosts, credentials, ports and Telegram endpoint are replaced (a Bot API stub on
loopback answers every method with ok); ENVIRONMENT=dev so the template's placeholder secrets
are accepted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.http_stub import QuietHandler, serving

from ._support import COMPOSE_DIR, free_port, interpolate, missing, require_module

LAUNCH = "from aiconv.cli import main; raise SystemExit(main())"


def env_example() -> dict[str, str]:
    out = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v
    return out


@pytest.fixture(scope="module")
def telegram_stub() -> Iterator[str]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            self.read_body()
            method = self.path.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
            result: Any = True
            if method == "getMe":
                result = {"id": 1, "is_bot": True, "first_name": "smoke", "username": "smoke_bot"}
            elif method == "getUpdates":
                time.sleep(0.5)  # a (short) long poll, so a poller does not spin
                result = []
            elif method == "getWebhookInfo":
                result = {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
            self.answer_json({"ok": True, "result": result})

        do_GET = do_POST = _answer

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL (trust auth), dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"aiconv_smoke_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as e:
        missing(f"PostgreSQL on 127.0.0.1:5432 ({e})")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def service_env(service: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    example = env_example()
    env = {k: interpolate(str(v), example) for k, v in service["environment"].items()}
    env.update(overrides)
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    return {**base, **env}


def wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before ready")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code} {response.text[:200]}"
        except httpx.TransportError as e:
            last = repr(e)
        time.sleep(0.2)  # polling a condition, with a deadline
    raise AssertionError(f"{url} not ready after {timeout}s: {last}")


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise AssertionError("did not stop within 30 s of SIGTERM") from None
    return process.returncode


def test_each_compose_service_command_runs_and_becomes_ready(
    telegram_stub: str, database: str, tmp_path: Path
) -> None:
    require_module("aiconv.cli", "aiconv (the application itself)")
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except redis.exceptions.ConnectionError as e:
        missing(f"Redis on 127.0.0.1:6379 ({e})")

    services = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())["services"]
    prefix = f"aiconvsmoke{uuid.uuid4().hex[:6]}:"
    common = {
        "ENVIRONMENT": "dev",
        "LOG_FORMAT": "json",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "5432",
        "DB_NAME": database,
        "DB_USER": "postgres",
        "DB_PASSWORD": "",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": "6379",
        "REDIS_PASSWORD": "",
        "REDIS_KEY_PREFIX": prefix,
        "TELEGRAM_API_URL": telegram_stub,
        "TELEGRAM_WEBHOOK_URL": "https://127.0.0.1/webhook",
        "BACKUP_DIR": str(tmp_path),
        "WEB_WORKERS": "1",
        "N_THREADS": "1",
    }

    def launch(name: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        command = services[name]["command"]
        log = (tmp_path / f"{name}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *command],
            env=service_env(services[name], {**common, **extra}),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def log_of(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")[-4000:]

    migrate = launch("migrate", {"PORT": str(free_port()), "METRICS_PORT": str(free_port())})
    try:
        assert migrate.wait(timeout=60) == 0, log_of("migrate")
    finally:
        if migrate.poll() is None:
            migrate.kill()
            migrate.wait(timeout=10)

    processes: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
    try:
        for name in ("web", "worker", "ml"):
            port, metrics = free_port(), free_port()
            processes[name] = (
                launch(name, {"PORT": str(port), "METRICS_PORT": str(metrics)}),
                port,
                metrics,
            )
        for name, (process, port, metrics) in processes.items():
            try:
                wait_ready(process, f"http://127.0.0.1:{metrics}/ready", timeout=90)
                assert httpx.get(f"http://127.0.0.1:{metrics}/health", timeout=5).status_code == 200
                if name == "web":
                    assert (
                        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
                    )
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}\n--- {name} log ---\n{log_of(name)}") from None
    finally:
        codes = {name: stop(p) for name, (p, _, _) in processes.items()}
        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
    for name, code in codes.items():
        assert code in (0, -signal.SIGTERM), f"{name} exited {code}\n{log_of(name)}"
