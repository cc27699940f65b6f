"""POST /webhook: authenticate, validate, deduplicate, enqueue — and answer in milliseconds.

A body over MAX_BODY_BYTES is answered 413 with `Connection: close`. Up to DRAIN_BYTES of it (for
at most DRAIN_SECONDS) are read and dropped first: a client still writing its body when the server
answered and closed would otherwise see the connection reset instead of the 413, depending on
timing. Past those bounds the answer comes at once and the rest is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aiconv.jobs.queue import JobQueue
from aiconv.telegram.models import InvalidUpdate, clean, parse_update
from aiconv.web import jsonbody
from aiconv.worker.updates import count_update, update_payload

MAX_BODY_BYTES = 1024 * 1024
DRAIN_BYTES = 8 * MAX_BODY_BYTES
DRAIN_SECONDS = 2.0
SECRET_HEADER = "x-telegram-bot-api-secret-token"

log = structlog.get_logger(__name__)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"ok": False, "error": message}, status_code=status, headers=headers)


async def _read_limited(request: Request) -> bytes | None:
    """The body, or None when it is over MAX_BODY_BYTES.

    An oversized body is read on and dropped, up to DRAIN_BYTES and DRAIN_SECONDS, so that the
    client has finished writing when the 413 comes and reads it, rather than a reset connection.
    """
    declared = request.headers.get("content-length")
    over = declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES
    if declared is not None and declared.isdigit() and not over:
        # The common case, on the hot path: the server frames the body by its declared length,
        # so it cannot grow past it, and no drain deadline is needed.
        return await request.body()
    body = bytearray()
    seen = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(None) as draining:
            if over:
                draining.reschedule(asyncio.get_running_loop().time() + DRAIN_SECONDS)
            async for chunk in request.stream():
                seen += len(chunk)
                if seen <= MAX_BODY_BYTES:
                    body += chunk
                elif not over:
                    over = True
                    draining.reschedule(asyncio.get_running_loop().time() + DRAIN_SECONDS)
                if seen > DRAIN_BYTES:
                    break
    return None if over else bytes(body)


def make_webhook(secret: str | None, queue: JobQueue) -> object:
    expected = secret.encode() if secret else None

    async def webhook(request: Request) -> Response:
        if expected is None:
            return _error(404, "webhook mode is not configured")
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            return _error(401, "wrong or missing secret token")
        body = await _read_limited(request)
        if body is None:
            # Past DRAIN_BYTES the rest is never read, so the connection cannot carry another
            # request: say so, and the client opens a fresh one instead of finding it closed.
            return _error(413, f"body over {MAX_BODY_BYTES} bytes", {"Connection": "close"})
        try:
            data = jsonbody.loads(body)
            update = parse_update(data)
        except (ValueError, InvalidUpdate) as error:  # jsonbody.BadJson is a ValueError
            return _error(400, f"not a Telegram update: {str(error)[:200]}")
        # Cleaned of what could never be stored (NUL, lone surrogates): the job the worker gets
        # is one it can finish, not one it retries into the DLQ.
        payload = update_payload(clean(data))
        try:
            added = await queue.enqueue(queue.keys.updates, payload, f"update:{update.update_id}")
        except (RedisError, OSError) as error:
            # Telegram retries non-2xx answers later: nothing is lost.
            log.warning(
                "webhook cannot enqueue", update_id=update.update_id, error=type(error).__name__
            )
            return _error(503, "temporarily unavailable")
        count_update(update, added is not None)
        # Counted by aiconv_updates_received_total; a log line per update at info would cost
        # the webhook a seventh of its time under load (bench/ingest.py).
        log.debug(
            "update received" if added else "duplicate update ignored", update_id=update.update_id
        )
        return JSONResponse({"ok": True})

    return webhook
