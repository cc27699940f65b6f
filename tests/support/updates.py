"""Telegram update payloads with one field changed, for tests of bad and odd input."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def replaced(update: Mapping[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    """A deep copy of `update` with the field at `path` (keys, outermost first) set to `value`."""
    data: dict[str, Any] = copy.deepcopy(dict(update))
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data
