"""Shared helpers for the deployment validations.

Each validation runs a real tool (nginx, openssl, promtool, kubectl, hadolint, just). When a
tool is missing the test is skipped locally, with the command that installs it, and FAILS in CI
(CI=true), so a green CI run means every validation really ran. `.ci/deploy-tools.sh` installs
them all.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
KUSTOMIZE_DIR = ROOT / "k8s-kustomize"
NGINX_DIR = ROOT / "nginx"
ALERTS_FILE = COMPOSE_DIR / "prometheus" / "alerts.yml"

INSTALL_HINT = "run `sudo bash .ci/deploy-tools.sh` (or `just deploy-tools`)"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    """Skip locally, fail in CI: a validation that cannot run must not pass silently there."""
    message = f"{what} is not installed; {INSTALL_HINT}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_tool(name: str, *extra_dirs: str) -> str:
    """An executable's path: next to this Python first (the venv's pip-installed tools), then
    on PATH, then in extra_dirs (such as /usr/sbin for nginx)."""
    search = os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", ""), *extra_dirs]
    )
    found = shutil.which(name, path=search)
    if found is None:
        missing(name)
    assert found is not None
    return found


def require_module(name: str, package: str) -> None:
    """Whether a module is installed, without importing it (locust's import monkey-patches)."""
    if importlib.util.find_spec(name) is None:
        missing(f"Python package {package}")


@contextmanager
def server_process(
    argv: list[str],
    answers: Callable[[], bool],
    *,
    within: float,
    env: dict[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server (`argv`) for the block, once `answers()` says it serves.

    It fails at once, with the server's stderr, if the server exits before answering, and after
    `within` seconds if it never answers. When the block ends the server is sent `stop_signal`
    and, if it is still running 10 s later, killed: no server outlives its test.
    """
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    name = Path(argv[0]).name
    try:
        deadline = time.monotonic() + within
        while not answers():
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(f"{name} exited: {process.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not answer within {within} s")
            time.sleep(0.05)  # polling a condition, with a deadline
        yield process
    finally:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Compose's ${VAR}, ${VAR:-default}, ${VAR?error} (shared by the compose smoke and make-env tests).
VAR_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name)
        if op and op.startswith(":") and not got:
            got = None
        if got is None:
            if op and op.endswith("?"):
                raise AssertionError(f"{name} is required and not in .env.example")
            return arg or ""
        return got

    return VAR_RE.sub(one, value)
