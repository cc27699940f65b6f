"""`aiconv web` as a real process: start-up, SIGTERM, and an oversized body (issue 9, 12 and 14).

- It serves /health before the webhook is registered, and keeps trying to register it while
  Telegram fails; /ready on the ops port reports `webhook` until then.
- Its granian workers are spawned (fresh interpreters), never forked from the main process,
  whose threads could leave a forked copy stuck on a lock.
- SIGTERM stops it within seconds, every time.
- A 413 says `Connection: close` and the server closes that connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import httpx
import pytest

from aiconv.testing.botapi import BotApiDouble
from tests.support.processes import AiconvProcess, base_env, webhook_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
SECRET = "web-process-secret"
STOP_SECONDS = 15.0  # SIGTERM to exit: granian gives a worker 5 s, the ops thread 5 s


def web_process(
    database_url: str, redis_prefix: str, double: BotApiDouble, log: Path, **extra: str
) -> AiconvProcess:
    env = base_env(database_url, redis_prefix, double.url, double.token)
    env.update(webhook_settings(int(env["PORT"]), SECRET), **extra)
    return AiconvProcess(env, "web", log)


def children(pid: int) -> list[str]:
    """Command lines of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace").strip())
    return found


async def test_web_serves_before_telegram_accepts_the_webhook(
    database_url: str, redis_prefix: str, double: BotApiDouble, tmp_path: Path
) -> None:
    double.fail_next("setWebhook", 502, times=10_000)  # Telegram down at start-up
    web = web_process(database_url, redis_prefix, double, tmp_path / "web.log")
    starting = asyncio.create_task(web.start(timeout=120))  # returns once /ready says ready
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            await eventually(lambda: registration_failed(http, web.ops_url, times=2), timeout=60)
            await eventually(lambda: health(http, web.web_url), timeout=60)
            assert await health(http, web.ops_url)
            ready = await http.get(f"{web.ops_url}/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["webhook"] == "failing: WebhookNotRegistered"
            assert ready.json()["checks"]["redis"] == "ok"
            assert double.webhook_url is None
            assert not starting.done()

            double.clear_faults("setWebhook")  # Telegram is back
            await asyncio.wait_for(starting, 120)
            assert double.webhook_url == web.env["TELEGRAM_WEBHOOK_URL"]
            ready = await http.get(f"{web.ops_url}/ready")
            assert ready.status_code == 200 and ready.json()["checks"]["webhook"] == "ok"
    finally:
        starting.cancel()
        web.stop(STOP_SECONDS)
    assert '"event": "webhook registered"' in web.logs()


async def registration_failed(http: httpx.AsyncClient, ops_url: str, times: int) -> bool:
    """True once the ops port counts `times` failed webhook registrations."""
    try:
        metrics = (await http.get(f"{ops_url}/metrics")).text
    except httpx.TransportError:
        return False
    for line in metrics.splitlines():
        if line.startswith('aiconv_background_errors_total{loop="webhook_registration"}'):
            return float(line.rsplit(" ", 1)[1]) >= times
    return False


async def health(http: httpx.AsyncClient, base: str) -> bool:
    try:
        return (await http.get(f"{base}/health")).status_code == 200
    except httpx.TransportError:
        return False


async def test_sigterm_stops_web_within_seconds_every_time(
    database_url: str, redis_prefix: str, double: BotApiDouble, tmp_path: Path
) -> None:
    for attempt in range(6):
        workers = 1 + attempt % 2
        log = tmp_path / f"web-{attempt}.log"
        web = web_process(database_url, redis_prefix, double, log, WEB_WORKERS=str(workers))
        await web.start(timeout=120)
        assert web.process is not None
        spawned = [c for c in children(web.process.pid) if "resource_tracker" not in c]
        # Spawned, not forked: a forked worker's command line is its parent's.
        assert len(spawned) == workers, spawned
        assert all("multiprocessing.spawn" in c for c in spawned), spawned
        async with httpx.AsyncClient() as http:  # both ports serve
            assert (await http.get(f"{web.web_url}/health")).status_code == 200
            assert (await http.get(f"{web.ops_url}/ready")).status_code == 200
        returncode = web.stop(STOP_SECONDS)  # raises TimeoutExpired (after a kill) when it hangs
        assert returncode == 0, web.logs()
        assert not children(web.process.pid)


async def test_an_oversized_body_gets_413_and_its_connection_closed(
    database_url: str, redis_prefix: str, double: BotApiDouble, tmp_path: Path
) -> None:
    web = web_process(database_url, redis_prefix, double, tmp_path / "web.log")
    await web.start(timeout=120)
    try:
        url = f"{web.web_url}/webhook"
        good = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        huge = b'{"update_id": 1, "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
        async with httpx.AsyncClient() as http:  # one client, keep-alive: as Telegram's
            for n in range(5):
                refused = await http.post(url, content=huge, headers=good)
                assert refused.status_code == 413
                assert refused.headers["connection"] == "close"
                update = double.make_update(1300 + n, "hello")
                assert (await http.post(url, json=update, headers=good)).status_code == 200

        with socket.create_connection(("127.0.0.1", int(web.env["PORT"])), timeout=10) as raw:
            raw.sendall(
                b"POST /webhook HTTP/1.1\r\nHost: aiconv\r\n"
                + f"X-Telegram-Bot-Api-Secret-Token: {SECRET}\r\n".encode()
                + f"Content-Length: {len(huge)}\r\n\r\n".encode()
            )
            answer = b""
            while chunk := raw.recv(65536):  # ends when the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413")
        assert b"connection: close" in answer.lower()
    finally:
        web.stop(STOP_SECONDS)
