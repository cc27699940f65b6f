"""The `aiconv` command: one entry point, one mode per sub-command.

Importing this module imports no mode: `main` resolves the one it runs (aiconv/modes/), so a
process loads only what its mode needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiconv import __version__

if TYPE_CHECKING:
    from aiconv.config import Settings

DESCRIPTIONS = {
    "web": "Serve the Telegram webhook, /health and /ready (Starlette on granian, PORT).",
    "worker": "Run the conversation logic and delivery at a human pace; polls Telegram when "
    "TELEGRAM_WEBHOOK_URL is unset.",
    "ml": "Load the GGUF model (MODEL_PATH) and generate replies with llama.cpp.",
    "all": "Run web, worker and ml in one process: development and the smallest installs.",
    "migrate": "Apply the PostgreSQL migrations (idempotent) and exit.",
    "demo": "Chat with aiconv in this terminal: all modes plus a local Telegram Bot API double, "
    "no bot token needed. Uses DATABASE_URL/REDIS_URL when set, else PostgreSQL and Redis on "
    "their default local ports, else (or with --embedded) an embedded PostgreSQL and Redis "
    "kept in AICONV_DATA_DIR (needs pip install 'aiconv[embedded]').",
}


DLQ_HELP = "Inspect the dead letters of every job stream: list, replay ID, drop ID."
ADMIN_HELP = "Admin API helpers: token mints a bearer token (needs JWT_SECRET_KEY)."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiconv",
        description="aiconv: a self-hosted AI conversation service for Telegram. "
        "Settings come from environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"aiconv {__version__}")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    for name, text in DESCRIPTIONS.items():
        mode = modes.add_parser(name, help=text, description=text)
        if name == "demo":
            mode.add_argument(
                "--embedded",
                action="store_true",
                help="use the embedded PostgreSQL and Redis even when others are configured or "
                "running; their data stays in AICONV_DATA_DIR (default: the user's data "
                "directory, /var/lib/aiconv for root) for the next run",
            )
    dlq = modes.add_parser("dlq", help=DLQ_HELP, description=DLQ_HELP)
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print dead jobs as JSON lines, oldest first")
    listing.add_argument("--limit", type=int, default=100)
    for action, text in (("replay", "put a dead job back on its stream"), ("drop", "delete it")):
        actions.add_parser(action, help=text).add_argument(
            "id", help="the dead job's id as `list` prints it, e.g. replies.1@1700000000000-0"
        )
    admin = modes.add_parser("admin", help=ADMIN_HELP, description=ADMIN_HELP)
    admin_actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    token = admin_actions.add_parser("token", help="print a signed token for the admin API")
    token.add_argument(
        "--sub", required=True, type=_subject, help="who the token is for (logged with each call)"
    )
    token.add_argument("--ttl", type=_ttl, default="1h", help="lifetime: 90s, 30m, 1h (≤ 24h)")
    token.add_argument(
        "--scope",
        choices=("read", "write"),
        default="read",
        help="read: GET calls only (default); write: every call",
    )
    return parser


def _subject(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def _ttl(text: str) -> int:
    from aiconv.web.auth import parse_ttl

    try:
        return parse_ttl(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "web":
        # Before prometheus_client is first imported (the settings' modules import it), so this
        # process's metrics share files with the granian workers'. See web/multiproc.py.
        from aiconv.web.multiproc import share_metrics_between_workers

        share_metrics_between_workers()
    from aiconv.config import ConfigError, Settings
    from aiconv.observability.loops import LoopFailed

    try:
        settings = Settings.from_env()
        if args.mode == "dlq":
            return asyncio.run(_dlq(settings, args))
        if args.mode == "admin":
            return _admin_token(settings, args)
        return _run(args.mode, settings, args)
    except ConfigError as error:
        print(f"aiconv: configuration error: {error}", file=sys.stderr)
        return 2
    except LoopFailed as failure:
        if isinstance(failure.__cause__, ConfigError):  # e.g. a port taken after the probe
            print(f"aiconv: configuration error: {failure.__cause__}", file=sys.stderr)
            return 2
        return 1  # the failure is logged, with its traceback, where it happened
    except KeyboardInterrupt:
        return 130


def _run(mode: str, settings: Settings, args: argparse.Namespace) -> int:
    from aiconv.modes import resolve
    from aiconv.observability.logging import configure_logging
    from aiconv.observability.sentry import init_sentry

    # The demo's terminal is a chat: only warnings interrupt it unless LOG_LEVEL asks for more.
    quiet = mode == "demo" and "LOG_LEVEL" not in os.environ
    configure_logging("warning" if quiet else settings.log_level, settings.log_format)
    init_sentry(settings)
    return resolve(mode)(settings, args)


def _admin_token(settings: Settings, args: argparse.Namespace) -> int:
    from aiconv.config import ConfigError
    from aiconv.web.auth import mint

    if not settings.jwt_secret_key:
        raise ConfigError("JWT_SECRET_KEY", "is not set; the admin API is disabled without it")
    scopes = ("read", "write") if args.scope == "write" else ("read",)
    print(mint(settings.jwt_secret_key, args.sub, args.ttl, scopes=scopes))
    return 0


async def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from aiconv.jobs.dlq import DeadLetters
    from aiconv.resources import open_resources

    async with open_resources(settings, database=False, telegram=False) as resources:
        dead = DeadLetters(resources.redis, resources.keys, resources.queue.codec)
        if args.action == "list":
            for job in await dead.list(args.limit):
                print(json.dumps(job.as_dict()))
            return 0
        if args.action == "replay":
            new_id = await dead.replay(args.id)
            print(f"replayed {args.id} as {new_id}" if new_id else f"no dead job {args.id}")
            return 0 if new_id else 1
        found = await dead.drop(args.id)
        print(f"dropped {args.id}" if found else f"no dead job {args.id}")
        return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
