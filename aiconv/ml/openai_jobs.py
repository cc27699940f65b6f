"""ml's side of the OpenAI-compatible API (the web side is `aiconv.web.openai`): run a request's
messages and stream its events back to Redis.

The consumer acknowledges the job when the handler returns; the events are the effect.

The jobs come on their own stream, `Keys.openai_generate`, worked by the ml group like chat turns
on `Keys.generate` (one `Consumer` each, sharing the engine's slots and its queue): API traffic
is measured, trimmed and dead-lettered under its own label, and a burst of it never sits in
front of chat turns in one stream. Jobs queued on `generate` by a web of the previous release
are still served there (GenerateHandler passes them on by kind). A job dead-lettered after too
many failed deliveries tells its waiting client so, instead of leaving it to time out.

The job names the web process's result reader (`reader`): its events go to
`Keys.api_response(reader, id)`, in that reader's hash slot, because the reader XREADs all its
waiters' streams in one call, which a Redis Cluster allows only within one slot.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from aiconv.jobs.consumer import Consumer, ConsumerOptions, Slots
from aiconv.jobs.keys import GENERATE_GROUP, Keys
from aiconv.jobs.queue import Job, JobQueue
from aiconv.ml.cancel import CancelWatcher
from aiconv.ml.engine import Engine, PromptTooLong
from aiconv.ml.protocol import API_KIND, RESPONSE_TTL_SECONDS, validate_messages
from aiconv.ml.stats import observe

__all__ = ["API_KIND", "OpenAiJobHandler", "openai_consumer"]

# Deltas are written at most this often per request (tokens in between are joined).
FLUSH_SECONDS = 0.02

log = structlog.get_logger(__name__)


@dataclass(eq=False)  # a service: compared by identity
class OpenAiJobHandler:
    engine: Engine
    queue: JobQueue
    keys: Keys
    watcher: CancelWatcher
    model_id: str

    async def _emit(self, out: str, event: dict[str, Any]) -> None:
        # Sealed like jobs when ENCRYPTION_KEY is set: the answer is user text too.
        encoded = self.queue.codec.encode(out, event)
        await self.queue.redis.xadd(out, {"event": encoded}, maxlen=100_000, approximate=True)

    def response_stream(self, payload: dict[str, Any]) -> str | None:
        """Where the request's events go: its stream beside the waiting web process's other
        results (the reader's hash tag, see web/api_results.py); None for a job that names no
        request or no reader (nobody could read its answer)."""
        request_id, reader = str(payload.get("id") or ""), str(payload.get("reader") or "")
        if not request_id or not reader:
            return None
        return self.keys.api_response(reader, request_id)

    async def give_up(self, job: Job) -> None:
        """The job is dead-lettered: its client, if still waiting, gets an error at once."""
        out = self.response_stream(job.payload)
        if out is not None:
            await self._emit(out, {"type": "error", "status": 502, "code": "generation_failed",
                                   "message": "generation failed"})  # fmt: skip
            await self.queue.redis.expire(out, RESPONSE_TTL_SECONDS)

    async def __call__(self, job: Job) -> None:
        payload = job.payload
        request_id = str(payload.get("id", ""))
        redis = self.queue.redis
        bound = log.bind(job_key=job.key, request_id=request_id)
        out = self.response_stream(payload)
        if out is None:
            # A web of the previous release named no reader: its answer would have no reader.
            bound.warning("api job without a request id or reader; dropped")
            observe(None, "cancelled")
            return

        async def emit(event: dict[str, Any]) -> None:
            await self._emit(out, event)

        cancel_key = self.keys.api_cancel(request_id)
        if await self.watcher.stale(cancel_key, None):
            return
        deadline = _float(payload.get("deadline"))
        if deadline is not None and time.time() > deadline:
            # Its client has been answered 504 (or left): nobody will read this generation.
            bound.info("api request past its deadline; dropped")
            observe(None, "cancelled")
            return
        # A rerun (after a crash or a Redis outage) announces itself with a new attempt id.
        await emit({"type": "start", "attempt": uuid.uuid4().hex})
        await redis.expire(out, RESPONSE_TTL_SECONDS)
        try:
            messages = validate_messages(payload.get("messages"))
            prompt = await asyncio.to_thread(self.engine.chat_tokens, messages)
            generation = self.engine.submit(
                prompt,
                max_tokens=_int(payload.get("max_tokens")),
                temperature=_float(payload.get("temperature")),
                top_p=_float(payload.get("top_p")) or 1.0,
                seed=_int(payload.get("seed")),
                stop=[str(s) for s in payload.get("stop") or []][:4],
            )
        except PromptTooLong as error:
            await emit(
                {
                    "type": "error",
                    "status": 400,
                    "code": "context_length_exceeded",
                    "message": f"the messages do not fit the model's context: {error}",
                }
            )
            return
        except (ValueError, TypeError) as error:
            await emit(
                {"type": "error", "status": 400, "code": "invalid_request", "message": str(error)}
            )
            return
        try:
            with self.watcher.watch(cancel_key, None, generation):
                buffer: list[str] = []
                last = asyncio.get_running_loop().time()
                async for piece in generation:
                    buffer.append(piece)
                    now = asyncio.get_running_loop().time()
                    if now - last >= FLUSH_SECONDS:
                        await emit({"type": "delta", "text": "".join(buffer)})
                        buffer.clear()
                        last = now
                if buffer:
                    await emit({"type": "delta", "text": "".join(buffer)})
        except asyncio.CancelledError:
            generation.cancel()
            raise
        except Exception as error:
            bound.error("api generation failed", error=type(error).__name__, detail=str(error))
            observe(None, "failed")
            await emit(
                {
                    "type": "error",
                    "status": 500,
                    "code": "generation_failed",
                    "message": "generation failed",
                }
            )
            return
        completion = generation.completion
        assert completion is not None
        await emit(
            {
                "type": "done",
                "finish_reason": completion.finish_reason,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "cached_tokens": completion.cached_tokens,
            }
        )
        await redis.expire(out, RESPONSE_TTL_SECONDS)
        observe(completion, "cancelled" if completion.finish_reason == "cancelled" else "ok")
        bound.info(
            "api request generated",
            prompt_tokens=completion.prompt_tokens,
            cached_tokens=completion.cached_tokens,
            completion_tokens=completion.completion_tokens,
            finish_reason=completion.finish_reason,
            first_token_seconds=completion.first_token_seconds,
        )


def openai_consumer(
    queue: JobQueue,
    handler: OpenAiJobHandler,
    options: ConsumerOptions,
    *,
    name: str | None = None,
    slots: Slots | None = None,
) -> Consumer:
    """ml's consumer of the /v1 job stream (run next to those of `Keys.generate`, sharing their
    `slots`: one engine)."""
    return Consumer(
        queue,
        queue.keys.openai_generate,
        GENERATE_GROUP,
        handler,
        name=name,
        options=options,
        on_dead_letter=handler.give_up,
        slots=slots,
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
