"""The webhook endpoint in-process against real Redis: and against a Redis that is down."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from redis.asyncio import Redis

from aiconv.config import Settings
from aiconv.web.app import create_app
from tests.conftest import REDIS_URL
from tests.e2e.harness import eventually, free_port

SECRET = "in-process-secret"
UPDATE = {
    "update_id": 42,
    "message": {
        "message_id": 1,
        "date": 0,
        "chat": {"id": 5, "type": "private"},
        "from": {"id": 5, "is_bot": False, "first_name": "A"},
        "text": "hi",
    },
}


def client_for(redis_url: str, prefix: str) -> httpx.AsyncClient:
    settings = Settings.from_env(
        {
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "TELEGRAM_WEBHOOK_URL": "https://bot.example/webhook",
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
        }
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    return httpx.AsyncClient(transport=transport, base_url="http://aiconv")


async def test_a_valid_update_is_enqueued_once(redis: Redis, redis_prefix: str) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with client_for(REDIS_URL, redis_prefix) as http:
        for _ in range(2):
            assert (await http.post("/webhook", json=UPDATE, headers=headers)).status_code == 200
    assert await redis.xlen(f"{redis_prefix}updates") == 1


async def test_redis_down_answers_503_so_telegram_retries(redis_prefix: str) -> None:
    port = free_port()  # nothing listens here
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with client_for(f"redis://127.0.0.1:{port}/0", redis_prefix) as http:
        response = await http.post("/webhook", json=UPDATE, headers=headers)
        assert response.status_code == 503
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("failing")


async def test_an_update_refused_during_an_outage_is_accepted_after_it(redis_prefix: str) -> None:
    port = free_port()
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with client_for(f"redis://127.0.0.1:{port}/0", redis_prefix) as http:
        assert (await http.post("/webhook", json=UPDATE, headers=headers)).status_code == 503
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:

            async def accepted() -> bool:
                response = await http.post("/webhook", json=UPDATE, headers=headers)
                return response.status_code == 200

            await eventually(accepted, timeout=20, interval=0.2)
            probe = Redis.from_url(f"redis://127.0.0.1:{port}/0")
            assert await probe.xlen(f"{redis_prefix}updates") == 1
            await probe.aclose()
        finally:
            server.terminate()
            server.wait(10)


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{}", {}, 401),
        (b'{"update_id": 1}', {"X-Telegram-Bot-Api-Secret-Token": "wrong"}, 401),
        (b"[]", {"X-Telegram-Bot-Api-Secret-Token": SECRET}, 400),
        (b'{"update_id": "1"}', {"X-Telegram-Bot-Api-Secret-Token": SECRET}, 400),
        (
            b'{"update_id": 1, "message": {"chat": {}}}',
            {"X-Telegram-Bot-Api-Secret-Token": SECRET},
            400,
        ),
        (b"\xff\xfe", {"X-Telegram-Bot-Api-Secret-Token": SECRET}, 400),
        (b" " * (1024 * 1024 + 1), {"X-Telegram-Bot-Api-Secret-Token": SECRET}, 413),
    ],
)
async def test_bad_requests_get_clear_errors(
    redis_prefix: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    async with client_for(REDIS_URL, redis_prefix) as http:
        response = await http.post("/webhook", content=body, headers=headers)
    assert response.status_code == status
    assert response.json()["ok"] is False
    # An unread rest of the body leaves the connection unusable: only a 413 closes it.
    assert (response.headers.get("connection") == "close") == (status == 413)


def _nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize(
    "body",
    [
        _nested(10_000),
        b'{"update_id": 1, "message": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_001,
        b'{"update_id": 1, "edited_message": ' + _nested(900) + b"}",
        b'{"update_id": 1, "edited_message": ' + _nested(40) + b"}",
    ],
    ids=["array-10000", "object-10000", "array-900", "array-40"],
)
async def test_deeply_nested_json_is_a_bad_request_not_a_crash(
    redis: Redis, redis_prefix: str, body: bytes
) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with client_for(REDIS_URL, redis_prefix) as http:
        response = await http.post("/webhook", content=body, headers=headers)
    assert response.status_code == 400
    assert "nested deeper" in response.json()["error"]
    assert await redis.xlen(f"{redis_prefix}updates") == 0
