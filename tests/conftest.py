"""Root conftest: loads the shared fixtures (tests/support/fixtures.py) for every test.

Helpers live in the `tests.support` package; test modules import them from there.
"""

from __future__ import annotations

pytest_plugins = ["tests.support.fixtures"]
