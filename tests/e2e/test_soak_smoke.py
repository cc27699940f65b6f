"""The soak bench, small: 50 users through real web, worker and ml processes.

It asserts what must hold at any size — nothing lost, nothing sent twice, every figure of the
report present — and never a time: the figures themselves are the bench's, not the test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "users", "webhook_ack_p50_s", "webhook_ack_p99_s", "webhook_non_2xx", "first_typing_p50_s",
    "first_typing_p95_s", "reply_latency_p50_s", "reply_latency_p95_s", "reply_latency_max_s",
    "lost", "duplicated", "busy_notices", "bot_api_calls", "bot_api_calls_per_s_max_1s",
    "web_worker_cpu_ms_per_message",
}  # fmt: skip


def test_fifty_users_are_each_answered_once(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [
        sys.executable, "-m", "bench.soak", "--users", "50", "--rate", "25", "--max-tokens", "4",
        "--threads", "1", "--fast-pacing", "--no-baseline", "--settle", "3", "--timeout", "400",
        "--json", str(out),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert figures.keys() >= FIGURES
    assert figures["users"] == 50
    assert figures["webhook_non_2xx"] == 0
    assert figures["lost"] == 0, run.stdout[-3000:]
    assert figures["duplicated"] == 0, run.stdout[-3000:]
    assert {"web", "worker", "ml"} <= report["processes"].keys()
    assert all(p["peak_rss_mb"] > 0 for p in report["processes"].values())
    assert report["calls_per_method"]["sendMessage"]["calls"] >= 50
