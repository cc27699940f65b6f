"""`aiconv demo`: every mode plus the Bot API double in one process, and a chat in the terminal.

Servers: DATABASE_URL / REDIS_URL (or their DB_* / REDIS_* parts) when set; else PostgreSQL and
Redis on their default local ports when something answers there; else, or with `--embedded`, an
embedded PostgreSQL and Redis in AICONV_DATA_DIR (aiconv/embedded.py). One line says which.

Telegram ids: the double is new on every run, but the chat's history, the idempotency keys of its
stored messages (`in:<chat>:<message>`, `reply:<turn>:<part>`, where a turn's id holds the newest
message id) and Redis' `done:update:<id>` outlive it. Ids that repeat across runs would make a new
message a "duplicate" of an old one and its reply "already sent". So the double starts above every
id stored for the demo chat and above the clock (milliseconds since the epoch): ids never repeat,
even when the database or Redis was emptied in between.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import psycopg

from aiconv.config import Settings
from aiconv.modes.process import IN_PROCESS_MODES, run_modes, stop_on_signals
from aiconv.resources import Resources
from aiconv.store.migrate import apply_migrations, ensure_database
from aiconv.testing.botapi import BotApiDouble

DEMO_CHAT_ID = 1000
DEMO_USER_ID = 1000
DATABASE_VARIABLES = ("DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD")
REDIS_VARIABLES = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")


def say(text: str) -> None:
    """What the demo is doing, on stderr: the chat keeps stdout."""
    print(f"aiconv demo: {text}", file=sys.stderr, flush=True)


def main(settings: Settings, args: argparse.Namespace) -> int:
    return run(settings, embedded=args.embedded)


def run(settings: Settings, *, embedded: bool = False, env: Mapping[str, str] | None = None) -> int:
    """Pick the servers (starting embedded ones if needed), chat, stop what was started."""
    from aiconv.embedded import EmbeddedError

    env = os.environ if env is None else env
    # SIGTERM while servers start or stop ends the demo like Ctrl-C: the servers are stopped.
    # While it chats, both signals set its `stop` instead (run_demo).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as servers:
            settings = choose_servers(settings, embedded, env, servers)
            asyncio.run(run_demo(settings))
    except EmbeddedError as error:
        print(f"aiconv demo: {error}", file=sys.stderr)
        return 2
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def choose_servers(
    settings: Settings, embedded: bool, env: Mapping[str, str], stack: contextlib.ExitStack
) -> Settings:
    """The settings with the servers this demo uses; embedded ones are started on `stack`."""
    from aiconv import embedded as servers

    database_set = any(name in env for name in DATABASE_VARIABLES)
    # A configured cluster is used as it is (only --embedded replaces it).
    redis_set = settings.redis_cluster_enabled or any(name in env for name in REDIS_VARIABLES)
    embed_database = embedded or (not database_set and not _answers(settings.database_url, 5432))
    embed_redis = embedded or (not redis_set and not _answers(settings.redis_url, 6379))
    if not (embed_database or embed_redis):
        _say_servers(settings)
        return settings
    missing = [n for n, e in (("PostgreSQL", embed_database), ("Redis", embed_redis)) if e]
    if not servers.installed():
        if embedded:
            raise servers.EmbeddedError(
                f"--embedded needs the embedded servers: {servers.EXTRA_HINT}"
            )
        raise servers.EmbeddedError(
            f"no {' and no '.join(missing)} answers on the default port and none is configured: "
            f"install the embedded servers ({servers.EXTRA_HINT}), or start them, or set "
            "DATABASE_URL and REDIS_URL"
        )
    data_dir = servers.default_data_dir()
    stack.enter_context(servers.data_dir_lock(data_dir))
    first = not (data_dir / "postgres" / "PG_VERSION").exists()
    say(
        f"starting embedded {' and '.join(missing)} in {data_dir}"
        + (" (first run: creating the database)" if first and embed_database else "")
    )
    started = time.monotonic()
    if embed_database:
        settings = dataclasses.replace(
            settings, database_url=stack.enter_context(servers.embedded_postgres(data_dir))
        )
    if embed_redis:
        # The embedded server is one Redis, whatever cluster the settings named (--embedded).
        settings = dataclasses.replace(
            settings,
            redis_url=stack.enter_context(servers.embedded_redis(data_dir)),
            redis_cluster_enabled=False,
        )
    _say_servers(settings, f" (started in {time.monotonic() - started:.1f} s)")
    return settings


def _say_servers(settings: Settings, suffix: str = "") -> None:
    database, redis = _where(settings.database_url), _where(settings.redis_url)
    if settings.redis_cluster_enabled:
        redis = f"Cluster at {', '.join(settings.redis_cluster_nodes)}"
    say(f"using PostgreSQL {database} and Redis {redis}{suffix}")


def _answers(url: str, default_port: int) -> bool:
    """Whether something listens where the URL points (TCP only; a socket path is taken as is)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or not parts.hostname:
        return True
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _where(url: str) -> str:
    """A URL without its password, for the line that names the servers."""
    if url.startswith("unix://"):
        return f"embedded ({url.removeprefix('unix://')})"
    info = psycopg.conninfo.conninfo_to_dict(url) if url.startswith("postgres") else {}
    if info and str(info.get("host", "")).startswith("/"):
        return f"embedded ({info['host']})"
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"at {host}:{parts.port}" if parts.port else f"at {host}"


async def run_demo(settings: Settings) -> None:
    say("preparing the database")
    await ensure_database(settings.database_url)
    await apply_migrations(settings.database_url)
    first_update_id, first_message_id, kept = await _stored_ids(settings.database_url)
    if kept:
        say(f"{kept} messages of earlier runs are kept as history (/reset forgets them)")
    async with BotApiDouble(
        first_update_id=first_update_id, first_message_id=first_message_id
    ) as double:
        demo_settings = dataclasses.replace(
            settings,
            telegram_api_url=double.url,
            telegram_bot_token=double.token,
            telegram_webhook_url=None,  # the demo polls, so no public URL is needed
        )
        stop = asyncio.Event()
        stop_on_signals(stop)  # Ctrl-C: every loop drains, then the servers stop
        started = time.monotonic()

        async def chat(_: Resources) -> None:
            say(f"ready in {time.monotonic() - started:.1f} s")
            talk = asyncio.ensure_future(_chat(double, _Lines()))
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({talk, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                talk.cancel()
                stopped.cancel()
                stop.set()

        model = settings.model_path or "the bundled SmolLM2-135M-Instruct"
        say(f"loading the model ({model}) and starting web, worker and ml")
        await run_modes(demo_settings, IN_PROCESS_MODES, stop=stop, on_ready=chat)


async def _stored_ids(database_url: str) -> tuple[int, int, int]:
    """The double's first update and message ids, above any stored and above the clock."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT coalesce(max(telegram_update_id), 0), "
            "coalesce(max(greatest(telegram_message_id, reply_to_message_id)), 0), count(*) "
            "FROM messages WHERE chat_id = %s",
            (DEMO_CHAT_ID,),
        )
        row = await cursor.fetchone()
    update_id, message_id, kept = row if row else (0, 0, 0)
    clock = time.time_ns() // 1_000_000
    return max(update_id + 1, clock), max(message_id + 1, clock), kept


class _Lines:
    """stdin, line by line, from a daemon thread: a pending read never holds up the exit."""

    def __init__(self) -> None:
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(loop,), name="stdin", daemon=True).start()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                line = sys.stdin.readline()
            except (OSError, ValueError):
                line = ""
            try:
                loop.call_soon_threadsafe(self._lines.put_nowait, line)
            except RuntimeError:  # the loop is closed: the demo is over
                return
            if not line:
                return

    async def next(self) -> str:
        """The next line, or "" at the end of input."""
        return await self._lines.get()


async def _chat(double: BotApiDouble, lines: _Lines) -> None:
    print("aiconv demo — talk to the bot. Commands: /start /help /reset. Ctrl-D or /quit ends.")
    while True:
        sys.stdout.write("you> ")
        sys.stdout.flush()
        line = await lines.next()
        if not line:
            print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        seen = len(double.sent_texts(DEMO_CHAT_ID))
        typing_seen = len(double.calls_of("sendChatAction", DEMO_CHAT_ID))
        await double.send_user_message(DEMO_CHAT_ID, text, user_id=DEMO_USER_ID)
        await _show_reply(double, seen, typing_seen)


async def _show_reply(double: BotApiDouble, seen: int, typing_seen: int) -> None:
    """Print "typing…" while the bot types, then each part of its reply as it arrives."""
    shown_typing = False
    printed = seen
    while True:
        with contextlib.suppress(TimeoutError):
            await double.wait_for(functools.partial(_news, double, printed, typing_seen), 1.5)
        texts = double.sent_texts(DEMO_CHAT_ID)
        if not shown_typing and len(double.calls_of("sendChatAction", DEMO_CHAT_ID)) > typing_seen:
            sys.stdout.write("bot is typing…\r")
            sys.stdout.flush()
            shown_typing = True
        for text in texts[printed:]:
            sys.stdout.write(" " * 20 + "\r")
            print(f"bot> {text}")
        printed = len(texts)
        typing_seen = len(double.calls_of("sendChatAction", DEMO_CHAT_ID))
        if printed > seen and not await _more_coming(double, printed):
            return


def _news(double: BotApiDouble, printed: int, typing_seen: int) -> bool:
    return (
        len(double.sent_texts(DEMO_CHAT_ID)) > printed
        or len(double.calls_of("sendChatAction", DEMO_CHAT_ID)) > typing_seen
    )


async def _more_coming(double: BotApiDouble, printed: int) -> bool:
    """A long reply comes in parts: wait briefly for the next one before prompting again."""
    try:
        await double.wait_for(lambda: len(double.sent_texts(DEMO_CHAT_ID)) > printed, timeout=2.5)
        return True
    except TimeoutError:
        return False
