"""aiconv as a real process against the test database, Redis prefix and Bot API double.

`base_env` builds a process's settings for a fast but real run; `AiconvProcess` starts a
mode, waits until its probes answer (bounded by a deadline) and stops it like an operator
would (SIGTERM, then SIGKILL only past the timeout).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.support.ports import free_port
from tests.support.services import REDIS_URL


def base_env(database_url: str, redis_prefix: str, api_url: str, token: str) -> dict[str, str]:
    """Settings for a fast test run: short replies, quick but real pacing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "DB_", "REDIS_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=redis_prefix,
        TELEGRAM_BOT_TOKEN=token,
        TELEGRAM_API_URL=api_url,
        ENVIRONMENT="dev",
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        MAX_TOKENS="32",
        TEMPERATURE="0",
        N_THREADS="1",  # the test process and the double need the other core
        TYPING_CHARS_PER_SECOND="300",
        TYPING_READ_PAUSE_SECONDS="0.3",
        TYPING_MIN_DELAY_SECONDS="0.3",
        TYPING_MAX_DELAY_SECONDS="1.5",
        TURN_DEBOUNCE_SECONDS="0.3",
        JOB_VISIBILITY_TIMEOUT_SECONDS="5",
        PORT=str(free_port()),
        METRICS_PORT=str(free_port()),
    )
    return env


def webhook_settings(port: int, secret: str) -> dict[str, str]:
    """Settings of a process that serves the webhook on `port` of loopback and has Telegram (the
    double) deliver updates there, signed with `secret`."""
    return {
        "PORT": str(port),
        "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{port}/webhook",
        "TELEGRAM_WEBHOOK_SECRET": secret,
    }


class AiconvProcess:
    def __init__(self, env: dict[str, str], mode: str, log_path: Path) -> None:
        self.env = env
        self.mode = mode
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.env['METRICS_PORT']}"

    async def start(self, timeout: float = 90.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiconv.cli", self.mode], env=self.env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        probes = [f"{self.ops_url}/ready"]
        if self.mode in ("web", "all"):
            probes.append(f"{self.web_url}/health")  # granian's workers bind after the ops port
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"aiconv {self.mode} exited early:\n{self.logs()}")
                try:
                    answers = [await http.get(probe) for probe in probes]
                    if all(answer.status_code == 200 for answer in answers):
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)  # polling a readiness condition, bounded by the deadline
        raise TimeoutError(f"aiconv {self.mode} not ready in {timeout}s:\n{self.logs()}")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 40.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events


class Launcher(Protocol):
    """The `launch` fixture: start an aiconv mode with extra settings; stopped at teardown."""

    async def __call__(self, mode: str = "all", **settings: str) -> AiconvProcess: ...
