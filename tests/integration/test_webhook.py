"""The webhook endpoint in-process against real Redis: and against a Redis that is down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st
from redis.asyncio import Redis
from starlette.testclient import TestClient

from aiconv.config import Settings
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.jobs.messages import UpdateJob
from aiconv.store.repository import Store
from aiconv.telegram.models import IncomingMessage, parse_update
from aiconv.web.app import create_standalone_app
from tests.support.database import open_pool
from tests.support.fuzzing import fuzz_settings
from tests.support.ports import free_port
from tests.support.redis_targets import RedisTarget
from tests.support.services import REDIS_URL
from tests.support.streams import stream_entries
from tests.support.updates import replaced
from tests.support.waiting import eventually

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


def updates_of(prefix: str) -> str:
    """The updates stream of a single Redis (one shard)."""
    return Keys(prefix).updates(0)


def client_for(
    redis_url: str, prefix: str, redis_env: dict[str, str] | None = None
) -> httpx.AsyncClient:
    settings = Settings.from_env(
        {
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "TELEGRAM_WEBHOOK_URL": "https://bot.example/webhook",
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
            **(redis_env or {}),
        }
    )
    transport = httpx.ASGITransport(app=create_standalone_app(settings))
    return httpx.AsyncClient(transport=transport, base_url="http://aiconv")


async def test_a_valid_update_is_enqueued_once(redis: Redis, redis_prefix: str) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with client_for(REDIS_URL, redis_prefix) as http:
        for _ in range(2):
            assert (await http.post("/webhook", json=UPDATE, headers=headers)).status_code == 200
    assert await redis.xlen(updates_of(redis_prefix)) == 1


@pytest.mark.both_redis
async def test_an_update_goes_to_the_stream_of_its_chats_shard(
    redis: RedisClient, keys: Keys, redis_target: RedisTarget
) -> None:
    """Each chat's updates in its shard's stream, its idempotency marker beside them; an update
    without a chat in shard 0."""
    chats = (1, 2, 7)  # shards 2, 1 and 0 of the cluster's 3
    updates = [
        replaced({**UPDATE, "update_id": 100 + chat}, ("message", "chat", "id"), chat)
        for chat in chats
    ]
    chatless = {"update_id": 99, "edited_message": UPDATE["message"]}
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with client_for(REDIS_URL, keys.prefix, redis_target.env()) as http:
        for _ in range(2):  # a redelivery is queued once, in its shard too
            for update in (*updates, chatless):
                response = await http.post("/webhook", json=update, headers=headers)
                assert response.status_code == 200
    queued: dict[int, list[int]] = {}
    for shard in keys.all_shards:
        for _, fields in await stream_entries(redis, keys.updates(shard)):
            queued.setdefault(shard, []).append(json.loads(fields["job"])["update_id"])
    expected: dict[int, list[int]] = {0: [99]}
    for chat in chats:
        expected.setdefault(keys.shard_of(chat), []).append(100 + chat)
    assert {shard: sorted(ids) for shard, ids in queued.items()} == {
        shard: sorted(ids) for shard, ids in expected.items()
    }
    assert len(queued) == keys.shards  # the chats span every shard


async def test_the_webhook_is_closed_in_polling_mode(redis: Redis, redis_prefix: str) -> None:
    # Issue 13, item 5: with a secret but no TELEGRAM_WEBHOOK_URL (polling), /webhook took
    # forged updates from anyone who knew the secret.
    env = {"REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": redis_prefix}
    settings = Settings.from_env({**env, "TELEGRAM_WEBHOOK_SECRET": SECRET})
    assert not settings.webhook_mode
    transport = httpx.ASGITransport(app=create_standalone_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://aiconv") as http:
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        response = await http.post("/webhook", json=UPDATE, headers=headers)
    assert response.status_code == 404
    assert await redis.exists(updates_of(redis_prefix)) == 0


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
            assert await probe.xlen(updates_of(redis_prefix)) == 1
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
    assert isinstance(response.json()["error"], str)  # the one plain error shape (web/errors.py)
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
    assert await redis.xlen(updates_of(redis_prefix)) == 0


def _with(path: tuple[str, ...], value: object) -> dict[str, Any]:
    return replaced(UPDATE, path, value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("update_id",), 10**30),
        (("message", "chat", "id"), int("9" * 4000)),
        (("message", "from", "id"), 2**63),
        (("message", "message_id"), -(2**63) - 1),
        (("message", "date"), 2**64),
    ],
    ids=["update_id", "chat.id", "from.id", "message_id", "date"],
)
async def test_ids_outside_bigint_are_refused_at_the_edge(
    redis: Redis, redis_prefix: str, path: tuple[str, ...], value: int
) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    body = json.dumps(_with(path, value))
    async with client_for(REDIS_URL, redis_prefix) as http:
        response = await http.post("/webhook", content=body, headers=headers)
    assert response.status_code == 400
    assert "out of range" in response.json()["error"]
    assert await redis.xlen(updates_of(redis_prefix)) == 0  # never queued, never dead-lettered


async def test_text_postgresql_cannot_hold_is_cleaned_at_the_edge_and_stored(
    redis: Redis, redis_prefix: str, database_url: str
) -> None:
    """NUL and lone surrogates: accepted cleaned, and the worker's writes then succeed."""
    update = _with(("message", "text"), "a\u0000b \ud800c \udfffd 😀")
    update["message"]["from"]["first_name"] = "An\u0000n\udc00"
    update["message"]["chat"]["id"] = update["message"]["from"]["id"] = 2**63 - 1
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with client_for(REDIS_URL, redis_prefix) as http:
        response = await http.post("/webhook", content=json.dumps(update), headers=headers)
    assert response.status_code == 200
    [(_, fields)] = await stream_entries(redis, updates_of(redis_prefix))
    payload = json.loads(fields["job"])
    assert "\\u0000" not in fields["job"] and "\\ud800" not in fields["job"]

    # What the worker does with it (worker/updates.py): parse the queued update, store it.
    message = parse_update(UpdateJob.from_payload(payload).update).message
    assert message is not None
    assert message.text is not None
    assert (message.text, message.first_name) == ("ab \ufffdc \ufffdd 😀", "Ann\ufffd")
    async with open_pool(database_url, max_size=1) as pool:
        store = Store(pool)
        key = f"in:{message.chat_id}:{message.message_id}:{redis_prefix}"
        assert await store_as_the_worker_does(store, message, key)
        assert [t.text for t in await store.history(message.chat_id, 1)] == [message.text]


async def store_as_the_worker_does(store: Store, message: IncomingMessage, key: str) -> bool:
    """What the worker does with a parsed text message (worker/updates.py): record its sender,
    then store its text under `key`. True when the sender was recorded."""
    assert message.text is not None
    recorded = await store.record_sender(message)
    await store.add_message(
        chat_id=message.chat_id,
        user_id=message.user_id,
        role="user",
        text=message.text,
        idempotency_key=key,
        telegram_update_id=message.update_id,
        telegram_message_id=message.message_id,
    )
    return recorded


# --- fuzzing: hostile JSON shapes never give a 5xx, and whatever is accepted can be stored -----

FUZZ_EXAMPLES = int(os.environ.get("AICONV_WEBHOOK_FUZZ_EXAMPLES", "400"))

_ints = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(),
    st.sampled_from([10**30, 2**63, -(2**63) - 1, int("9" * 4000)]),
)
_texts = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00"])),
    max_size=40,
)
_json = st.recursive(
    st.one_of(
        st.none(), st.booleans(), _ints, st.floats(allow_nan=False, allow_infinity=False), _texts
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
    max_leaves=16,
)
_user = st.fixed_dictionaries(
    {"id": _ints},
    optional={"first_name": _texts, "username": _texts, "language_code": _texts, "x": _json},
)
_message = st.fixed_dictionaries(
    {
        "message_id": _ints,
        "date": _ints,
        "chat": st.fixed_dictionaries({"id": _ints}, optional={"type": _texts, "x": _json}),
    },
    optional={"from": _user, "text": _texts, "caption": _texts, "photo": _json, "x": _json},
)
_update = st.fixed_dictionaries(
    {"update_id": _ints},
    optional={"message": st.one_of(_message, _json), "edited_message": _json, "x": _json},
)
_bodies = st.one_of(
    _update.map(json.dumps),
    _json.map(json.dumps),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
    st.binary(max_size=64),
)


_STORABLE: dict[str, Any] = {
    "update_id": 1,
    "message": {
        "message_id": 1,
        "date": 1,
        "chat": {"id": 77001, "type": "private"},
        "from": {"id": 77001, "first_name": "Fuzz"},
        "text": "hello",
    },
}
_NUL_TEXT = {**_STORABLE["message"], "message_id": 2, "text": "nul\x00 and lone \ud800 surrogate"}


def test_fuzzed_updates_get_200_or_400_and_every_accepted_one_can_be_stored(
    redis_prefix: str, database_url: str
) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    settings = Settings.from_env(
        {
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": redis_prefix,
            "TELEGRAM_WEBHOOK_URL": "https://bot.example/webhook",
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
        }
    )
    with TestClient(create_standalone_app(settings)) as http:

        @fuzz_settings(FUZZ_EXAMPLES)
        @hypothesis.given(body=_bodies)
        # Always reach the storing path: what is generated depends on the modules loaded (hypothesis
        # draws on their constants), so a run may generate no storable update by itself.
        @hypothesis.example(body=json.dumps(_STORABLE))
        @hypothesis.example(body=json.dumps({**_STORABLE, "update_id": 2, "message": _NUL_TEXT}))
        def post(body: str | bytes) -> None:
            response = http.post("/webhook", content=body, headers=headers)
            assert response.status_code in (200, 400), response.text

        post()

    async def store_every_queued_update() -> int:
        redis = Redis.from_url(REDIS_URL, decode_responses=True)
        entries = await stream_entries(redis, updates_of(redis_prefix))
        await redis.aclose()
        stored = 0
        async with open_pool(database_url, max_size=1) as pool:
            store = Store(pool)
            for _, fields in entries:
                # What the worker does with a queued update (worker/updates.py).
                update = parse_update(UpdateJob.from_payload(json.loads(fields["job"])).update)
                message = update.message
                if message is None or not message.text:
                    continue
                await store_as_the_worker_does(
                    store, message, f"fuzz:{redis_prefix}:{update.update_id}"
                )
                stored += 1
        return stored

    assert asyncio.run(store_every_queued_update()) > 0  # the run reached the storing path
