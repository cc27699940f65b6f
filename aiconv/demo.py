"""`aiconv demo`: every mode plus the Bot API double in one process, and a chat in the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sys

from aiconv.config import Settings
from aiconv.resources import Resources
from aiconv.runtime import run_modes
from aiconv.store.migrate import apply_migrations, ensure_database
from aiconv.telegram.double import BotApiDouble

DEMO_CHAT_ID = 1000
DEMO_USER_ID = 1000


async def run_demo(settings: Settings) -> None:
    await ensure_database(settings.database_url)
    await apply_migrations(settings.database_url)
    async with BotApiDouble() as double:
        demo_settings = dataclasses.replace(
            settings,
            telegram_api_url=double.url,
            telegram_bot_token=double.token,
            telegram_webhook_url=None,  # the demo polls, so no public URL is needed
        )
        stop = asyncio.Event()

        async def chat(_: Resources) -> None:
            try:
                await _chat(double)
            finally:
                stop.set()

        await run_modes(demo_settings, ("web", "worker", "ml"), stop=stop, on_ready=chat)


async def _chat(double: BotApiDouble) -> None:
    print("aiconv demo — talk to the bot. Commands: /start /help /reset. Ctrl-D or /quit ends.")
    while True:
        try:
            sys.stdout.write("you> ")
            sys.stdout.flush()
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                raise EOFError
        except (EOFError, KeyboardInterrupt):
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
