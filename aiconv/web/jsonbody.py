"""JSON request bodies, parsed with a bound on nesting.

`json.loads` recurses once per level of nesting: a body of 10,000 ``[`` raises RecursionError,
which is not a ValueError, and a body just under the interpreter's limit parses but breaks the
next recursive step (``json.dumps`` on enqueue, a validator). No request aiconv serves nests
deeper than a few levels, so a body deeper than `max_depth` is refused as malformed, like any
other invalid JSON.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


class BadJson(ValueError):
    """The body is not JSON, or nests deeper than allowed; the text says which."""


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
