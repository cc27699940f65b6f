"""Admin endpoints of the allow-list (ACCESS_MODE=allowlist), mounted under /admin by admin.py.

    GET    /admin/access                  the mode, the ids from the settings, the run-time grants
    POST   /admin/access/{users|chats}/ID allow a user or a chat (idempotent)
    DELETE /admin/access/{users|chats}/ID revoke a run-time grant (404 when there is none)

Authentication, scopes, audit logging and the mapping of outages to 503 are admin.py's guard's.
A revocation holds from the worker's next message: grants are read from PostgreSQL each time.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import structlog
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aiconv.conversation.policy import ChatPolicy
from aiconv.store.access import AccessStore, Grant, GrantKind
from aiconv.web.admin_schema import BIGINT_MAX, BIGINT_MIN
from aiconv.web.errors import HttpError

log = structlog.get_logger(__name__)

Handler = Callable[[Request, str], Awaitable[Response]]
Guard = Callable[[Handler], Callable[[Request], Awaitable[Response]]]

_ID = re.compile(r"-?[0-9]{1,19}")
_KINDS: dict[str, GrantKind] = {"users": "user", "chats": "chat"}


def _target(request: Request) -> tuple[GrantKind, int]:
    """The (kind, id) named by the path; HttpError (web/errors.py) when there is none."""
    kind = _KINDS.get(str(request.path_params["kind"]))
    if kind is None:
        raise HttpError(404, "not found")
    text = str(request.path_params["entity_id"])
    if not _ID.fullmatch(text) or not BIGINT_MIN <= int(text) <= BIGINT_MAX:
        raise HttpError(400, "the id must be a 64-bit integer")
    return kind, int(text)


def _grant(grant: Grant) -> dict[str, object]:
    return {
        "kind": grant.kind,
        "id": grant.id,
        "granted_by": grant.granted_by,
        "created_at": grant.created_at.isoformat(),
    }


class AccessAdmin:
    def __init__(self, store: AccessStore, policy: ChatPolicy) -> None:
        self.store = store
        self.policy = policy

    async def show(self, request: Request, subject: str) -> Response:
        return JSONResponse(
            {
                "mode": self.policy.access_mode,
                "settings": {
                    "users": sorted(self.policy.allowed_user_ids),
                    "chats": sorted(self.policy.allowed_chat_ids),
                },
                "grants": [_grant(g) for g in await self.store.grants()],
            }
        )

    async def allow(self, request: Request, subject: str) -> Response:
        target = _target(request)
        grant = await self.store.grant(*target, granted_by=subject)
        log.info("admin: access granted", sub=subject, kind=target[0], id=target[1])
        return JSONResponse(_grant(grant))

    async def revoke(self, request: Request, subject: str) -> Response:
        target = _target(request)
        if not await self.store.revoke(*target):
            raise HttpError(404, f"no grant for {target[0]} {target[1]}")
        log.info("admin: access revoked", sub=subject, kind=target[0], id=target[1])
        return JSONResponse({"kind": target[0], "id": target[1], "revoked": True})


def access_routes(guard: Guard, pool: AsyncConnectionPool, policy: ChatPolicy) -> list[BaseRoute]:
    api = AccessAdmin(AccessStore(pool), policy)
    return [
        Route("/access", guard(api.show), methods=["GET"]),
        Route("/access/{kind}/{entity_id}", guard(api.allow), methods=["POST"]),
        Route("/access/{kind}/{entity_id}", guard(api.revoke), methods=["DELETE"]),
    ]
