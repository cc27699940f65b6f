"""Root conftest: loads the shared fixtures (tests/support/fixtures.py) for every test.

Helpers live in the `tests.support` package; test modules import them from there.
"""

from __future__ import annotations

# shim for in-flight branches; remove after merge
from tests.support.services import (  # noqa: F401
    ADMIN_DATABASE_URL,
    REDIS_URL,
    RUN_ID,
    delete_prefixed,
)

pytest_plugins = ["tests.support.fixtures"]
