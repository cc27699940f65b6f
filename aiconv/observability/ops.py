"""The probe and metrics endpoints every mode serves on METRICS_PORT."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import prometheus_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aiconv.observability.metrics import DEPENDENCY_UP, exposition

Check = Callable[[], Awaitable[object]]
CHECK_TIMEOUT_SECONDS = 2.0


async def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, str]]:
    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
            return "ok"
        except Exception as error:  # a probe reports, it never raises
            return f"failing: {type(error).__name__}"

    names = list(checks)
    results = await asyncio.gather(*(one(checks[name]) for name in names))
    status = dict(zip(names, results, strict=True))
    for name in ("postgres", "redis"):
        if name in status:
            DEPENDENCY_UP.labels(name).set(1 if status[name] == "ok" else 0)
    return all(r == "ok" for r in results), status


def health_routes(checks: Mapping[str, Check]) -> list[Route]:
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        ok, status = await run_checks(checks)
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": status},
            status_code=200 if ok else 503,
        )

    return [Route("/health", health), Route("/ready", ready)]


def ops_app(checks: Mapping[str, Check], *, metrics: bool = True) -> Starlette:
    """/health, /ready and, unless METRICS_ENABLED=false (`metrics`), /metrics (else a 404)."""

    async def exposed(_: Request) -> Response:
        return Response(exposition(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    routes = health_routes(checks)
    if metrics:
        routes.append(Route("/metrics", exposed))
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False  # no redirect built from the Host header
    return app
