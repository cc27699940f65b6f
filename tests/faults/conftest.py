from tests.e2e.conftest import double, launch

__all__ = ["double", "launch"]
