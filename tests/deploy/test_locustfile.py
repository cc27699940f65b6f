"""tests/load/locustfile.py drives valid webhook traffic: a short headless locust run against a
recording HTTP server on loopback (never a remote host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.http_stub import QuietHandler, serving

from ._support import ROOT, require_module

SECRET = "load-test-secret"


@pytest.fixture
def recorder() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.read_body()
            seen.append(
                {
                    "path": self.path,
                    "secret": self.headers.get("X-Telegram-Bot-Api-Secret-Token"),
                    "body": json.loads(body),
                }
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Handler) as port:
        yield port, seen


def test_locustfile_posts_valid_updates_with_the_secret(
    recorder: tuple[int, list[dict[str, Any]]],
) -> None:
    require_module("locust", "locust")
    port, seen = recorder
    env = {**os.environ, "TELEGRAM_WEBHOOK_SECRET": SECRET}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "tests" / "load" / "locustfile.py"),
            "--headless",
            "--host",
            f"http://127.0.0.1:{port}",
            "--users",
            "3",
            "--spawn-rate",
            "3",
            "--run-time",
            "2s",
            "--only-summary",
            "--stop-timeout",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(seen) >= 3  # every user's /start at least
    update_ids = [s["body"]["update_id"] for s in seen]
    assert len(set(update_ids)) == len(update_ids)
    for s in seen:
        assert s["path"] == "/webhook" and s["secret"] == SECRET
        message = s["body"]["message"]
        assert message["chat"]["type"] == "private" and message["text"]
        assert message["from"]["id"] == message["chat"]["id"]
