"""The admin API under /admin: stats, dead letters, block/unblock, export and delete a user.

Every endpoint, the OpenAPI document included, needs ``Authorization: Bearer <JWT>`` signed
with JWT_SECRET_KEY (HS256, audience ``aiconv-admin``, at most 24 h; verified by PyJWT in
``aiconv.web.auth``; mint one with ``aiconv admin token``). GET needs the ``read`` scope, POST
and DELETE the ``write`` scope (403 otherwise). Every call and every refusal is logged with its
method, path, client address and status, and the token's subject when it has one; never the
token. Without JWT_SECRET_KEY the API is disabled: everything under /admin answers 404. Errors
are JSON (``{"error": "..."}``): 400 bad input, 401 no or bad token, 403 scope missing, 404
unknown, 409 conflict, 503 PostgreSQL or Redis unreachable. Bad input is rejected before it
reaches a query.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from aiconv.config import Settings
from aiconv.jobs.codec import JobCodec
from aiconv.jobs.dlq import DeadJob, DeadLetters
from aiconv.jobs.keys import Keys
from aiconv.store.admin import AdminStore
from aiconv.store.crypto import DecryptionError, TextCipher
from aiconv.store.repository import Store
from aiconv.web import auth
from aiconv.web.admin_access import access_routes

log = structlog.get_logger(__name__)

ADMIN_POOL_SIZE = 4  # connections per web process: the admin API is light
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
STATS_DAYS_DEFAULT, STATS_DAYS_MAX = 14, 365
DLQ_LIMIT_DEFAULT, DLQ_LIMIT_MAX = 100, 1000

_INTEGER = re.compile(r"-?[0-9]{1,19}")
_QUERY_INTEGER = re.compile(r"[0-9]{1,9}")
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
STREAM_ID_PATTERN = "^[0-9]{1,20}-[0-9]{1,20}$"

Handler = Callable[[Request, str], Awaitable[Response]]


class BadRequest(Exception):
    pass


class NotFound(Exception):
    pass


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _unauthorized(message: str) -> Response:
    challenge = 'Bearer realm="aiconv-admin"'
    if message != "missing bearer token":
        challenge += ', error="invalid_token"'
    return _error(401, message, {"WWW-Authenticate": challenge})


def _path_bigint(request: Request, name: str) -> int:
    text = str(request.path_params[name])
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f"{name} must be an integer")
    value = int(text)
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        raise BadRequest(f"{name} is out of range")
    return value


def _query_int(request: Request, name: str, default: int, maximum: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not _QUERY_INTEGER.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise BadRequest(f"{name} must be an integer from 1 to {maximum}")
    return int(text)


def _stream_id(request: Request) -> str:
    text = str(request.path_params["entry_id"])
    match = _STREAM_ID.fullmatch(text)
    if match is None:
        raise BadRequest("id must look like 1700000000000-0")
    if any(int(part) > UINT64_MAX for part in match.groups()):
        raise NotFound(f"no dead job {text}")  # well formed, but no stream entry can have it
    return text


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
        self.replayable = {dead.keys.updates, dead.keys.generate, dead.keys.replies}

    def guard(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Authenticate and authorise, run the handler with the token's subject, map failures to
        JSON; every call and every refusal is logged (never the token)."""

        async def endpoint(request: Request) -> Response:
            audit = log.bind(
                method=request.method,
                path=request.url.path,
                client=request.client.host if request.client else None,
            )
            token = auth.bearer(request.headers.get("authorization"))
            if token is None:
                audit.warning("admin: refused", status=401, reason="missing bearer token")
                return _unauthorized("missing bearer token")
            try:
                claims = auth.decode(token, self.key)
            except auth.InvalidToken as error:
                audit.warning("admin: refused", status=401, reason=str(error))
                return _unauthorized(str(error))
            subject: str = claims["sub"]  # required, a non-empty string (auth.decode)
            audit = audit.bind(sub=subject)
            needed = auth.READ if request.method in ("GET", "HEAD") else auth.WRITE
            if needed not in auth.scopes_of(claims):
                audit.warning("admin: refused", status=403, reason=f"needs scope {needed}")
                return _error(
                    403,
                    f"the token lacks the {needed} scope",
                    {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
                )
            response = await self._run(handler, request, subject)
            audit.info("admin: call", status=response.status_code)
            return response

        return endpoint

    async def _run(self, handler: Handler, request: Request, subject: str) -> Response:
        try:
            return await handler(request, subject)
        except BadRequest as error:
            return _error(400, str(error))
        except NotFound as error:
            return _error(404, str(error))
        except psycopg.OperationalError as error:
            log.warning("admin: database unavailable", error=type(error).__name__)
            return _error(503, "database unavailable")
        except (RedisError, OSError) as error:
            log.warning("admin: redis unavailable", error=type(error).__name__)
            return _error(503, "redis unavailable")
        except DecryptionError as error:
            # A key missing from ENCRYPTION_KEY: the operator's to fix, not a crash.
            log.error("admin: stored text cannot be decrypted", error=str(error))
            return _error(409, f"cannot decrypt stored text: {error}")

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
        entry_id = _stream_id(request)
        job = await self.dead.get(entry_id)
        if job is None:
            raise NotFound(f"no dead job {entry_id}")
        if job.stream not in self.replayable:
            return _error(409, "the dead job names no stream it can be replayed onto")
        new_id = await self.dead.replay(entry_id)
        if new_id is None:  # dropped or replayed by someone else meanwhile
            raise NotFound(f"no dead job {entry_id}")
        log.info("admin: dead job replayed", sub=subject, id=entry_id, new_id=new_id)
        return JSONResponse({"id": entry_id, "stream": job.stream, "replayed_as": new_id})

    async def dlq_drop(self, request: Request, subject: str) -> Response:
        entry_id = _stream_id(request)
        if not await self.dead.drop(entry_id):
            raise NotFound(f"no dead job {entry_id}")
        log.info("admin: dead job dropped", sub=subject, id=entry_id)
        return JSONResponse({"id": entry_id, "dropped": True})

    def set_blocked(self, blocked: bool) -> Handler:
        async def handler(request: Request, subject: str) -> Response:
            user_id = _path_bigint(request, "user_id")
            user = await self.store.set_blocked(user_id, blocked)
            if user is None:
                raise NotFound(f"no user {user_id}")
            event = "admin: user blocked" if blocked else "admin: user unblocked"
            log.info(event, sub=subject, user_id=user_id)
            return JSONResponse(user)

        return handler

    async def export_user(self, request: Request, subject: str) -> Response:
        user_id = _path_bigint(request, "user_id")
        data = await self.store.export_user(user_id)
        if data is None:
            raise NotFound(f"no user {user_id}")
        log.info("admin: user exported", sub=subject, user_id=user_id)
        return JSONResponse(data)

    async def delete_user(self, request: Request, subject: str) -> Response:
        user_id = _path_bigint(request, "user_id")
        deleted = await self.store.delete_user(user_id)
        if deleted is None:
            raise NotFound(f"no user {user_id}")
        log.info("admin: user deleted", sub=subject, user_id=user_id, **deleted)
        return JSONResponse({"id": user_id, "deleted": deleted})

    async def openapi(self, request: Request, subject: str) -> Response:
        return JSONResponse(OPENAPI)

    def routes(self) -> list[BaseRoute]:
        g = self.guard
        return [
            Route("/stats", g(self.stats), methods=["GET"]),
            Route("/dlq", g(self.dlq_list), methods=["GET"]),
            Route("/dlq/{entry_id}/replay", g(self.dlq_replay), methods=["POST"]),
            Route("/dlq/{entry_id}", g(self.dlq_drop), methods=["DELETE"]),
            Route("/users/{user_id}/block", g(self.set_blocked(True)), methods=["POST"]),
            Route("/users/{user_id}/unblock", g(self.set_blocked(False)), methods=["POST"]),
            Route("/users/{user_id}/export", g(self.export_user), methods=["GET"]),
            Route("/users/{user_id}", g(self.delete_user), methods=["DELETE"]),
            Route("/openapi.json", g(self.openapi), methods=["GET"]),
        ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail, dict(exc.headers or {}))


async def _disabled(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await _error(404, "not found")(scope, receive, send)


def admin_routes(
    settings: Settings,
    redis: Redis,
    pool: AsyncConnectionPool | None,
    codec: JobCodec | None = None,
) -> list[BaseRoute]:
    """The /admin mount: the API when JWT_SECRET_KEY is set (and a pool given), else 404s."""
    if not settings.jwt_secret_key or pool is None:
        return [Mount("/admin", app=_disabled)]
    if any(len(key.encode()) < 32 for key in auth.signing_keys(settings.jwt_secret_key)):
        # HS256 tokens can be brute-forced offline against a short key (production refuses it).
        log.warning("JWT_SECRET_KEY is shorter than 32 bytes; use a long random value")
    cipher = TextCipher.from_setting(settings.encryption_key)
    api = AdminApi(
        settings.jwt_secret_key,
        AdminStore(pool, read_text=Store(pool, cipher).unseal),
        DeadLetters(redis, Keys(settings.redis_key_prefix), codec or JobCodec(cipher)),
    )
    routes = [*api.routes(), *access_routes(api.guard, pool, settings.chat_policy)]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.router.redirect_slashes = False  # no redirect built from the Host header (see app.py)
    return [Mount("/admin", app=app)]


# --- the OpenAPI document, by hand ---------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {"$ref": f"#/components/responses/{_RESPONSE_NAMES[status]}"}
        for status in statuses
    }


_RESPONSE_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    503: "Unavailable",
}

_USER_ID = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "description": "the Telegram user id",
    "schema": {"type": "integer", "format": "int64", "minimum": BIGINT_MIN, "maximum": BIGINT_MAX},
}
_ENTRY_ID = {
    "name": "entry_id",
    "in": "path",
    "required": True,
    "description": "the dead job's id in the dead-letter stream",
    "schema": {"type": "string", "pattern": STREAM_ID_PATTERN},
}


def _count(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "description": description}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **extra}


_TIMESTAMP = {"type": "string", "format": "date-time"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "aiconv admin API",
        "version": "1",
        "description": "Operate aiconv: stats, dead letters, users. Every endpoint needs a "
        "bearer JWT (HS256, JWT_SECRET_KEY, audience aiconv-admin; `aiconv admin token --sub "
        "NAME --ttl 1h`). GET needs the read scope, POST and DELETE the write scope "
        "(`--scope write`).",
    },
    "security": [{"bearerAuth": []}],
    "paths": {
        "/admin/stats": {
            "get": {
                "operationId": "getStats",
                "summary": "Totals, and per-day figures for the last `days` UTC days",
                "parameters": [
                    {
                        "name": "days",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": STATS_DAYS_MAX,
                            "default": STATS_DAYS_DEFAULT,
                        },
                    }
                ],
                "responses": {
                    "200": _json_body({"$ref": "#/components/schemas/Stats"}, "the figures"),
                    **_errors(400, 401, 503),
                },
            }
        },
        "/admin/dlq": {
            "get": {
                "operationId": "listDeadJobs",
                "summary": "Dead jobs, oldest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": DLQ_LIMIT_MAX,
                            "default": DLQ_LIMIT_DEFAULT,
                        },
                    }
                ],
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["count", "items"],
                            "properties": {
                                "count": _count("dead jobs in the stream"),
                                "items": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/DeadJob"},
                                },
                            },
                        },
                        "the dead jobs",
                    ),
                    **_errors(400, 401, 503),
                },
            }
        },
        "/admin/dlq/{entry_id}/replay": {
            "post": {
                "operationId": "replayDeadJob",
                "summary": "Put a dead job back on its stream as a fresh delivery",
                "parameters": [_ENTRY_ID],
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["id", "stream", "replayed_as"],
                            "properties": {
                                "id": {"type": "string"},
                                "stream": {"type": "string"},
                                "replayed_as": {"type": "string"},
                            },
                        },
                        "replayed",
                    ),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            }
        },
        "/admin/dlq/{entry_id}": {
            "delete": {
                "operationId": "dropDeadJob",
                "summary": "Delete a dead job",
                "parameters": [_ENTRY_ID],
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["id", "dropped"],
                            "properties": {
                                "id": {"type": "string"},
                                "dropped": {"type": "boolean"},
                            },
                        },
                        "dropped",
                    ),
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/admin/users/{user_id}/block": {
            "post": {
                "operationId": "blockUser",
                "summary": "Block a user: their updates are ignored",
                "parameters": [_USER_ID],
                "responses": {
                    "200": _json_body({"$ref": "#/components/schemas/Blocked"}, "blocked"),
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/admin/users/{user_id}/unblock": {
            "post": {
                "operationId": "unblockUser",
                "summary": "Unblock a user",
                "parameters": [_USER_ID],
                "responses": {
                    "200": _json_body({"$ref": "#/components/schemas/Blocked"}, "unblocked"),
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/admin/users/{user_id}/export": {
            "get": {
                "operationId": "exportUser",
                "summary": "Everything stored about one user, as JSON",
                "parameters": [_USER_ID],
                "responses": {
                    "200": _json_body({"$ref": "#/components/schemas/UserExport"}, "the data"),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/admin/users/{user_id}": {
            "delete": {
                "operationId": "deleteUser",
                "summary": "Delete a user, their private chats and every message of theirs",
                "parameters": [_USER_ID],
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["id", "deleted"],
                            "properties": {
                                "id": {"type": "integer", "format": "int64"},
                                "deleted": {
                                    "type": "object",
                                    "required": ["users", "chats", "messages"],
                                    "properties": {
                                        "users": _count("users deleted (1)"),
                                        "chats": _count("private chats deleted"),
                                        "messages": _count("messages deleted"),
                                    },
                                },
                            },
                        },
                        "deleted",
                    ),
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/admin/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "responses": {
                    "200": _json_body({"type": "object"}, "the OpenAPI document"),
                    **_errors(401),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        },
        "responses": {
            "BadRequest": _json_body(_ERROR, "the input is malformed or out of range"),
            "Unauthorized": {
                **_json_body(_ERROR, "no bearer token, or an invalid or expired one"),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            },
            "Forbidden": {
                **_json_body(_ERROR, "the token lacks the write scope this call needs"),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            },
            "NotFound": _json_body(_ERROR, "no such resource"),
            "Conflict": _json_body(_ERROR, "the dead job cannot be replayed"),
            "Unavailable": _json_body(_ERROR, "PostgreSQL or Redis is unreachable"),
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "Stats": {
                "type": "object",
                "required": ["days", "totals", "per_day"],
                "properties": {
                    "days": {"type": "integer", "minimum": 1, "maximum": STATS_DAYS_MAX},
                    "totals": {
                        "type": "object",
                        "required": ["users", "blocked_users", "chats", "messages", "tokens"],
                        "properties": {
                            "users": _count("users"),
                            "blocked_users": _count("users blocked by an admin"),
                            "users_blocking_the_bot": _count(
                                "users who blocked the bot and have not written since"
                            ),
                            "chats": _count("chats"),
                            "messages": {
                                "type": "object",
                                "required": ["user", "assistant", "system", "total"],
                                "properties": {
                                    "user": _count("messages users wrote"),
                                    "assistant": _count("the bot's replies"),
                                    "system": _count("system messages"),
                                    "total": _count("all messages"),
                                },
                            },
                            "tokens": {
                                "type": "object",
                                "required": ["prompt", "completion"],
                                "properties": {
                                    "prompt": _count("prompt tokens"),
                                    "completion": _count("completion tokens"),
                                },
                            },
                        },
                    },
                    "per_day": {
                        "type": "array",
                        "description": "one row per UTC day, oldest first, today last",
                        "items": {
                            "type": "object",
                            "required": [
                                "date",
                                "messages",
                                "active_users",
                                "prompt_tokens",
                                "completion_tokens",
                            ],
                            "properties": {
                                "date": {"type": "string", "format": "date"},
                                "messages": _count("messages"),
                                "active_users": _count("users who wrote that day"),
                                "prompt_tokens": _count("prompt tokens"),
                                "completion_tokens": _count("completion tokens"),
                            },
                        },
                    },
                },
            },
            "DeadJob": {
                "type": "object",
                "required": ["id", "stream", "error", "deliveries", "failed_at", "payload"],
                "properties": {
                    "id": {"type": "string"},
                    "stream": {"type": "string"},
                    "error": {"type": "string"},
                    "deliveries": {"type": "integer"},
                    "failed_at": _nullable("number", description="Unix time"),
                    "payload": {"type": "object"},
                },
            },
            "Blocked": {
                "type": "object",
                "required": ["id", "blocked"],
                "properties": {
                    "id": {"type": "integer", "format": "int64"},
                    "blocked": {"type": "boolean"},
                },
            },
            "UserExport": {
                "type": "object",
                "required": ["user", "chats", "messages"],
                "properties": {
                    "user": {
                        "type": "object",
                        "required": ["id", "blocked", "created_at", "updated_at"],
                        "properties": {
                            "id": {"type": "integer", "format": "int64"},
                            "username": _nullable("string"),
                            "first_name": _nullable("string"),
                            "language_code": _nullable("string"),
                            "blocked": {"type": "boolean", "description": "blocked by an admin"},
                            "blocked_bot_at": _nullable(
                                "string",
                                format="date-time",
                                description="when the user blocked the bot; null once they write",
                            ),
                            "created_at": _TIMESTAMP,
                            "updated_at": _TIMESTAMP,
                        },
                    },
                    "chats": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "type", "settings", "created_at", "updated_at"],
                            "properties": {
                                "id": {"type": "integer", "format": "int64"},
                                "type": {"type": "string"},
                                "title": _nullable("string"),
                                "settings": {"type": "object"},
                                "created_at": _TIMESTAMP,
                                "updated_at": _TIMESTAMP,
                            },
                        },
                    },
                    "messages": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "chat_id", "role", "text", "created_at"],
                            "properties": {
                                "id": {"type": "integer", "format": "int64"},
                                "chat_id": {"type": "integer", "format": "int64"},
                                "role": {"type": "string", "enum": ["user", "assistant", "system"]},
                                "text": {"type": "string"},
                                "telegram_message_id": _nullable("integer", format="int64"),
                                "reply_to_message_id": _nullable("integer", format="int64"),
                                "prompt_tokens": _nullable("integer"),
                                "completion_tokens": _nullable("integer"),
                                "created_at": _TIMESTAMP,
                            },
                        },
                    },
                },
            },
        },
    },
}
