"""Request bodies: read with a bound on size, parsed as JSON with a bound on nesting.

The one body reader of the web boundary (the webhook and /v1 both use `read_json`).

Size: a body over `max_bytes` is answered 413 with `Connection: close`. Up to DRAIN_FACTOR times
`max_bytes` of it (for at most DRAIN_SECONDS) are read and dropped first: a client still writing
its body when the server answered and closed would otherwise see the connection reset instead
of the 413, depending on timing. Past those bounds the answer comes at once and the rest is never
read, so the connection cannot carry another request: hence `Connection: close`.

Nesting: `json.loads` recurses once per level: a body of 10,000 ``[`` raises RecursionError,
which is not a ValueError, and a body just under the interpreter's limit parses but breaks the
next recursive step (``json.dumps`` on enqueue, a validator). No request aiconv serves nests
deeper than a few levels, so a body deeper than `max_depth` is refused as malformed, like any
other invalid JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.requests import Request

from aiconv.web.errors import HttpError

MAX_DEPTH = 32
DRAIN_FACTOR = 8
DRAIN_SECONDS = 2.0


class BadJson(HttpError, ValueError):
    """The body is not JSON, or nests deeper than allowed; the text says which (a 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message, code="invalid_json")


class BodyTooLarge(HttpError):
    """The body is over the endpoint's limit (a 413 that closes the connection)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413, f"body over {max_bytes} bytes", {"Connection": "close"}, code="request_too_large"
        )


def loads(body: bytes | bytearray | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a request body; BadJson when it is not JSON or nests deeper than `max_depth`."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadJson(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadJson(f"not valid JSON: {str(error)[:160]}") from None
    if depth_exceeds(value, max_depth):
        raise BadJson(f"JSON nested deeper than {max_depth} levels")
    return value


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether `value` nests arrays/objects deeper than `max_depth` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, or BodyTooLarge once it is over `max_bytes` (after the bounded drain)."""
    declared = request.headers.get("content-length")
    over = declared is not None and declared.isdigit() and int(declared) > max_bytes
    if declared is not None and declared.isdigit() and not over:
        # The common case, on the webhook's hot path: the server frames the body by its declared
        # length, so it cannot grow past it, and no drain deadline is needed.
        return await request.body()
    body = bytearray()
    seen = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(None) as draining:
            if over:
                draining.reschedule(asyncio.get_running_loop().time() + DRAIN_SECONDS)
            async for chunk in request.stream():
                seen += len(chunk)
                if seen <= max_bytes:
                    body += chunk
                elif not over:
                    over = True
                    draining.reschedule(asyncio.get_running_loop().time() + DRAIN_SECONDS)
                if seen > DRAIN_FACTOR * max_bytes:
                    break
    if over:
        raise BodyTooLarge(max_bytes)
    return bytes(body)


async def read_json(request: Request, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The body parsed: BodyTooLarge, or BadJson, or the value."""
    return loads(await read_body(request, max_bytes), max_depth)
