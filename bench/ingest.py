"""bench/ingest: `aiconv web`'s /webhook against a bare Starlette JSON endpoint, both on granian.

    python -m bench.ingest                        # 3 rounds of 10 s each, 32 connections
    python -m bench.ingest --rounds 5 --seconds 20 --connections 64

wrk drives both with the same body, a realistic Telegram update whose update_id is unique per
request (a repeated id would be answered from the deduplication path, which is cheaper). The
baseline is what granian + Starlette cost with no work at all: parse the JSON, answer
{"ok": true}. Rounds alternate between the two, so a burst of other load hits both alike; the
figures are the medians. aiconv runs as in production (WEB_WORKERS=1 unless --workers, JSON
logs at info), with a Redis key prefix of its own that is deleted afterwards. Targets of the
issue "1000 users on one box": throughput ≥ 0.5 of bare, p99 ≤ 2× bare.

Needs `wrk` on PATH (Debian/Ubuntu: apt-get install wrk); without it the bench says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import Row, median, print_table

REDIS_URL = os.environ.get("AICONV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("AICONV_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "ingest-bench-secret-0123456789abcdef"

# Each wrk thread numbers its requests from its own offset: ids never repeat across threads.
WRK_SCRIPT = r"""
local counter = 0
local offset = 0
local threads = {}
function setup(thread)
  thread:set("offset", #threads * 100000000)
  table.insert(threads, thread)
end
function init(args)
  offset = tonumber(offset) or 0
end
request = function()
  counter = counter + 1
  local id = 1000000000 + offset + counter
  local chat = 5000000 + (counter % 1000)
  local body = string.format(
    '{"update_id":%d,"message":{"message_id":%d,"from":{"id":%d,"is_bot":false,' ..
    '"first_name":"Ann","username":"ann","language_code":"en"},"chat":{"id":%d,' ..
    '"first_name":"Ann","username":"ann","type":"private"},"date":1764800000,' ..
    '"text":"Hello there, how are you doing today?"}}', id, counter, chat, chat)
  return wrk.format("POST", "/webhook", {
    ["Content-Type"] = "application/json",
    ["X-Telegram-Bot-Api-Secret-Token"] = "%SECRET%",
  }, body)
end
"""

BARE_APP = """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def webhook(request: Request) -> JSONResponse:
    await request.json()
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/webhook", webhook, methods=["POST"])])
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wrk(url: str, script: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(requests/s, p99 latency in ms) of one wrk run; non-2xx answers count as failure."""
    run = subprocess.run(
        ["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{args.seconds}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = run.stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers from {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited:\n{tail(log)}")
            try:
                if (await http.get(url)).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)  # polling readiness, bounded by the deadline
    raise TimeoutError(f"{url} not ready:\n{tail(log)}")


def aiconv_env(args: argparse.Namespace, port: int, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "REDIS_"))}
    env.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
        TELEGRAM_BOT_TOKEN="123456:INGEST-BENCH",
        # Telegram is never reached: the webhook is "registered" against an unroutable API and
        # the registration keeps retrying in the background, off the measured path.
        TELEGRAM_API_URL="http://127.0.0.1:9",
        TELEGRAM_WEBHOOK_URL=f"http://127.0.0.1:{port}/webhook",
        TELEGRAM_WEBHOOK_SECRET=SECRET,
        ENVIRONMENT="dev",
        LOG_FORMAT="json",
        LOG_LEVEL=args.log_level,
        PORT=str(port),
        METRICS_PORT=str(free_port()),
        WEB_WORKERS=str(args.workers),
    )
    return env


async def drop_prefix(prefix: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        batch = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if batch:
            await redis.delete(*batch)
    finally:
        await redis.aclose()


async def run(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        print("bench/ingest: wrk not found (apt-get install wrk); skipped")
        return
    work = Path(tempfile.mkdtemp(prefix="aiconv-ingest-"))
    script = work / "webhook.lua"
    script.write_text(WRK_SCRIPT.replace("%SECRET%", SECRET))
    (work / "bare_app.py").write_text(BARE_APP)
    prefix = f"aiconv-ingest-{uuid.uuid4().hex[:8]}:"
    aiconv_port, bare_port = free_port(), free_port()
    aiconv_log, bare_log = work / "aiconv.log", work / "bare.log"
    commands = {
        "aiconv": (
            [sys.executable, "-m", "aiconv.cli", "web"],
            aiconv_env(args, aiconv_port, prefix),
            aiconv_log,
        ),
        "bare": (
            [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
             "--port", str(bare_port), "--workers", str(args.workers), "--log-level", "warning",
             "--no-ws", "bare_app:app"],
            {**os.environ, "PYTHONPATH": str(work)},
            bare_log,
        ),
    }  # fmt: skip
    processes = {
        name: subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)  # noqa: ASYNC220
        for name, (command, env, log) in commands.items()
    }
    try:
        await wait_ready(f"http://127.0.0.1:{aiconv_port}/health", processes["aiconv"], aiconv_log)
        await wait_ready(f"http://127.0.0.1:{bare_port}/webhook", processes["bare"], bare_log)
        urls = {
            "aiconv": f"http://127.0.0.1:{aiconv_port}",
            "bare": f"http://127.0.0.1:{bare_port}",
        }
        results: dict[str, list[tuple[float, float]]] = {"aiconv": [], "bare": []}
        for round_ in range(args.rounds):
            for name in ("aiconv", "bare") if round_ % 2 == 0 else ("bare", "aiconv"):
                results[name].append(wrk(urls[name], script, args))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{n} {r[-1][0]:.0f} req/s p99 {r[-1][1]:.1f} ms" for n, r in results.items()
            ), flush=True)  # fmt: skip
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        await drop_prefix(prefix)
    rps = {name: median([r for r, _ in rows]) for name, rows in results.items()}
    p99 = {name: median([p for _, p in rows]) for name, rows in results.items()}
    print_table(
        f"webhook ingest: wrk, {args.connections} connections, unique update ids, "
        f"{args.rounds} × {args.seconds} s, WEB_WORKERS={args.workers}, LOG_LEVEL={args.log_level}",
        [
            Row("requests/s", rps["aiconv"], rps["bare"], "req/s", baseline_name="bare Starlette"),
            Row(
                "p99 latency",
                p99["aiconv"],
                p99["bare"],
                "ms",
                higher_is_better=False,
                baseline_name="bare Starlette",
            ),
        ],
        note="targets: requests/s ratio ≥ 0.50; p99 ratio ≥ 0.50 (aiconv's p99 ≤ 2× bare)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="WEB_WORKERS for both servers")
    parser.add_argument("--log-level", default="info", help="aiconv's LOG_LEVEL")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
