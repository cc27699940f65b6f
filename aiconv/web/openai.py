"""An OpenAI-compatible API on `aiconv web`: /v1/chat/completions and /v1/models.

Guarded by bearer keys from OPENAI_API_KEYS (no keys: the endpoints answer 404). A request
becomes a generation job on a stream of its own (`Keys.openai_generate`), which the same ml pool
consumes next to chat turns (`aiconv.ml.openai_jobs`); ml streams the tokens back on a
per-request Redis stream, which this process reads for all its waiting requests at once through
one `ResultReader` (`aiconv.web.api_results`): one connection, not one per request. A client that
goes away cancels its generation.

Bounds (issue 13, item 1): a request is answered within REQUEST_TIMEOUT_SECONDS, below the
proxies' 300 s, and its job carries that deadline, so ml drops it if it is still queued then. A
client that disconnects, streaming or not, cancels at once: its job, its Redis read and its slot.
Each key has at most MAX_CONCURRENT_PER_KEY requests open (across web processes: a Redis sorted
set of request ids, each expiring at its deadline, so a crashed process leaks nothing for long);
messages, characters and max_tokens are capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aiconv.config import Settings
from aiconv.jobs.client import RedisClient
from aiconv.jobs.queue import JobQueue
from aiconv.ml.protocol import (
    API_KIND,
    RESPONSE_TTL_SECONDS,
    InvalidMessages,
    served_model_id,
    validate_messages,
)
from aiconv.telegram.models import clean_text
from aiconv.web import auth, jsonbody
from aiconv.web.api_results import REDIS_FAILURES, ResultReader, ResultWaiter
from aiconv.web.errors import OpenAiError

MAX_BODY_BYTES = 4 * 1024 * 1024
# A request waiting longer for ml (queue + generation) is answered 504 and its job dropped: below
# the 300 s nginx and the Ingress wait for /v1, so the answer reaches the client.
REQUEST_TIMEOUT_SECONDS = 290.0
MAX_CONCURRENT_PER_KEY = 4

T = TypeVar("T")

# KEYS: the key's in-flight set; ARGV: limit, seconds a request may live, request id.
# Expired entries (a process that died mid-request) are dropped first; Redis time throughout.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""

log = structlog.get_logger(__name__)


def _unavailable() -> OpenAiError:
    return OpenAiError(503, "temporarily unavailable", "unavailable", "server_error")


def _busy() -> OpenAiError:
    return OpenAiError(
        429,
        f"this key has {MAX_CONCURRENT_PER_KEY} requests open; wait for one to finish",
        "concurrency_limit_exceeded",
        "rate_limit_error",
    )


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def openai_routes(settings: Settings, queue: JobQueue) -> list[Route]:
    return OpenAiApi(settings, queue).routes()


class OpenAiApi:
    def __init__(self, settings: Settings, queue: JobQueue) -> None:
        self.api_keys = auth.ApiKeys(settings.openai_api_keys)
        self.queue = queue
        self.redis: RedisClient = queue.redis
        self.keys = queue.keys
        self.model_id = served_model_id(settings.resolved_model_path())
        self.created = int(time.time())
        self.max_tokens = settings.n_ctx
        self._admit = self.redis.register_script(_ADMIT)
        self.results = ResultReader(self.redis, self.keys, self.queue.codec.decode)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
        ]

    def _check(self, request: Request) -> str:
        """The caller's API key, once accepted."""
        if not self.api_keys:
            raise OpenAiError(404, "the API is not enabled (set OPENAI_API_KEYS)", "not_found")
        key = auth.bearer(request.headers.get("authorization"))
        if not self.api_keys.accepts(key):
            raise OpenAiError(401, "invalid or missing API key", "invalid_api_key")
        return key or ""

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created,
                "owned_by": "aiconv"}  # fmt: skip

    async def models(self, request: Request) -> Response:
        self._check(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._check(request)
        if request.path_params["model_id"] != self.model_id:
            raise OpenAiError(404, "no such model", "model_not_found")
        return JSONResponse(self._model_card())

    async def chat_completions(self, request: Request) -> Response:
        key = self._check(request)
        body = await jsonbody.read_json(request, MAX_BODY_BYTES)
        job, stream, include_usage = self._job(body)
        # ml writes the answer in this process's reader's hash slot (web/api_results.py).
        job["reader"] = self.results.reader_id
        request_id = job["id"]
        slot = self.keys.api_in_flight(key)
        try:
            admitted = await self._admit(
                keys=[slot], args=[MAX_CONCURRENT_PER_KEY, REQUEST_TIMEOUT_SECONDS, request_id]
            )
        except REDIS_FAILURES as error:
            log.warning("api cannot reach redis", error=type(error).__name__)
            raise _unavailable() from None
        if not admitted:
            raise _busy()
        handed_to_stream = False
        waiter: ResultWaiter | None = None
        try:
            try:
                # Registered before the job is queued, so no event can come unseen.
                waiter = await self.results.open(request_id, REQUEST_TIMEOUT_SECONDS + 10)
                await self.queue.enqueue(self.keys.openai_generate, job, job["key"])
                events = self._events(waiter)
                events = _chain(await _unless_gone(request, _until_content(events)), events)
                head = {"id": f"chatcmpl-{request_id}", "created": job["created"],
                        "model": self.model_id}  # fmt: skip
                if stream:
                    handed_to_stream = True  # the stream's end releases the slot
                    return StreamingResponse(
                        self._sse(head, events, include_usage, request_id, slot, waiter),
                        media_type="text/event-stream",
                        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
                    )
                return await _unless_gone(request, self._whole(head, events))
            except REDIS_FAILURES as error:
                log.warning("api cannot reach redis", error=type(error).__name__)
                await self._cancel(request_id)
                raise _unavailable() from None
            except OpenAiError:
                await self._cancel(request_id)  # ml need not go on (a timeout, a bad answer)
                raise
            except ClientGone:
                log.info("api client went away; request cancelled", request_id=request_id)
                await self._cancel(request_id)
                return Response(status_code=499)  # nobody reads it
        finally:
            if not handed_to_stream:
                with anyio.CancelScope(shield=True):
                    await self._cleanup(request_id, waiter)
                    await self._release(slot, request_id)

    async def _release(self, slot: str, request_id: str) -> None:
        with contextlib.suppress(*REDIS_FAILURES):
            await self.redis.zrem(slot, request_id)

    def _job(self, body: Any) -> tuple[dict[str, Any], bool, bool]:
        if not isinstance(body, dict):
            raise OpenAiError(400, "the body must be a JSON object", "invalid_request")
        try:
            messages = validate_messages(body.get("messages"))
        except InvalidMessages as error:
            raise OpenAiError(400, str(error), error.code) from None
        n = body.get("n", 1)
        if n not in (1, None):
            raise OpenAiError(400, "only n=1 is supported", "unsupported_parameter")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (
            not _is_int(max_tokens) or not 1 <= max_tokens <= self.max_tokens
        ):
            raise OpenAiError(
                400, f"max_tokens must be an integer from 1 to {self.max_tokens}", "invalid_value"
            )
        temperature = _number(body, "temperature", 0.0, 2.0)
        top_p = _number(body, "top_p", 0.0, 1.0)
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise OpenAiError(400, "seed must be an integer", "invalid_value")
        stop = body.get("stop")
        stops: Any = [stop] if isinstance(stop, str) else [] if stop is None else stop
        if (
            not isinstance(stops, list)
            or len(stops) > 4
            or not all(isinstance(s, str) for s in stops)
        ):
            raise OpenAiError(400, "stop: a string or a list of up to 4 strings", "invalid_value")
        stops = [clean_text(s) for s in stops]
        options: Any = body.get("stream_options") or {}
        request_id = uuid.uuid4().hex
        job = {
            "kind": API_KIND,
            "key": f"oai:{request_id}",
            "id": request_id,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stop": stops,
            "created": int(time.time()),
            "deadline": time.time() + REQUEST_TIMEOUT_SECONDS,  # ml drops it after that
        }
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return job, bool(body.get("stream")), include_usage

    async def _events(self, waiter: ResultWaiter) -> AsyncIterator[dict[str, Any]]:
        """The request's events from ml, in order, until done or error (RedisError, 504)."""
        deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT_SECONDS
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    event = await waiter.next()
            except TimeoutError:
                raise OpenAiError(
                    504, "no answer from the model in time", "timeout", "server_error"
                ) from None
            yield event
            if event.get("type") in ("done", "error"):
                return

    async def _whole(self, head: dict[str, Any], events: AsyncIterator[dict[str, Any]]) -> Response:
        text: list[str] = []
        attempt = None
        async for event in events:
            kind = event.get("type")
            if kind == "start":
                if attempt is not None and attempt != event.get("attempt"):
                    text.clear()  # a rerun starts over
                attempt = event.get("attempt")
            elif kind == "delta":
                text.append(str(event.get("text", "")))
            elif kind == "error":
                raise _event_error(event)
            elif kind == "done":
                return JSONResponse(
                    {
                        **head,
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(text)},
                                "logprobs": None,
                                "finish_reason": _finish_reason(event),
                            }
                        ],
                        "usage": _usage(event),
                    }
                )
        raise OpenAiError(502, "the model's answer ended early", "incomplete", "server_error")

    async def _sse(
        self,
        head: dict[str, Any],
        events: AsyncIterator[dict[str, Any]],
        include_usage: bool,
        request_id: str,
        slot: str,
        waiter: ResultWaiter,
    ) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]}  # fmt: skip
            return f"data: {json.dumps(data)}\n\n"

        finished = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            attempt = None
            sent = False
            async for event in events:
                kind = event.get("type")
                if kind == "start":
                    if attempt is not None and attempt != event.get("attempt") and sent:
                        raise OpenAiError(502, "generation was interrupted", "interrupted",
                                       "server_error")  # fmt: skip
                    attempt = event.get("attempt")
                elif kind == "delta" and event.get("text"):
                    sent = True
                    yield chunk({"content": str(event["text"])})
                elif kind == "error":
                    raise _event_error(event)
                elif kind == "done":
                    yield chunk({}, _finish_reason(event))
                    if include_usage:
                        usage = {**head, "object": "chat.completion.chunk", "choices": [],
                                 "usage": _usage(event)}  # fmt: skip
                        yield f"data: {json.dumps(usage)}\n\n"
                    yield "data: [DONE]\n\n"
                    finished = True
                    return
            raise OpenAiError(502, "the model's answer ended early", "incomplete", "server_error")
        except OpenAiError as error:
            # The status line has gone out: the error travels in the stream, in the same body.
            yield f"data: {json.dumps(error.body())}\n\n"
            finished = True
        except REDIS_FAILURES:
            yield f"data: {json.dumps(_unavailable().body())}\n\n"
            finished = True
        finally:
            with anyio.CancelScope(shield=True):
                if not finished:
                    await self._cancel(request_id)  # the client went away mid-answer
                await self._cleanup(request_id, waiter)
                await self._release(slot, request_id)

    async def _cancel(self, request_id: str) -> None:
        with contextlib.suppress(*REDIS_FAILURES):
            key = self.keys.api_cancel(request_id)
            await self.redis.set(key, "1", ex=RESPONSE_TTL_SECONDS)

    async def _cleanup(self, request_id: str, waiter: ResultWaiter | None) -> None:
        """The request is over: stop reading its answer, and delete what ml wrote of it."""
        if waiter is not None:
            self.results.close(waiter)
        with contextlib.suppress(*REDIS_FAILURES):
            await self.redis.delete(self.results.response_stream(request_id))


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read: only a disconnect comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone (with `work` cancelled) when the client leaves first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone
    finally:
        gone.cancel()
        task.cancel()


async def _until_content(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events up to the first delta or done: errors before any text get a real HTTP status."""
    seen: list[dict[str, Any]] = []
    async for event in events:
        if event.get("type") == "error":
            raise _event_error(event)
        seen.append(event)
        if event.get("type") != "start":
            return seen
    raise OpenAiError(502, "the model's answer ended early", "incomplete", "server_error")


async def _chain(
    seen: list[dict[str, Any]], events: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    for event in seen:
        yield event
    async for event in events:
        yield event


def _event_error(event: dict[str, Any]) -> OpenAiError:
    status = int(event.get("status", 500))
    return OpenAiError(
        status,
        str(event.get("message", "generation failed")),
        str(event.get("code", "generation_failed")),
        "invalid_request_error" if status < 500 else "server_error",
    )


def _finish_reason(event: dict[str, Any]) -> str:
    return "length" if event.get("finish_reason") == "length" else "stop"


def _usage(event: dict[str, Any]) -> dict[str, Any]:
    prompt = int(event.get("prompt_tokens", 0))
    completion = int(event.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(event.get("cached_tokens", 0))},
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise OpenAiError(400, f"{name} must be a number from {low} to {high}", "invalid_value")
    return float(value)
