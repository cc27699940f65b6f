"""The admin API under /admin: stats, dead letters, block/unblock, export and delete a user.

Every endpoint, the OpenAPI document included, needs ``Authorization: Bearer <JWT>`` signed
with JWT_SECRET_KEY (HS256, audience ``aiconv-admin``, at most 24 h; verified by PyJWT in
``aiconv.web.auth``; mint one with ``aiconv admin token``). GET needs the ``read`` scope, POST
and DELETE the ``write`` scope (403 otherwise). Every call and every refusal is logged with its
method, path, client address and status, and the token's subject when it has one; never the
token. Without JWT_SECRET_KEY the API is disabled: everything under /admin answers 404. Errors
are JSON (``{"error": "..."}``): 400 bad input, 401 no or bad token, 403 scope missing, 404
unknown, 409 conflict, 503 PostgreSQL or Redis unreachable; handlers raise `HttpError` and
`aiconv.web.errors` renders it. Bad input is rejected before it reaches a query. The OpenAPI
document is generated from the models in `aiconv.web.admin_schema`, which also hold the bounds
the parsers here enforce.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from aiconv.config import Settings
from aiconv.jobs.client import RedisClient, keys_for
from aiconv.jobs.codec import JobCodec
from aiconv.jobs.dlq import DEAD_JOB_ID, DeadJob, DeadLetters
from aiconv.store.admin import AdminStore
from aiconv.store.crypto import DecryptionError, TextCipher
from aiconv.store.db import ReadRouter
from aiconv.store.repository import Store
from aiconv.web import auth
from aiconv.web.admin_access import access_routes
from aiconv.web.admin_schema import (
    BIGINT_MAX,
    BIGINT_MIN,
    DLQ_LIMIT_DEFAULT,
    DLQ_LIMIT_MAX,
    STATS_DAYS_DEFAULT,
    STATS_DAYS_MAX,
    Blocked,
    Deleted,
    DeletedCounts,
    Dropped,
    Replayed,
    openapi_document,
)
from aiconv.web.errors import EXCEPTION_HANDLERS, HttpError

log = structlog.get_logger(__name__)

ADMIN_POOL_SIZE = 4  # connections per web process: the admin API is light

_INTEGER = re.compile(r"-?[0-9]{1,19}")
_QUERY_INTEGER = re.compile(r"[0-9]{1,9}")
_DEAD_JOB_ID = re.compile(DEAD_JOB_ID)

Handler = Callable[[Request, str], Awaitable[Response]]


def _bad_request(message: str) -> HttpError:
    return HttpError(400, message)


def _not_found(message: str) -> HttpError:
    return HttpError(404, message)


def _unauthorized(message: str) -> HttpError:
    challenge = 'Bearer realm="aiconv-admin"'
    if message != "missing bearer token":
        challenge += ', error="invalid_token"'
    return HttpError(401, message, {"WWW-Authenticate": challenge})


def _as_http_error(error: Exception) -> HttpError | None:
    """What an outside failure means to the caller; None for a bug (a 500)."""
    if isinstance(error, HttpError):
        return error
    if isinstance(error, psycopg.OperationalError):
        log.warning("admin: database unavailable", error=type(error).__name__)
        return HttpError(503, "database unavailable")
    if isinstance(error, RedisError | OSError):
        log.warning("admin: redis unavailable", error=type(error).__name__)
        return HttpError(503, "redis unavailable")
    if isinstance(error, DecryptionError):
        # A key missing from ENCRYPTION_KEY: the operator's to fix, not a crash.
        log.error("admin: stored text cannot be decrypted", error=str(error))
        return HttpError(409, f"cannot decrypt stored text: {error}")
    return None


def _path_bigint(request: Request, name: str) -> int:
    text = str(request.path_params[name])
    if not _INTEGER.fullmatch(text):
        raise _bad_request(f"{name} must be an integer")
    value = int(text)
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        raise _bad_request(f"{name} is out of range")
    return value


def _query_int(request: Request, name: str, default: int, maximum: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not _QUERY_INTEGER.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise _bad_request(f"{name} must be an integer from 1 to {maximum}")
    return int(text)


def _dead_job_id(request: Request) -> str:
    """A dead job's id (aiconv/jobs/dlq.py): its source stream and entry, `replies.1@<id>`."""
    text = str(request.path_params["entry_id"])
    if _DEAD_JOB_ID.fullmatch(text) is None:
        raise _bad_request("id must look like updates.0@1700000000000-0")
    return text  # one no stream entry can have (past 64 bits) is simply not found


def _json(model: BaseModel) -> Response:
    return JSONResponse(model.model_dump(mode="json"))


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _dead_job(job: DeadJob) -> dict[str, Any]:
    return dict(_finite(job.as_dict()))


class AdminApi:
    def __init__(self, key: str, store: AdminStore, dead: DeadLetters) -> None:
        self.key = key
        self.store = store
        self.dead = dead

    def authorized(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Authenticate and authorise, run the handler with the token's subject, turn outside
        failures into `HttpError`s (rendered by `aiconv.web.errors`); every call and every
        refusal is logged with its status (never the token)."""

        async def endpoint(request: Request) -> Response:
            audit = log.bind(
                method=request.method,
                path=request.url.path,
                client=request.client.host if request.client else None,
            )
            token = auth.bearer(request.headers.get("authorization"))
            if token is None:
                audit.warning("admin: refused", status=401, reason="missing bearer token")
                raise _unauthorized("missing bearer token")
            try:
                claims = auth.decode(token, self.key)
            except auth.InvalidToken as error:
                audit.warning("admin: refused", status=401, reason=str(error))
                raise _unauthorized(str(error)) from None
            subject: str = claims["sub"]  # required, a non-empty string (auth.decode)
            audit = audit.bind(sub=subject)
            needed = auth.READ if request.method in ("GET", "HEAD") else auth.WRITE
            if needed not in auth.scopes_of(claims):
                audit.warning("admin: refused", status=403, reason=f"needs scope {needed}")
                raise HttpError(
                    403,
                    f"the token lacks the {needed} scope",
                    {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
                )
            try:
                response = await handler(request, subject)
            except Exception as error:
                failure = _as_http_error(error)
                if failure is None:
                    raise
                audit.info("admin: call", status=failure.status)
                raise failure from None
            audit.info("admin: call", status=response.status_code)
            return response

        return endpoint

    async def stats(self, request: Request, subject: str) -> Response:
        days = _query_int(request, "days", STATS_DAYS_DEFAULT, STATS_DAYS_MAX)
        return JSONResponse(await self.store.stats(days))

    async def dlq_list(self, request: Request, subject: str) -> Response:
        limit = _query_int(request, "limit", DLQ_LIMIT_DEFAULT, DLQ_LIMIT_MAX)
        jobs = await self.dead.list(limit)
        # Dead jobs carry message text: who read which, on the audit trail.
        log.info(
            "admin: dead jobs read", sub=subject, count=len(jobs), ids=[job.id for job in jobs]
        )
        return JSONResponse(
            {"count": await self.dead.count(), "items": [_dead_job(job) for job in jobs]}
        )

    async def dlq_replay(self, request: Request, subject: str) -> Response:
        entry_id = _dead_job_id(request)
        job = await self.dead.get(entry_id)
        if job is None:
            raise _not_found(f"no dead job {entry_id}")
        # A record naming another stream than the one it was dead-lettered from is damaged.
        if job.stream != self.dead.stream_of(entry_id):
            raise HttpError(409, "the dead job names no stream it can be replayed onto")
        new_id = await self.dead.replay(entry_id)
        if new_id is None:  # dropped or replayed by someone else meanwhile
            raise _not_found(f"no dead job {entry_id}")
        log.info("admin: dead job replayed", sub=subject, id=entry_id, new_id=new_id)
        return _json(Replayed(id=entry_id, stream=job.stream, replayed_as=new_id))

    async def dlq_drop(self, request: Request, subject: str) -> Response:
        entry_id = _dead_job_id(request)
        if not await self.dead.drop(entry_id):
            raise _not_found(f"no dead job {entry_id}")
        log.info("admin: dead job dropped", sub=subject, id=entry_id)
        return _json(Dropped(id=entry_id, dropped=True))

    def set_blocked(self, blocked: bool) -> Handler:
        async def handler(request: Request, subject: str) -> Response:
            user_id = _path_bigint(request, "user_id")
            user = await self.store.set_blocked(user_id, blocked)
            if user is None:
                raise _not_found(f"no user {user_id}")
            event = "admin: user blocked" if blocked else "admin: user unblocked"
            log.info(event, sub=subject, user_id=user_id)
            return _json(Blocked.model_validate(user))

        return handler

    async def export_user(self, request: Request, subject: str) -> Response:
        user_id = _path_bigint(request, "user_id")
        data = await self.store.export_user(user_id)
        if data is None:
            raise _not_found(f"no user {user_id}")
        log.info("admin: user exported", sub=subject, user_id=user_id)
        return JSONResponse(data)

    async def delete_user(self, request: Request, subject: str) -> Response:
        user_id = _path_bigint(request, "user_id")
        deleted = await self.store.delete_user(user_id)
        if deleted is None:
            raise _not_found(f"no user {user_id}")
        log.info("admin: user deleted", sub=subject, user_id=user_id, **deleted)
        return _json(Deleted(id=user_id, deleted=DeletedCounts.model_validate(deleted)))

    async def openapi(self, request: Request, subject: str) -> Response:
        return JSONResponse(openapi_document())

    def routes(self) -> list[BaseRoute]:
        authorized = self.authorized
        return [
            Route("/stats", authorized(self.stats), methods=["GET"]),
            Route("/dlq", authorized(self.dlq_list), methods=["GET"]),
            Route("/dlq/{entry_id}/replay", authorized(self.dlq_replay), methods=["POST"]),
            Route("/dlq/{entry_id}", authorized(self.dlq_drop), methods=["DELETE"]),
            Route("/users/{user_id}/block", authorized(self.set_blocked(True)), methods=["POST"]),
            Route(
                "/users/{user_id}/unblock", authorized(self.set_blocked(False)), methods=["POST"]
            ),
            Route("/users/{user_id}/export", authorized(self.export_user), methods=["GET"]),
            Route("/users/{user_id}", authorized(self.delete_user), methods=["DELETE"]),
            Route("/openapi.json", authorized(self.openapi), methods=["GET"]),
        ]


async def _disabled(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await HttpError(404, "not found").response()(scope, receive, send)


def admin_routes(
    settings: Settings,
    redis: RedisClient,
    pool: AsyncConnectionPool | None,
    codec: JobCodec | None = None,
    reads: ReadRouter | None = None,
) -> list[BaseRoute]:
    """The /admin mount: the API when JWT_SECRET_KEY is set (and a pool given), else 404s.
    Stats and exports read through ``reads`` (the replica router) when given, else the pool."""
    if not settings.jwt_secret_key or pool is None:
        return [Mount("/admin", app=_disabled)]
    if any(len(key.encode()) < 32 for key in auth.signing_keys(settings.jwt_secret_key)):
        # HS256 tokens can be brute-forced offline against a short key (production refuses it).
        log.warning("JWT_SECRET_KEY is shorter than 32 bytes; use a long random value")
    cipher = TextCipher.from_setting(settings.encryption_key)
    api = AdminApi(
        settings.jwt_secret_key,
        AdminStore(pool, read_text=Store(pool, cipher).unseal, reads=reads),
        DeadLetters(redis, keys_for(settings), codec or JobCodec(cipher)),
    )
    routes = [*api.routes(), *access_routes(api.authorized, pool, settings.chat_policy)]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False  # no redirect built from the Host header (see app.py)
    return [Mount("/admin", app=app)]
