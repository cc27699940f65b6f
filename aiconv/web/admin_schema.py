"""The admin API's models, and its OpenAPI document generated from them.

Invariant: the document served at /admin/openapi.json is built from the pydantic models below
and the operation table `OPERATIONS`, never written by hand, so that a field, a bound or an
endpoint is defined once. The handlers in `aiconv.web.admin` parse their inputs with the same
bounds (the constants here) and the schemathesis run in tests/integration/test_admin.py checks
every response against this document, so a handler that drifts from its model fails there.

The document is OpenAPI 3.1, whose schemas are JSON Schema 2020-12: what pydantic generates
(``anyOf [T, null]`` for a nullable field) goes in unchanged. Errors are the plain shape of
`aiconv.web.errors`: ``{"error": "<message>"}``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from aiconv.jobs.dlq import DEAD_JOB_ID

BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
STATS_DAYS_DEFAULT, STATS_DAYS_MAX = 14, 365
DLQ_LIMIT_DEFAULT, DLQ_LIMIT_MAX = 100, 1000
# A dead job's id: its source stream (stage.shard) and its entry there (aiconv/jobs/dlq.py).
DEAD_JOB_ID_PATTERN = f"^(?:{DEAD_JOB_ID})$"

Int64 = Annotated[int, Field(ge=BIGINT_MIN, le=BIGINT_MAX, json_schema_extra={"format": "int64"})]
# The same range as a parameter's schema (a Telegram user or chat id in a path).
INT64_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "format": "int64",
    "minimum": BIGINT_MIN,
    "maximum": BIGINT_MAX,
}


def _count(description: str) -> Any:
    return Field(ge=0, description=description)


class _Model(BaseModel):
    """A response body. Extra fields are not refused: a newer server may add some."""


# --- responses ----------------------------------------------------------------------------------


class Error(_Model):
    error: str


class MessageTotals(_Model):
    user: int = _count("messages users wrote")
    assistant: int = _count("the bot's replies")
    system: int = _count("system messages")
    total: int = _count("all messages")


class TokenTotals(_Model):
    prompt: int = _count("prompt tokens")
    completion: int = _count("completion tokens")


class Totals(_Model):
    users: int = _count("users")
    blocked_users: int = _count("users blocked by an admin")
    users_blocking_the_bot: int = Field(
        0, ge=0, description="users who blocked the bot and have not written since"
    )
    chats: int = _count("chats")
    messages: MessageTotals
    tokens: TokenTotals


class DayFigures(_Model):
    date: Date
    messages: int = _count("messages")
    active_users: int = _count("users who wrote that day")
    prompt_tokens: int = _count("prompt tokens")
    completion_tokens: int = _count("completion tokens")


class Stats(_Model):
    days: int = Field(ge=1, le=STATS_DAYS_MAX)
    totals: Totals
    per_day: list[DayFigures] = Field(description="one row per UTC day, oldest first, today last")


DeadJobId = Annotated[str, Field(pattern=DEAD_JOB_ID_PATTERN)]


class DeadJob(_Model):
    id: DeadJobId
    stream: str
    error: str
    deliveries: int
    failed_at: float | None = Field(description="Unix time")
    payload: dict[str, Any]


class DeadJobs(_Model):
    count: int = _count("dead jobs in every dead-letter stream")
    items: list[DeadJob]


class Replayed(_Model):
    id: DeadJobId
    stream: str
    replayed_as: str


class Dropped(_Model):
    id: DeadJobId
    dropped: bool


class Blocked(_Model):
    id: Int64
    blocked: bool


class ExportedUser(_Model):
    id: Int64
    username: str | None = None
    first_name: str | None = None
    language_code: str | None = None
    blocked: bool = Field(description="blocked by an admin")
    blocked_bot_at: datetime | None = Field(
        None, description="when the user blocked the bot; null once they write"
    )
    created_at: datetime
    updated_at: datetime


class ExportedChat(_Model):
    id: Int64
    type: str
    title: str | None = None
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ExportedMessage(_Model):
    id: Int64
    chat_id: Int64
    role: Literal["user", "assistant", "system"]
    text: str
    telegram_message_id: Int64 | None = None
    reply_to_message_id: Int64 | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    created_at: datetime


class UserExport(_Model):
    user: ExportedUser
    chats: list[ExportedChat]
    messages: list[ExportedMessage]


class DeletedCounts(_Model):
    users: int = _count("users deleted (1)")
    chats: int = _count("private chats deleted")
    messages: int = _count("messages deleted")


class Deleted(_Model):
    id: Int64
    deleted: DeletedCounts


class AccessGrant(_Model):
    """Someone allowed at run time (`ACCESS_MODE=allowlist`)."""

    kind: Literal["user", "chat"]
    id: Int64
    granted_by: str = Field(description="the admin token's subject")
    created_at: datetime


class AccessFromSettings(_Model):
    users: list[Int64] = Field(description="ALLOWED_USER_IDS")
    chats: list[Int64] = Field(description="ALLOWED_CHAT_IDS")


class AccessList(_Model):
    mode: Literal["open", "allowlist"]
    settings: AccessFromSettings
    grants: list[AccessGrant]


class AccessRevoked(_Model):
    kind: Literal["user", "chat"]
    id: Int64
    revoked: bool


class OpenApiDocument(BaseModel):
    """This document (any JSON object)."""

    model_config = ConfigDict(extra="allow")


# --- parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    where: Literal["path", "query"]
    schema: dict[str, Any]
    description: str | None = None

    def document(self) -> dict[str, Any]:
        parameter: dict[str, Any] = {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "schema": self.schema,
        }
        if self.description:
            parameter["description"] = self.description
        return parameter


USER_ID = Parameter("user_id", "path", INT64_SCHEMA, "the Telegram user id")
ENTRY_ID = Parameter(
    "entry_id",
    "path",
    {"type": "string", "pattern": DEAD_JOB_ID_PATTERN},
    "the dead job's id: `<source>@<entry id>`, e.g. `replies.1@1700000000000-0`",
)
DAYS = Parameter(
    "days",
    "query",
    {"type": "integer", "minimum": 1, "maximum": STATS_DAYS_MAX, "default": STATS_DAYS_DEFAULT},
)
ACCESS_KIND = Parameter(
    "kind", "path", {"type": "string", "enum": ["users", "chats"]}, "a user or a chat"
)
ACCESS_ID = Parameter(
    "entity_id",
    "path",
    INT64_SCHEMA,
    "the Telegram user or chat id (groups are negative)",
)
LIMIT = Parameter(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": DLQ_LIMIT_MAX, "default": DLQ_LIMIT_DEFAULT},
)


# --- operations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post", "delete"]
    path: str  # under /admin
    operation_id: str
    summary: str
    response: type[BaseModel]
    response_description: str
    errors: tuple[int, ...]
    parameters: tuple[Parameter, ...] = ()


OPERATIONS = (
    Operation("get", "/stats", "getStats",
              "Totals, and per-day figures for the last `days` UTC days",
              Stats, "the figures", (400, 401, 503), (DAYS,)),
    Operation("get", "/dlq", "listDeadJobs", "Dead jobs, oldest first",
              DeadJobs, "the dead jobs", (400, 401, 503), (LIMIT,)),
    Operation("post", "/dlq/{entry_id}/replay", "replayDeadJob",
              "Put a dead job back on its stream as a fresh delivery",
              Replayed, "replayed", (400, 401, 403, 404, 409, 503), (ENTRY_ID,)),
    Operation("delete", "/dlq/{entry_id}", "dropDeadJob", "Delete a dead job",
              Dropped, "dropped", (400, 401, 403, 404, 503), (ENTRY_ID,)),
    Operation("post", "/users/{user_id}/block", "blockUser",
              "Block a user: their updates are ignored",
              Blocked, "blocked", (400, 401, 403, 404, 503), (USER_ID,)),
    Operation("post", "/users/{user_id}/unblock", "unblockUser", "Unblock a user",
              Blocked, "unblocked", (400, 401, 403, 404, 503), (USER_ID,)),
    Operation("get", "/users/{user_id}/export", "exportUser",
              "Everything stored about one user, as JSON",
              UserExport, "the data", (400, 401, 404, 503), (USER_ID,)),
    Operation("delete", "/users/{user_id}", "deleteUser",
              "Delete a user, their private chats and every message of theirs",
              Deleted, "deleted", (400, 401, 403, 404, 503), (USER_ID,)),
    Operation("get", "/access", "getAccess",
              "Who may use the bot: the mode, the ids of the settings, the run-time grants",
              AccessList, "the allow-list", (401, 503)),
    Operation("post", "/access/{kind}/{entity_id}", "allowAccess",
              "Allow a user or a chat (idempotent)",
              AccessGrant, "allowed", (400, 401, 403, 404, 503), (ACCESS_KIND, ACCESS_ID)),
    Operation("delete", "/access/{kind}/{entity_id}", "revokeAccess",
              "Revoke a run-time grant (404 when there is none)",
              AccessRevoked, "revoked", (400, 401, 403, 404, 503), (ACCESS_KIND, ACCESS_ID)),
    Operation("get", "/openapi.json", "getOpenApi", "This document",
              OpenApiDocument, "the OpenAPI document", (401,)),
)  # fmt: skip

# Error statuses: (name in components.responses, description, carries WWW-Authenticate).
ERROR_RESPONSES = {
    400: ("BadRequest", "the input is malformed or out of range", False),
    401: ("Unauthorized", "no bearer token, or an invalid or expired one", True),
    403: ("Forbidden", "the token lacks the write scope this call needs", True),
    404: ("NotFound", "no such resource", False),
    409: ("Conflict", "the dead job cannot be replayed, or stored text cannot be decrypted",
          False),
    503: ("Unavailable", "PostgreSQL or Redis is unreachable", False),
}  # fmt: skip

DESCRIPTION = (
    "Operate aiconv: stats, dead letters, users. Every endpoint needs a bearer JWT (HS256, "
    "JWT_SECRET_KEY, audience aiconv-admin; `aiconv admin token --sub NAME --ttl 1h`). GET needs "
    "the read scope, POST and DELETE the write scope (`--scope write`)."
)


class _NoFieldTitles(GenerateJsonSchema):
    """Model names stay as titles; a title per field only repeats the field's name."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The admin API's OpenAPI 3.1 document (built once per process, on first use)."""
    models: list[type[BaseModel]] = [Error, *{op.response: None for op in OPERATIONS}]
    refs, definitions = models_json_schema(
        [(model, "serialization") for model in models],
        ref_template="#/components/schemas/{model}",
        schema_generator=_NoFieldTitles,
    )
    error_ref = refs[(Error, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
        if op.parameters:
            operation["parameters"] = [parameter.document() for parameter in op.parameters]
        operation["responses"] = {
            "200": _json_body(refs[(op.response, "serialization")], op.response_description),
            **{
                str(status): {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
                for status in op.errors
            },
        }
        paths.setdefault(f"/admin{op.path}", {})[op.method] = operation
    responses: dict[str, Any] = {}
    for name, description, challenges in ERROR_RESPONSES.values():
        responses[name] = _json_body(error_ref, description)
        if challenges:
            responses[name]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "aiconv admin API", "version": "1", "description": DESCRIPTION},
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "responses": responses,
            "schemas": definitions.get("$defs", {}),
        },
    }
