"""Waiting on a condition with a deadline: how tests synchronise with concurrent work.

Tests never sleep a fixed time to let something happen; they poll the condition they need
and fail with a clear timeout if it never holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = ..., interval: float = ...
) -> T: ...


@overload
async def eventually(check: Callable[[], T], timeout: float = ..., interval: float = ...) -> T: ...


async def eventually(
    check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05
) -> Any:
    """Poll `check()` (sync or async) until it returns a truthy value; raise after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition still false after {timeout} s")
        await asyncio.sleep(interval)  # polling the condition, bounded by the deadline
