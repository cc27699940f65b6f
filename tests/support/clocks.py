"""Process clocks that disagree, as on several hosts, simulated inside one test process.

`time.time` is patched to add a skew that belongs to the running task (a context variable):
tasks started "on" a skewed clock see that skew, all others the real time. Code whose shared
state must use only Redis's clock can be checked with workers whose clocks are off.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from unittest import mock

T = TypeVar("T")

_SKEW: contextvars.ContextVar[float] = contextvars.ContextVar("process_clock_skew", default=0.0)


@contextmanager
def process_clocks() -> Iterator[None]:
    """Make `time.time()` honour the skew of the task that calls it (see on_clock)."""
    real = time.time
    with mock.patch("time.time", lambda: real() + _SKEW.get()):
        yield


def on_clock(skew: float, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run coro as a task whose process clock is `skew` seconds off, like another host's."""
    context = contextvars.copy_context()
    context.run(_SKEW.set, skew)
    return asyncio.create_task(coro, context=context)
