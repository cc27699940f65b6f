"""Every error the web boundary answers, raised as one exception type and rendered in one place.

A handler raises `HttpError` (or its OpenAI flavour, `OpenAiError`); the Starlette exception
handlers in `EXCEPTION_HANDLERS` turn it into the response. No endpoint builds an error response
itself, so every error of a surface has the same shape, and a new endpoint cannot invent another.

Two JSON shapes, chosen by the surface, not by the endpoint:

- ``{"error": "<message>"}``: the admin API, the webhook, health, unknown paths.
- ``{"error": {"message", "type", "param", "code"}}`` under /v1: the OpenAI-compatible API keeps
  OpenAI's error body, which OpenAI clients parse (``type`` and ``code`` become their exception
  classes). It is the same idea nested: ``error.message`` is what the plain shape calls
  ``error``, and ``code``/``type`` are machine-readable details the plain shape leaves out.

Starlette's own errors (an unknown path, a wrong method) come through `HTTPException` and get
the shape of the surface they were aimed at. A mounted sub-application needs the handlers too
(`Starlette(exception_handlers=EXCEPTION_HANDLERS)`): its own error middleware answers first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

OPENAI_PREFIX = "/v1"


class HttpError(Exception):
    """An answer with an error status, its message meant for the caller (never a secret).

    `code` is a machine-readable name for it; only the OpenAI shape shows it."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": self.message}

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)


class OpenAiError(HttpError):
    """An error of the OpenAI-compatible API, in OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers, code)
        self.code: str = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": None,
                          "code": self.code}}  # fmt: skip

    @classmethod
    def from_http(cls, error: HttpError) -> OpenAiError:
        if isinstance(error, OpenAiError):
            return error
        kind = "invalid_request_error" if error.status < 500 else "server_error"
        code = error.code or _OPENAI_CODES.get(error.status, "error")
        return cls(error.status, error.message, code, kind, error.headers)


_OPENAI_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                 413: "request_too_large", 503: "unavailable"}  # fmt: skip


def _for_surface(request: Request, error: HttpError) -> HttpError:
    path = request.scope.get("path", "")  # the whole path, also inside a Mount
    if path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/"):
        return OpenAiError.from_http(error)
    return error


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return _for_surface(request, exc).response()


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = HttpError(exc.status_code, str(exc.detail), exc.headers)
    return _for_surface(request, error).response()


EXCEPTION_HANDLERS: Mapping[Any, Any] = {HttpError: _http_error, HTTPException: _starlette_error}
