"""POST /webhook: authenticate, validate, deduplicate, enqueue — and answer in milliseconds.

The secret is checked (in constant time) before the body is read. The body is read by
`jsonbody.read_json` (a 413 over MAX_BODY_BYTES, drained first so the client reads it); errors
are `HttpError`s rendered by `aiconv.web.errors` as ``{"error": "..."}``. Telegram retries any
non-2xx answer later, so a 503 loses nothing.
"""

from __future__ import annotations

import hmac

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aiconv.jobs.queue import JobQueue
from aiconv.telegram.models import clean, parse_update
from aiconv.web import jsonbody
from aiconv.web.errors import HttpError
from aiconv.worker.updates import count_update, update_payload, updates_stream

MAX_BODY_BYTES = 1024 * 1024
SECRET_HEADER = "x-telegram-bot-api-secret-token"

log = structlog.get_logger(__name__)


def make_webhook(secret: str | None, queue: JobQueue) -> object:
    expected = secret.encode() if secret else None

    async def webhook(request: Request) -> Response:
        if expected is None:
            raise HttpError(404, "webhook mode is not configured")
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            raise HttpError(401, "wrong or missing secret token")
        try:
            data = await jsonbody.read_json(request, MAX_BODY_BYTES)
            update = parse_update(data)
        except ValueError as error:  # jsonbody.BadJson and InvalidUpdate are ValueErrors
            raise HttpError(400, f"not a Telegram update: {str(error)[:200]}") from None
        # Cleaned of what could never be stored (NUL, lone surrogates): the job the worker gets
        # is one it can finish, not one it retries into the DLQ.
        payload = update_payload(clean(data))
        try:
            stream = updates_stream(queue.keys, payload)  # the chat's shard
            added = await queue.enqueue(stream, payload, f"update:{update.update_id}")
        except (RedisError, OSError) as error:
            # Telegram retries non-2xx answers later: nothing is lost.
            log.warning(
                "webhook cannot enqueue", update_id=update.update_id, error=type(error).__name__
            )
            raise HttpError(503, "temporarily unavailable") from None
        count_update(update, added is not None)
        # Counted by aiconv_updates_received_total; a log line per update at info would cost
        # the webhook a seventh of its time under load (bench/ingest.py).
        log.debug(
            "update received" if added else "duplicate update ignored", update_id=update.update_id
        )
        return JSONResponse({"ok": True})

    return webhook
