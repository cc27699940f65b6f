"""The admin API in-process against real PostgreSQL and Redis: every endpoint, its auth, its
errors, the `aiconv admin token` command, and a schemathesis run against the served schema.

The admin tests get a database of their own (block, delete and the schemathesis run change
users at random ids; the stats assert exact totals), emptied before each test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import jwt as pyjwt
import psycopg
import pytest
import pytest_asyncio
import schemathesis
import structlog.testing
from jwt.utils import base64url_encode
from redis.asyncio import Redis

from aiconv.config import Settings
from aiconv.jobs.keys import Keys
from aiconv.store.admin import AdminStore
from aiconv.store.repository import GenerationStats, Store
from aiconv.telegram.models import IncomingMessage
from aiconv.web import auth
from aiconv.web.admin_schema import openapi_document
from aiconv.web.app import create_standalone_app
from tests.support.admin import KEY, WRITE, admin_client, bearer, settings_for
from tests.support.database import open_pool
from tests.support.fuzzing import fuzz_settings
from tests.support.messages import incoming_message
from tests.support.ports import free_port
from tests.support.services import (
    REDIS_URL,
    RUN_ID,
    delete_prefixed,
    migrated_database,
    new_redis_prefix,
)
from tests.support.streams import stream_entries

OTHER_KEY = "another-signing-key-0123456789abcdef"
ADMIN_DB = f"aiconv_test_{RUN_ID}_admin"
OPENAPI = openapi_document()  # generated from the models (aiconv/web/admin_schema.py)

ENDPOINTS = [
    ("GET", "/admin/stats"),
    ("GET", "/admin/dlq"),
    ("POST", "/admin/dlq/updates.0@1-0/replay"),
    ("DELETE", "/admin/dlq/updates.0@1-0"),
    ("POST", "/admin/users/1/block"),
    ("POST", "/admin/users/1/unblock"),
    ("GET", "/admin/users/1/export"),
    ("DELETE", "/admin/users/1"),
    ("GET", "/admin/access"),
    ("POST", "/admin/access/users/1"),
    ("DELETE", "/admin/access/chats/-1"),
    ("GET", "/admin/openapi.json"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin_database_url() -> AsyncIterator[str]:
    async with migrated_database(ADMIN_DB) as url:
        yield url


@pytest.fixture
def db(admin_database_url: str) -> str:
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE users, chats, messages")
    return admin_database_url


@pytest.fixture
async def store(db: str) -> AsyncIterator[Store]:
    async with open_pool(db) as pool:
        yield Store(pool)


def incoming(chat_id: int, user_id: int, chat_type: str = "private") -> IncomingMessage:
    return incoming_message(
        chat_id=chat_id, chat_type=chat_type, user_id=user_id, username=f"u{user_id}"
    )


async def say(
    store: Store, chat_id: int, user_id: int, text: str, chat_type: str = "private"
) -> int:
    await store.record_sender(incoming(chat_id, user_id, chat_type))
    return await store.add_message(
        chat_id=chat_id, role="user", text=text, user_id=user_id, idempotency_key=f"u:{text}"
    )


async def reply(store: Store, chat_id: int, text: str, prompt: int = 0, completion: int = 0) -> int:
    return await store.add_message(
        chat_id=chat_id,
        role="assistant",
        text=text,
        idempotency_key=f"a:{text}",
        stats=GenerationStats(prompt_tokens=prompt, completion_tokens=completion),
    )


# --- authentication -----------------------------------------------------------------------


def _tokens() -> dict[str, tuple[dict[str, str], str]]:
    now = time.time()
    no_sub = pyjwt.encode(
        {"exp": int(now) + 60, "iat": int(now), "aud": auth.ADMIN_AUDIENCE, "scope": "read write"},
        KEY,
        algorithm="HS256",
        headers={"kid": auth.key_id(KEY)},
    )
    return {
        "none": ({}, "missing"),
        "basic": ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing"),
        "empty bearer": ({"Authorization": "Bearer "}, "missing"),
        "garbage": (bearer("not.a.token"), "malformed"),
        "other key": (
            bearer(auth.mint(OTHER_KEY, "x", 60)),
            "unknown key id",
        ),
        "expired": (bearer(auth.mint(KEY, "x", 60, now=now - 3600)), "expired"),
        "no subject": (bearer(no_sub), "subject"),
    }


@pytest.mark.parametrize("case", list(_tokens()))
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_endpoint_needs_a_valid_token(
    db: str, redis_prefix: str, method: str, path: str, case: str
) -> None:
    headers, reason = _tokens()[case]
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.request(method, path, headers=headers)
    assert response.status_code == 401
    assert reason in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_an_alg_none_token_is_refused(db: str, redis_prefix: str) -> None:
    claims = {"sub": "x", "exp": time.time() + 60}
    header = base64url_encode(b'{"alg":"none"}').decode()
    token = f"{header}.{base64url_encode(json.dumps(claims).encode()).decode()}."
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.get("/admin/stats", headers=bearer(token))
    assert response.status_code == 401


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_a_read_token_reads_and_cannot_write(
    db: str, redis_prefix: str, method: str, path: str
) -> None:
    read_only = bearer(auth.mint(KEY, "reader", 60, ("read",)))
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.request(method, path, headers=read_only)
    if method == "GET":
        assert response.status_code in (200, 404)  # 404: user 1 does not exist
        return
    assert response.status_code == 403
    assert "write scope" in response.json()["error"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


async def test_every_call_and_every_refusal_is_audited_without_the_token(
    db: str, redis_prefix: str
) -> None:
    good = auth.mint(KEY, "alice", 60, WRITE)
    reader = auth.mint(KEY, "bob", 60, ("read",))
    expired = auth.mint(KEY, "carol", 60, now=time.time() - 3600)
    with structlog.testing.capture_logs() as logs:
        async with admin_client(settings_for(db, redis_prefix)) as http:
            await http.get("/admin/stats", headers=bearer(good))
            await http.post("/admin/users/1/block", headers=bearer(reader))
            await http.get("/admin/stats", headers=bearer(expired))
            await http.get("/admin/dlq", headers={"Authorization": "Bearer x.y.z"})
            await http.delete("/admin/users/1")
    audit = [
        {k: entry.get(k) for k in ("event", "status", "method", "path", "sub", "reason")}
        for entry in logs
        if entry["event"] in ("admin: call", "admin: refused")
    ]
    assert audit == [
        {"event": "admin: call", "status": 200, "method": "GET", "path": "/admin/stats",
         "sub": "alice", "reason": None},
        {"event": "admin: refused", "status": 403, "method": "POST",
         "path": "/admin/users/1/block", "sub": "bob", "reason": "needs scope write"},
        {"event": "admin: refused", "status": 401, "method": "GET", "path": "/admin/stats",
         "sub": None, "reason": "token expired"},
        {"event": "admin: refused", "status": 401, "method": "GET", "path": "/admin/dlq",
         "sub": None, "reason": "malformed token"},
        {"event": "admin: refused", "status": 401, "method": "DELETE", "path": "/admin/users/1",
         "sub": None, "reason": "missing bearer token"},
    ]  # fmt: skip
    logged = repr(logs)
    for token in (good, reader, expired):
        for part in token.split("."):
            assert part not in logged


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_without_jwt_secret_key_the_api_is_not_there(
    db: str, redis_prefix: str, method: str, path: str
) -> None:
    async with admin_client(settings_for(db, redis_prefix, key=None)) as http:
        response = await http.request(method, path, headers=bearer())
        assert response.status_code == 404
        assert (await http.get("/health")).status_code == 200


async def test_a_database_outage_answers_503_and_leaves_the_webhook_alone(
    redis_prefix: str,
) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    settings = Settings.from_env(
        {
            "DATABASE_URL": down,
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": redis_prefix,
            "JWT_SECRET_KEY": KEY,
            "TELEGRAM_WEBHOOK_URL": "https://bot.example/webhook",
            "TELEGRAM_WEBHOOK_SECRET": "s",
        }
    )
    async with admin_client(settings) as http:  # the lifespan does not wait for PostgreSQL
        message = {"message_id": 1, "date": 0, "chat": {"id": 5, "type": "private"}, "text": "hi"}
        update = {"update_id": 7, "message": message}
        hook = await http.post(
            "/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s"}
        )
        assert hook.status_code == 200
        response = await http.get("/admin/stats", headers=bearer())
        assert response.status_code == 503 and response.json() == {"error": "database unavailable"}
        # Redis is up: the dead letters still answer.
        assert (await http.get("/admin/dlq", headers=bearer())).status_code == 200


# --- stats --------------------------------------------------------------------------------


async def test_stats_totals_and_days(db: str, redis_prefix: str, store: Store) -> None:
    await say(store, 101, 101, "one")
    await reply(store, 101, "r-one", prompt=10, completion=5)
    old = await say(store, 101, 101, "two")
    await reply(store, 101, "r-two", prompt=20, completion=7)
    await say(store, 102, 102, "three")
    await say(store, -500, 102, "group", chat_type="group")
    await AdminStore(store.pool).set_blocked(102, True)
    await store.mark_bot_blocked(101)  # 101 blocked the bot: not an admin block
    today = datetime.now(UTC).date()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE messages SET created_at = now() - interval '3 days' WHERE id = %s", (old,)
        )
        conn.execute(
            "INSERT INTO messages (chat_id, role, text, idempotency_key, created_at) "
            "VALUES (101, 'system', 'ancient', 'sys:1', now() - interval '400 days')"
        )

    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.get("/admin/stats", headers=bearer())
        assert response.status_code == 200
        body = response.json()
        assert body["totals"] == {
            "users": 2,
            "blocked_users": 1,
            "users_blocking_the_bot": 1,
            "chats": 3,
            "messages": {"user": 4, "assistant": 2, "system": 1, "total": 7},
            "tokens": {"prompt": 30, "completion": 12},
        }
        days = body["per_day"]
        assert body["days"] == 14 and len(days) == 14
        assert days[-1]["date"] == today.isoformat()
        assert days[0]["date"] == (today - timedelta(days=13)).isoformat()
        # created_at is now() for fresh rows: today, unless the test straddles midnight UTC
        by_date = {row["date"]: row for row in days}
        three_days_ago = by_date[(today - timedelta(days=3)).isoformat()]
        assert three_days_ago == {
            "date": (today - timedelta(days=3)).isoformat(),
            "messages": 1,
            "active_users": 1,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        assert sum(row["messages"] for row in days) == 6  # the 400-day-old one is outside
        assert by_date[today.isoformat()]["active_users"] == 2
        assert sum(row["prompt_tokens"] for row in days) == 30

        one = (await http.get("/admin/stats?days=1", headers=bearer())).json()
        assert [row["date"] for row in one["per_day"]] == [today.isoformat()]
        year = (await http.get("/admin/stats", params={"days": 365}, headers=bearer())).json()
        assert len(year["per_day"]) == 365 and sum(r["messages"] for r in year["per_day"]) == 6


@pytest.mark.parametrize(
    "days", ["0", "366", "-1", "1.5", "abc", "", "1e3", "٣", "99999999999999999999", " 3"]
)
async def test_stats_refuse_bad_days(db: str, redis_prefix: str, days: str) -> None:
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.get("/admin/stats", params={"days": days}, headers=bearer())
    assert response.status_code == 400 and "days" in response.json()["error"]


# --- dead letters -------------------------------------------------------------------------


async def dead(redis: Redis, keys: Keys, n: int, stream: str | None = None) -> str:
    """A dead job of shard 0's generate stream (its record may name another); returns its id."""
    record = {
        "stream": keys.generate(0) if stream is None else stream,
        "error": "ValueError: boom",
        "deliveries": 5,
        "failed_at": 1_700_000_000.5,
        "payload": {"key": f"gen:1:{n}", "chat_id": 1},
    }
    entry = str(await redis.xadd(keys.dlq(keys.generate(0)), {"job": json.dumps(record)}))
    return f"generate.0@{entry}"


async def test_dlq_list_replay_and_drop(db: str, redis: Redis, redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    first, second, third = [await dead(redis, keys, n) for n in (1, 2, 3)]
    async with admin_client(settings_for(db, redis_prefix)) as http:
        listed = (await http.get("/admin/dlq", headers=bearer())).json()
        assert listed["count"] == 3
        assert [job["id"] for job in listed["items"]] == [first, second, third]
        assert listed["items"][0] == {
            "id": first,
            "stream": keys.generate(0),
            "error": "ValueError: boom",
            "deliveries": 5,
            "failed_at": 1_700_000_000.5,
            "payload": {"key": "gen:1:1", "chat_id": 1},
        }
        limited = (await http.get("/admin/dlq?limit=1", headers=bearer())).json()
        assert limited["count"] == 3 and len(limited["items"]) == 1

        replayed = await http.post(f"/admin/dlq/{first}/replay", headers=bearer())
        assert replayed.status_code == 200
        body = replayed.json()
        assert body["id"] == first and body["stream"] == keys.generate(0)
        [(new_id, fields)] = await stream_entries(redis, keys.generate(0))
        assert body["replayed_as"] == new_id
        assert json.loads(fields["job"]) == {"key": "gen:1:1", "chat_id": 1}
        again = await http.post(f"/admin/dlq/{first}/replay", headers=bearer())
        assert again.status_code == 404

        dropped = await http.delete(f"/admin/dlq/{second}", headers=bearer())
        assert dropped.status_code == 200 and dropped.json() == {"id": second, "dropped": True}
        assert (await http.delete(f"/admin/dlq/{second}", headers=bearer())).status_code == 404
        left = (await http.get("/admin/dlq", headers=bearer())).json()["items"]
        assert [job["id"] for job in left] == [third]


async def test_sealed_dead_jobs_are_listed_in_clear_and_each_read_is_audited(
    db: str, redis: Redis, redis_prefix: str
) -> None:
    # Issue 13, item 4: dead letters held message text in the clear and were read unaudited.
    from aiconv.jobs.codec import JobCodec
    from aiconv.jobs.queue import Job, JobQueue
    from aiconv.store.crypto import TextCipher

    key = bytes(range(32)).hex()
    keys = Keys(redis_prefix)
    queue = JobQueue(redis, keys, JobCodec(TextCipher([key])))
    replies = keys.replies(0)
    record = {"stream": replies, "error": "E", "payload": {"key": "r", "text": "dear diary"}}
    await queue.hand_over(Job(replies, "0-1", {}), "g", keys.dlq(replies), record)
    [(entry, fields)] = await stream_entries(redis, keys.dlq(replies))
    assert "diary" not in fields["job"]
    settings = dataclasses.replace(settings_for(db, redis_prefix), encryption_key=key)
    with structlog.testing.capture_logs() as logs:
        async with admin_client(settings) as http:
            listed = (await http.get("/admin/dlq", headers=bearer())).json()
    assert listed["items"][0]["payload"] == {"key": "r", "text": "dear diary"}
    [read] = [entry for entry in logs if entry["event"] == "admin: dead jobs read"]
    assert read["sub"] == "tests" and read["ids"] == [f"replies.0@{entry}"] and read["count"] == 1
    assert "diary" not in repr(logs)


async def test_a_dead_job_naming_an_unknown_stream_is_not_replayed(
    db: str, redis: Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    entry = await dead(redis, keys, 1, stream=f"{redis_prefix}somewhere-else")
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.post(f"/admin/dlq/{entry}/replay", headers=bearer())
    assert response.status_code == 409
    assert await redis.xlen(keys.dlq(keys.generate(0))) == 1
    assert await redis.exists(f"{redis_prefix}somewhere-else") == 0


@pytest.mark.parametrize(
    ("entry_id", "status"),
    [
        ("abc", 400),
        ("1-0", 400),  # a bare entry id names no dead-letter stream
        ("updates@1-0", 400),
        ("updates.0@1", 400),
        ("updates.0@1-", 400),
        ("updates.0@-1-0", 400),
        ("updates.0@1-0-0", 400),
        ("updates.0@1-a", 400),
        ("updates.0@1-*", 400),
        ("updates.0@+", 400),
        ("updates.٠@1-0", 400),  # Arabic-Indic digits are not shards
        ("updates.0@١-٠", 400),  # nor stream ids
        ("updates.0@" + "1" * 21 + "-0", 400),
        ("elsewhere.0@1-0", 400),
        ("updates.0@99999999999999999999-0", 404),  # well formed, beyond Redis' 64-bit range
        ("replies.0@18446744073709551615-18446744073709551615", 404),
        ("updates.0@5-0", 404),
        ("generate.7@5-0", 404),  # a shard this install does not have
        ("generate:openai@5-0", 404),
    ],
)
async def test_dlq_ids_are_validated(
    db: str, redis_prefix: str, entry_id: str, status: int
) -> None:
    async with admin_client(settings_for(db, redis_prefix)) as http:
        replay = await http.post(f"/admin/dlq/{entry_id}/replay", headers=bearer())
        drop = await http.delete(f"/admin/dlq/{entry_id}", headers=bearer())
    assert (replay.status_code, drop.status_code) == (status, status)
    assert "error" in replay.json() and "error" in drop.json()


@pytest.mark.parametrize("limit", ["0", "1001", "x", "-5", "2.0"])
async def test_dlq_refuses_bad_limits(db: str, redis_prefix: str, limit: str) -> None:
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.get("/admin/dlq", params={"limit": limit}, headers=bearer())
    assert response.status_code == 400


# --- users --------------------------------------------------------------------------------


async def test_block_and_unblock(db: str, redis_prefix: str, store: Store) -> None:
    await say(store, 201, 201, "hello")
    await store.mark_bot_blocked(201)  # Telegram answered 403 once
    async with admin_client(settings_for(db, redis_prefix)) as http:
        blocked = await http.post("/admin/users/201/block", headers=bearer())
        assert blocked.status_code == 200 and blocked.json() == {"id": 201, "blocked": True}
        # the worker's own check: a blocked user's updates are ignored, even after they write
        assert await store.record_sender(incoming(201, 201)) is False
        assert await store.record_sender(incoming(201, 201)) is False
        exported = (await http.get("/admin/users/201/export", headers=bearer())).json()
        assert exported["user"]["blocked"] is True
        assert exported["user"]["blocked_bot_at"] is None  # writing cleared the user's own mark
        await store.mark_bot_blocked(201)
        unblocked = await http.post("/admin/users/201/unblock", headers=bearer())
        assert unblocked.json() == {"id": 201, "blocked": False}
        exported = (await http.get("/admin/users/201/export", headers=bearer())).json()
        assert exported["user"]["blocked"] is False
        datetime.fromisoformat(exported["user"]["blocked_bot_at"])  # unblock left it alone
        assert await store.record_sender(incoming(201, 201)) is True
        missing = await http.post("/admin/users/999/block", headers=bearer())
        assert missing.status_code == 404 and missing.json() == {"error": "no user 999"}


@pytest.mark.parametrize(
    ("user_id", "status"),
    [
        ("abc", 400),
        ("1.0", 400),
        ("1e3", 400),
        ("0x10", 400),
        ("٣", 400),
        (str(2**63), 400),
        (str(-(2**63) - 1), 400),
        ("9" * 40, 400),
        (str(2**63 - 1), 404),
        (str(-(2**63)), 404),
        ("-5", 404),
        ("0", 404),
    ],
)
async def test_user_ids_are_validated(
    db: str, redis_prefix: str, user_id: str, status: int
) -> None:
    async with admin_client(settings_for(db, redis_prefix)) as http:
        for method, suffix in [
            ("POST", "/block"),
            ("POST", "/unblock"),
            ("GET", "/export"),
            ("DELETE", ""),
        ]:
            response = await http.request(
                method, f"/admin/users/{user_id}{suffix}", headers=bearer()
            )
            assert response.status_code == status, (method, suffix, response.text)
            assert "error" in response.json()


async def seed_two_users(store: Store) -> None:
    # Ann (301) talks to the bot privately and in a group; Bob (302) in the same group.
    await say(store, 301, 301, "ann private 1")
    await reply(store, 301, "bot to ann 1", prompt=3, completion=4)
    await say(store, 301, 301, "ann private 2")
    await reply(store, 301, "bot to ann 2")
    await say(store, -900, 301, "ann in group", chat_type="group")
    await say(store, -900, 302, "bob in group", chat_type="group")
    await reply(store, -900, "bot in group")
    await say(store, 302, 302, "bob private")


async def test_export_holds_the_users_data_and_nobody_elses(
    db: str, redis_prefix: str, store: Store
) -> None:
    await seed_two_users(store)
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.get("/admin/users/301/export", headers=bearer())
        assert response.status_code == 200
        data = response.json()
        assert (await http.get("/admin/users/303/export", headers=bearer())).status_code == 404
    assert data["user"]["id"] == 301 and data["user"]["username"] == "u301"
    assert data["user"]["blocked"] is False
    datetime.fromisoformat(data["user"]["created_at"])
    assert [(c["id"], c["type"]) for c in data["chats"]] == [(-900, "group"), (301, "private")]
    assert [(m["chat_id"], m["role"], m["text"]) for m in data["messages"]] == [
        (-900, "user", "ann in group"),
        (301, "user", "ann private 1"),
        (301, "assistant", "bot to ann 1"),
        (301, "user", "ann private 2"),
        (301, "assistant", "bot to ann 2"),
    ]
    assert data["messages"][2]["completion_tokens"] == 4


async def test_delete_removes_the_user_their_private_chat_and_their_messages(
    db: str, redis_prefix: str, store: Store
) -> None:
    await seed_two_users(store)
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.delete("/admin/users/301", headers=bearer())
        assert response.status_code == 200
        assert response.json() == {
            "id": 301,
            "deleted": {"users": 1, "chats": 1, "messages": 5},
        }
        assert (await http.get("/admin/users/301/export", headers=bearer())).status_code == 404
        assert (await http.delete("/admin/users/301", headers=bearer())).status_code == 404
        bob = (await http.get("/admin/users/302/export", headers=bearer())).json()
    assert [m["text"] for m in bob["messages"]] == ["bob in group", "bob private"]
    with psycopg.connect(db) as conn:
        chats = conn.execute("SELECT id FROM chats ORDER BY id").fetchall()
        texts = conn.execute("SELECT text FROM messages ORDER BY id").fetchall()
    assert chats == [(-900,), (302,)]
    assert [t for (t,) in texts] == ["bob in group", "bot in group", "bob private"]


async def test_the_openapi_document_lists_exactly_the_endpoints(db: str, redis_prefix: str) -> None:
    async with admin_client(settings_for(db, redis_prefix)) as http:
        response = await http.get("/admin/openapi.json", headers=bearer())
    assert response.status_code == 200 and response.json() == json.loads(json.dumps(OPENAPI))
    documented = {
        (method.upper(), path)
        for path, operations in OPENAPI["paths"].items()
        for method in operations
    }
    templates = {
        ("GET", "/admin/stats"),
        ("GET", "/admin/dlq"),
        ("POST", "/admin/dlq/{entry_id}/replay"),
        ("DELETE", "/admin/dlq/{entry_id}"),
        ("POST", "/admin/users/{user_id}/block"),
        ("POST", "/admin/users/{user_id}/unblock"),
        ("GET", "/admin/users/{user_id}/export"),
        ("DELETE", "/admin/users/{user_id}"),
        ("GET", "/admin/access"),
        ("POST", "/admin/access/{kind}/{entity_id}"),
        ("DELETE", "/admin/access/{kind}/{entity_id}"),
        ("GET", "/admin/openapi.json"),
    }
    assert documented == templates
    for operations in OPENAPI["paths"].values():
        for operation in operations.values():
            assert "401" in operation["responses"]


async def test_unknown_admin_paths_and_methods_answer_json(db: str, redis_prefix: str) -> None:
    async with admin_client(settings_for(db, redis_prefix)) as http:
        unknown = await http.get("/admin/nothing", headers=bearer())
        assert unknown.status_code == 404 and "error" in unknown.json()
        wrong = await http.put("/admin/stats", headers=bearer())
        assert wrong.status_code == 405 and "GET" in wrong.headers["allow"]


# --- aiconv admin token -------------------------------------------------------------------


def aiconv(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if key is not None:
        env["JWT_SECRET_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "aiconv.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_cli_mints_a_token_the_api_accepts(db: str, redis_prefix: str) -> None:
    result = aiconv("admin", "token", "--sub", "alice", "--ttl", "2h")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert "\n" not in token
    claims = auth.decode(token, KEY)
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 7200
    async with admin_client(settings_for(db, redis_prefix)) as http:
        assert (await http.get("/admin/stats", headers=bearer(token))).status_code == 200

    default = aiconv("admin", "token", "--sub", "bob")
    claims = auth.decode(default.stdout.strip(), KEY)
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["scope"] == "read"
    async with admin_client(settings_for(db, redis_prefix)) as http:
        block = "/admin/users/1/block"
        assert (await http.post(block, headers=bearer(default.stdout.strip()))).status_code == 403
        writer = aiconv("admin", "token", "--sub", "carol", "--scope", "write").stdout.strip()
        assert auth.scopes_of(auth.decode(writer, KEY)) == {"read", "write"}
        assert (await http.post(block, headers=bearer(writer))).status_code in (200, 404)


def test_the_cli_refuses_a_token_longer_than_a_day() -> None:
    result = aiconv("admin", "token", "--sub", "alice", "--ttl", "2d")
    assert result.returncode == 2 and result.stdout == ""
    assert "24 hours" in result.stderr


def test_the_cli_refuses_without_jwt_secret_key() -> None:
    result = aiconv("admin", "token", "--sub", "alice", "--ttl", "1h", key=None)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "JWT_SECRET_KEY" in lines[0]


@pytest.mark.parametrize(
    "args", [["--sub", "a", "--ttl", "1w"], ["--sub", "a", "--ttl", "0h"], ["--sub", " "], []]
)
def test_the_cli_refuses_bad_arguments(args: list[str]) -> None:
    result = aiconv("admin", "token", *args)
    assert result.returncode == 2 and result.stdout == ""


# --- schemathesis -------------------------------------------------------------------------
#
# The served document, loaded through the app itself, drives a bounded run per operation:
# schema-valid and schema-invalid inputs, with the bearer token attached, and every response
# checked by schemathesis (no 5xx; status, content type, headers and body as documented; invalid
# input rejected; auth enforced). Fixed ids of a seeded user and dead job reach the 200 paths.
# (schemathesis.pytest.from_fixture would be the natural loader, but it fails on pytest 9.2: it
# sets Function._nodeid, which pytest no longer has; hence strategies under @given.)

FUZZ_USER = 401
FUZZ_DEAD_ID = "replies.0@1700000000000-0"
MAX_EXAMPLES = 25


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fuzz_prefix(admin_database_url: str) -> AsyncIterator[str]:
    """A user and dead jobs for the whole run (the fuzzing may block, delete or replay them)."""
    prefix = new_redis_prefix("fuzz")

    async def seed() -> None:
        with psycopg.connect(admin_database_url, autocommit=True) as conn:
            conn.execute("TRUNCATE users, chats, messages")
        async with open_pool(admin_database_url) as pool:
            store = Store(pool)
            for user in (FUZZ_USER, FUZZ_USER + 1):
                await say(store, user, user, f"fuzz {user}")
                await reply(store, user, f"fuzz reply {user}", prompt=1, completion=1)
        redis = Redis.from_url(REDIS_URL, decode_responses=True)
        keys = Keys(prefix)
        for n in range(3):
            record = {
                "stream": keys.replies(0),
                "error": "E",
                "deliveries": 5,
                "failed_at": 1.0,
                "payload": {"n": n},
            }
            dlq = keys.dlq(keys.replies(0))
            await redis.xadd(dlq, {"job": json.dumps(record)}, id=f"1700000000000-{n}")
        await redis.aclose()

    await seed()
    yield prefix
    await delete_prefixed(prefix)


@pytest.fixture
def served_schema(admin_database_url: str, fuzz_prefix: str) -> Iterator[Any]:
    app = create_standalone_app(settings_for(admin_database_url, fuzz_prefix))
    try:
        yield schemathesis.openapi.from_asgi("/admin/openapi.json", app, headers=bearer())
    finally:
        # schemathesis runs the app, and its lifespan (the pool), on an event loop of its own.
        # Its pytest plugin ends that lifespan after each test too; this makes it explicit.
        from schemathesis.python import asgi

        asgi.shutdown_lifespans()


OPERATIONS = [
    (method.upper(), path) for path, operations in OPENAPI["paths"].items() for method in operations
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    served_schema: Any, method: str, path: str
) -> None:
    from schemathesis import GenerationMode

    operation = served_schema[path][method]
    fixed: dict[str, int | str] = {}
    if "{user_id}" in path:
        fixed = {"user_id": FUZZ_USER}
    elif "{entry_id}" in path:
        fixed = {"entry_id": FUZZ_DEAD_ID}
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if fixed:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed))
    for strategy in strategies:

        @fuzz_settings(MAX_EXAMPLES)
        @hypothesis.given(case=strategy)
        def run(case: Any) -> None:
            case.call_and_validate(headers=bearer())

        run()
