# shim for in-flight branches; remove after merge (the helpers live in tests/support/)
from tests.support.ports import free_port
from tests.support.processes import AiconvProcess, base_env
from tests.support.waiting import eventually

__all__ = ["AiconvProcess", "base_env", "eventually", "free_port"]
