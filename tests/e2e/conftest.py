# shim for in-flight branches; remove after merge (the fixtures live in tests/support/fixtures.py)
from tests.support.processes import Launcher

__all__ = ["Launcher"]
