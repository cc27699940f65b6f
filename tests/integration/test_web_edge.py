"""The web app's edge, in-process against real Redis: hostile JSON on /v1 (item 6 and 7 of the
security findings; /webhook's are in test_webhook.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from aiconv.config import Settings
from aiconv.jobs.codec import JobCodec
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import JobQueue
from aiconv.observability.ops import ops_app
from aiconv.web.app import create_standalone_app
from aiconv.web.openai import OpenAiApi
from tests.support.services import REDIS_URL
from tests.support.streams import stream_entries
from tests.support.waiting import eventually

API_KEY = "sk-edge-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def api_client(prefix: str, **env: str) -> httpx.AsyncClient:
    settings = Settings.from_env(
        {"REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix, "OPENAI_API_KEYS": API_KEY, **env}
    )
    transport = httpx.ASGITransport(app=create_standalone_app(settings))
    return httpx.AsyncClient(transport=transport, base_url="http://aiconv")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"messages": [{"role": "user", "content": ' + b"[" * 10_000 + b"]" * 10_000 + b"}]}",
        b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 900 + b"]" * 900 + b"}",
    ],
    ids=["array-10000", "content-10000", "extra-900"],
)
async def test_deeply_nested_json_on_v1_is_a_bad_request_not_a_crash(
    redis: Redis, redis_prefix: str, body: bytes
) -> None:
    async with api_client(redis_prefix) as http:
        response = await http.post("/v1/chat/completions", content=body, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("invalid_json", "invalid_request_error")
    assert "nested deeper" in error["message"]
    assert await redis.xlen(Keys(redis_prefix).openai_generate) == 0


async def queued_job(redis: Redis, redis_prefix: str, request: asyncio.Task[Any]) -> Any:
    """The fields of the first /v1 job queued (waiting up to 30 s, unless the request ends)."""
    generate = Keys(redis_prefix).openai_generate
    entries: list[Any] = []
    for _ in range(6):
        reply: Any = await redis.xread({generate: "0-0"}, count=1, block=5000)
        entries = reply[0][1] if reply else []
        if entries or request.done():
            break
    assert entries, "no job was queued"
    return entries[0][1]


async def test_v1_text_is_cleaned_of_nul_and_lone_surrogates(
    redis: Redis, redis_prefix: str
) -> None:
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "a\u0000b\ud800c"}],
            "stop": ["x\udc00"],
            "max_tokens": 4,
        }
    )
    async with api_client(redis_prefix) as http:
        request = asyncio.create_task(http.post("/v1/chat/completions", content=body, headers=AUTH))
        try:
            # Play ml: take the job, check it, answer it.
            fields = await queued_job(redis, redis_prefix, request)
            job = json.loads(fields["job"])
            assert job["messages"] == [{"role": "user", "content": "ab\ufffdc"}]
            assert job["stop"] == ["x\ufffd"]
            # ml answers in the hash slot of the web process's reader, which the job names.
            stream = Keys(redis_prefix).api_response(job["reader"], job["id"])
            for event in ({"type": "delta", "text": "ok"}, {"type": "done"}):
                await redis.xadd(stream, {"event": json.dumps(event)})
            response = await asyncio.wait_for(request, 30)
        finally:
            request.cancel()  # a failed check must not leave the request waiting for ml
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "ok"


async def test_with_a_key_v1_requests_and_answers_are_sealed_in_redis(
    redis: Redis, redis_prefix: str
) -> None:
    # Issue 13, item 4: the job (the whole conversation) and the answer were plain in Redis.
    key = bytes(range(32)).hex()
    codec = JobCodec.from_setting(key)
    body = json.dumps({"messages": [{"role": "user", "content": "my secret question"}]})
    async with api_client(redis_prefix, ENCRYPTION_KEY=key) as http:
        request = asyncio.create_task(http.post("/v1/chat/completions", content=body, headers=AUTH))
        try:
            fields = await queued_job(redis, redis_prefix, request)
            assert "secret" not in fields["job"]
            job = codec.decode(Keys(redis_prefix).openai_generate, fields["job"])
            assert job is not None
            assert job["messages"] == [{"role": "user", "content": "my secret question"}]
            stream = Keys(redis_prefix).api_response(job["reader"], job["id"])
            for event in ({"type": "delta", "text": "sealed answer"}, {"type": "done"}):
                await redis.xadd(stream, {"event": codec.encode(stream, event)})
            response = await asyncio.wait_for(request, 30)
        finally:
            request.cancel()
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "sealed answer"


# --- no redirect is ever built from the Host header (item 9) ------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/stats/"),
        ("GET", "/admin"),
        ("GET", "/health/"),
        ("GET", "/ready/"),
        ("POST", "/webhook/"),
        ("GET", "/v1/models/"),
        ("POST", "/v1/chat/completions/"),
    ],
)
async def test_a_trailing_slash_is_not_redirected_to_the_host_header(
    redis_prefix: str, database_url: str, method: str, path: str
) -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": redis_prefix,
            "DATABASE_URL": database_url,
            "JWT_SECRET_KEY": "Rq3vX9tLw2Kp8ZmB5nYc7HdF4jGs6QaE",
            "OPENAI_API_KEYS": API_KEY,
            "TELEGRAM_WEBHOOK_URL": "https://bot.example.org/webhook",
            "TELEGRAM_WEBHOOK_SECRET": "edge-secret",
        }
    )
    transport = httpx.ASGITransport(app=create_standalone_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://aiconv") as http:
        response = await http.request(
            method, path, headers={"Host": "evil.example", **AUTH}, follow_redirects=False
        )
    assert response.status_code == 404
    assert "location" not in response.headers


@pytest.mark.parametrize("path", ["/metrics/", "/health/", "/ready/"])
async def test_the_ops_port_does_not_redirect_either(path: str) -> None:
    transport = httpx.ASGITransport(app=ops_app({}))
    async with httpx.AsyncClient(transport=transport, base_url="http://aiconv") as http:
        response = await http.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers


# --- the OpenAI API's keys go through aiconv.web.auth -----------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer sk-edge-test-ke", "Bearer sk-edge-test-keyx", f"Basic {API_KEY}"],
)
async def test_v1_refuses_anything_but_a_configured_key(
    redis_prefix: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with api_client(redis_prefix) as http:
        refused = await http.get("/v1/models", headers=headers)
        accepted = await http.get("/v1/models", headers=AUTH)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert accepted.status_code == 200


# --- abandoned /v1 requests hold nothing for long (issue 13, item 1) ----------------------------


def completion_body(**extra: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **extra}).encode()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (json.dumps({"messages": [{"role": "user", "content": "x"}] * 257}), "too_many_messages"),
        (
            json.dumps({"messages": [{"role": "user", "content": "x" * 100_001}] * 2}),
            "context_length_exceeded",
        ),
        (completion_body(max_tokens=10**9).decode(), "invalid_value"),
    ],
    ids=["messages", "characters", "max_tokens"],
)
async def test_v1_caps_messages_characters_and_max_tokens(
    redis: Redis, redis_prefix: str, body: str, code: str
) -> None:
    async with api_client(redis_prefix) as http:
        post = http.post("/v1/chat/completions", content=body, headers=AUTH)
        response = await asyncio.wait_for(post, 15)  # accepted, it would wait for ml
    assert response.status_code == 400 and response.json()["error"]["code"] == code
    assert await redis.xlen(Keys(redis_prefix).openai_generate) == 0


async def call_and_leave(app: object, leave: asyncio.Event) -> list[dict[str, object]]:
    """A raw ASGI request whose client disconnects once `leave` is set; what the app sent."""
    sent: list[dict[str, object]] = []
    body = completion_body()
    delivered = False

    async def receive() -> dict[str, object]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", AUTH["Authorization"].encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("aiconv", 80),
    }
    await app(scope, receive, send)  # type: ignore[operator]
    return sent


async def test_a_client_that_leaves_cancels_its_request_at_once(
    redis: Redis, redis_prefix: str
) -> None:
    # No ml runs: before, the request kept a blocking XREAD (a Redis connection), its queued job
    # and its place for up to 600 s after the client had gone.
    settings = Settings.from_env(
        {"REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": redis_prefix, "OPENAI_API_KEYS": API_KEY}
    )
    app = create_standalone_app(settings)
    leave = asyncio.Event()
    request = asyncio.create_task(call_and_leave(app, leave))
    try:
        await eventually(lambda: redis.xlen(Keys(redis_prefix).openai_generate), timeout=15)
        leave.set()
        sent = await asyncio.wait_for(request, 15)
    finally:
        request.cancel()
    assert sent[0]["status"] == 499
    [(_, fields)] = await stream_entries(redis, Keys(redis_prefix).openai_generate)
    job = json.loads(fields["job"])
    assert await redis.exists(Keys(redis_prefix).api_cancel(job["id"])) == 1  # ml skips it
    assert job["deadline"] <= time.time() + 300  # and would drop it after the proxies gave up
    slots = [key async for key in redis.scan_iter(f"{redis_prefix}oai-in-flight:*")]
    assert slots == []  # its place is given back (the last member gone, the set is too)


async def test_each_key_has_a_bounded_number_of_requests_open(
    redis: Redis, redis_prefix: str
) -> None:
    from aiconv.web.openai import MAX_CONCURRENT_PER_KEY

    async with api_client(redis_prefix) as http:
        body = completion_body()
        waiting = [
            asyncio.create_task(http.post("/v1/chat/completions", content=body, headers=AUTH))
            for _ in range(MAX_CONCURRENT_PER_KEY)
        ]
        try:
            generate = Keys(redis_prefix).openai_generate
            await eventually(
                lambda: _equals(redis.xlen(generate), MAX_CONCURRENT_PER_KEY), timeout=15
            )
            refused = await asyncio.wait_for(
                http.post("/v1/chat/completions", content=body, headers=AUTH), 15
            )
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert await redis.xlen(generate) == MAX_CONCURRENT_PER_KEY  # nothing queued
            waiting[0].cancel()  # one client leaves: its place is free again
            with contextlib.suppress(asyncio.CancelledError):
                await waiting[0]
            waiting.append(
                asyncio.create_task(http.post("/v1/chat/completions", content=body, headers=AUTH))
            )
            await eventually(
                lambda: _equals(redis.xlen(generate), MAX_CONCURRENT_PER_KEY + 1), timeout=15
            )
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_ml_drops_an_api_job_past_its_deadline(redis: Redis, redis_prefix: str) -> None:
    from aiconv.jobs.queue import Job, JobQueue
    from aiconv.ml.cancel import CancelWatcher
    from aiconv.ml.openai_jobs import OpenAiJobHandler

    keys = Keys(redis_prefix)
    handler = OpenAiJobHandler(
        None,  # type: ignore[arg-type]  # never reached: the job is dropped first
        JobQueue(redis, keys),
        keys,
        CancelWatcher(redis),
        "model",
    )
    payload = {
        "kind": "openai",
        "key": "oai:late",
        "id": "late",
        "reader": "r1",
        "messages": [{"role": "user", "content": "hi"}],
        "deadline": time.time() - 1,
    }
    await handler(Job(keys.openai_generate, "1-0", payload))
    assert await redis.exists(keys.api_response("r1", "late")) == 0  # not even started
    # A job of a web that named no reader: nobody could read an answer, none is written.
    unread = {**payload, "deadline": time.time() + 60, "reader": None}
    await handler(Job(keys.openai_generate, "2-0", unread))
    assert [key async for key in redis.scan_iter(f"{redis_prefix}*late*")] == []


# --- one shared reader of /v1 results per process (issue 13, item 1) ----------------------------


async def _blocked_xreads(redis: Redis, client_name: str, expected: int) -> bool:
    """Whether exactly `expected` connections named `client_name` are in a (blocking) XREAD."""
    clients = await redis.client_list()
    reading = [c for c in clients if c.get("name") == client_name and c.get("cmd") == "xread"]
    return len(reading) == expected


@contextlib.asynccontextmanager
async def own_api(redis_prefix: str, client_name: str, api_keys: str) -> AsyncIterator[OpenAiApi]:
    """The /v1 API on a Redis client of its own, named so that CLIENT LIST finds its connections."""
    settings = Settings.from_env(
        {"REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": redis_prefix, "OPENAI_API_KEYS": api_keys}
    )
    web_redis = Redis.from_url(REDIS_URL, decode_responses=True, client_name=client_name)
    api = OpenAiApi(settings, JobQueue(web_redis, Keys(redis_prefix), JobCodec()))
    try:
        yield api
    finally:
        await api.results.aclose()
        await web_redis.aclose()


async def test_waiting_v1_requests_share_one_redis_connection(
    redis: Redis, redis_prefix: str
) -> None:
    # No ml runs: every request waits. Before, each held its own blocking XREAD: N connections.
    client_name = f"v1-share-{redis_prefix.strip(':')}"
    requests = 12  # 4 per key, the most each key may have open
    waiting: list[asyncio.Task[httpx.Response]] = []
    async with own_api(redis_prefix, client_name, "k1,k2,k3") as api:
        transport = httpx.ASGITransport(app=Starlette(routes=api.routes()))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://aiconv") as http:
                for n in range(requests):
                    headers = {"Authorization": f"Bearer k{n % 3 + 1}"}
                    post = http.post(
                        "/v1/chat/completions", content=completion_body(), headers=headers
                    )
                    waiting.append(asyncio.create_task(post))
                stream = Keys(redis_prefix).openai_generate
                await eventually(lambda: _equals(redis.xlen(stream), requests), timeout=15)
                await eventually(lambda: _blocked_xreads(redis, client_name, 1), timeout=15)
                assert api.results.waiting == requests
                pool: Any = cast(Redis, api.redis).connection_pool  # own_api's: one Redis
                assert len(pool._in_use_connections) <= 1  # the reader's
                assert not any(task.done() for task in waiting)
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_client_that_leaves_frees_its_waiter_and_the_reader_stops(
    redis: Redis, redis_prefix: str
) -> None:
    client_name = f"v1-leave-{redis_prefix.strip(':')}"
    async with own_api(redis_prefix, client_name, API_KEY) as api:
        app = Starlette(routes=api.routes())
        leaves = [asyncio.Event(), asyncio.Event()]
        requests = [asyncio.create_task(call_and_leave(app, leave)) for leave in leaves]
        try:
            stream = Keys(redis_prefix).openai_generate
            await eventually(lambda: _equals(redis.xlen(stream), 2), timeout=15)
            assert api.results.waiting == 2
            leaves[0].set()
            sent = await asyncio.wait_for(requests[0], 15)
            assert sent[0]["status"] == 499
            assert api.results.waiting == 1  # the other one still waits, on the same reader
            leaves[1].set()
            await asyncio.wait_for(requests[1], 15)
            assert api.results.waiting == 0
            # Nobody waits: the reader ends at its next read and gives its connection back.
            await eventually(lambda: _blocked_xreads(redis, client_name, 0), timeout=15)
        finally:
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)


# --- one error mechanism, one shape per surface (web/errors.py) ----------------------------------


async def test_errors_have_one_shape_per_surface(redis: Redis, redis_prefix: str) -> None:
    async with api_client(redis_prefix) as http:
        unknown_v1 = await http.get("/v1/nothing-here", headers=AUTH)
        wrong_method = await http.get("/v1/chat/completions", headers=AUTH)
        unknown = await http.get("/nothing-here")
        too_large = await http.post(
            "/v1/chat/completions", content=b" " * (4 * 1024 * 1024 + 1), headers=AUTH
        )
        webhook = await http.post("/webhook", content=b"{}")
    for response, status in ((unknown_v1, 404), (wrong_method, 405), (too_large, 413)):
        assert response.status_code == status
        error = response.json()["error"]  # OpenAI's body: its clients parse it
        assert set(error) == {"message", "type", "param", "code"}
    assert too_large.json()["error"]["code"] == "request_too_large"
    assert too_large.headers["connection"] == "close"  # the same body reader as the webhook's
    for response in (unknown, webhook):
        assert response.status_code == 404
        assert isinstance(response.json()["error"], str)


async def test_ml_takes_api_jobs_off_their_own_stream_and_a_dead_one_answers_its_client(
    redis: Redis, redis_prefix: str
) -> None:
    from aiconv.jobs.consumer import ConsumerOptions
    from aiconv.jobs.queue import JobQueue
    from aiconv.ml.cancel import CancelWatcher
    from aiconv.ml.openai_jobs import OpenAiJobHandler, openai_consumer

    keys = Keys(redis_prefix)
    queue = JobQueue(redis, keys)
    handler = OpenAiJobHandler(
        None,  # type: ignore[arg-type]  # no model: every generation fails (AttributeError)
        queue,
        keys,
        CancelWatcher(redis),
        "model",
    )
    options = ConsumerOptions(max_deliveries=1, block_ms=100, retry_base_seconds=0.01)
    consumer = openai_consumer(queue, handler, options)
    payload = {
        "kind": "openai",
        "key": "oai:doomed",
        "id": "doomed",
        "reader": "r1",
        "messages": [{"role": "user", "content": "hi"}],
        "deadline": time.time() + 60,
    }
    await queue.enqueue(keys.openai_generate, payload, "oai:doomed")
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: redis.xlen(keys.dlq(keys.openai_generate)), timeout=15)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    dead: Any = await redis.xrange(keys.dlq(keys.openai_generate))
    [(_, fields)] = dead
    assert json.loads(fields["job"])["stream"] == keys.openai_generate
    answer: Any = await redis.xrange(keys.api_response("r1", "doomed"))
    events = [json.loads(f["event"]) for _, f in answer]
    assert events[-1]["type"] == "error" and events[-1]["code"] == "generation_failed"
    assert keys.openai_generate in keys.job_streams  # trimmed, measured, replayable
