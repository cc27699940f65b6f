"""POST /webhook: authenticate, validate, deduplicate, enqueue — and answer in milliseconds.

A body over MAX_BODY_BYTES is answered 413 with `Connection: close`: the rest of it is never
read, so the connection must not carry another request (a client reusing it would find it closed
under its next request, depending on timing).
"""

from __future__ import annotations

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
SECRET_HEADER = "x-telegram-bot-api-secret-token"

log = structlog.get_logger(__name__)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"ok": False, "error": message}, status_code=status, headers=headers)


async def _read_limited(request: Request) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


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
            # The rest of the body is never read, so the connection cannot carry another
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
        log.info(
            "update received" if added else "duplicate update ignored", update_id=update.update_id
        )
        return JSONResponse({"ok": True})

    return webhook
