"""The `aiconv` command: one entry point, one mode per sub-command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from aiconv import __version__
from aiconv.config import ConfigError, Settings

DESCRIPTIONS = {
    "web": "Serve the Telegram webhook, /health and /ready (Starlette on granian, PORT).",
    "worker": "Run the conversation logic and delivery at a human pace; polls Telegram when "
    "TELEGRAM_WEBHOOK_URL is unset.",
    "ml": "Load the GGUF model (MODEL_PATH) and generate replies with llama.cpp.",
    "all": "Run web, worker and ml in one process: development and the smallest installs.",
    "migrate": "Apply the PostgreSQL migrations (idempotent) and exit.",
    "demo": "Chat with aiconv in this terminal: all modes plus a local Telegram Bot API double, "
    "no bot token needed (needs local PostgreSQL and Redis).",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiconv",
        description="aiconv: a self-hosted AI conversation service for Telegram. "
        "Settings come from environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"aiconv {__version__}")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    for name, text in DESCRIPTIONS.items():
        modes.add_parser(name, help=text, description=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return _run(args.mode, settings)
    except ConfigError as error:
        print(f"aiconv: configuration error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(mode: str, settings: Settings) -> int:
    from aiconv.observability.logging import configure_logging

    # The demo's terminal is a chat: only warnings interrupt it unless LOG_LEVEL asks for more.
    quiet = mode == "demo" and "LOG_LEVEL" not in os.environ
    configure_logging("warning" if quiet else settings.log_level, settings.log_format)
    if mode == "migrate":
        from aiconv.store.migrate import apply_migrations

        applied = asyncio.run(apply_migrations(settings.database_url))
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (up to date)"
        print(f"migrations applied: {names}")
        return 0
    if mode == "demo":
        from aiconv.demo import run_demo

        asyncio.run(run_demo(settings))
        return 0
    if mode == "web":
        from aiconv.web.standalone import run_web

        run_web(settings)
        return 0
    if mode in ("worker", "all"):
        settings.require_bot_token()
    from aiconv.runtime import run_modes, stop_on_signals

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await run_modes(settings, ("web", "worker", "ml") if mode == "all" else (mode,), stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
