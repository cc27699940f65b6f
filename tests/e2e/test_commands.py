"""The command menu through real processes: registered with setMyCommands at start, in the
background (a Telegram outage neither delays nor breaks start-up), and not rewritten by a restart
when it is already what the bot offers."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from aiconv.conversation import texts
from aiconv.conversation.commands import menu
from aiconv.jobs.keys import Keys
from aiconv.testing.botapi import BotApiDouble
from tests.support.processes import Launcher
from tests.support.services import REDIS_URL
from tests.support.streams import generation_jobs

pytestmark = pytest.mark.e2e


def registered(double: BotApiDouble) -> bool:
    return [(c["command"], c["description"]) for c in double.my_commands] == menu()


async def test_the_menu_is_set_at_start_retried_in_the_background_and_once(
    launch: Launcher, double: BotApiDouble
) -> None:
    double.fail_next("getMyCommands", 503, times=10_000)  # Telegram is down at start-up
    first = await launch("all")  # ready regardless
    assert double.calls_of("setMyCommands") == []
    await double.send_user_message(9_100_001, "/help")
    assert await double.wait_for_messages(9_100_001, 1) == [texts.help_text()]

    double.clear_faults("getMyCommands")  # the outage ends: the next attempt registers it
    await double.wait_for(lambda: registered(double), timeout=60)
    assert first.stop() == 0

    await launch("all")
    # The restarted process asks, finds the menu unchanged and leaves it alone.
    await double.wait_for(
        lambda: sum(c.status == 200 for c in double.calls_of("getMyCommands")) == 2, timeout=60
    )
    assert len(double.calls_of("setMyCommands")) == 1


async def test_a_chat_s_persona_is_the_system_prompt_ml_receives(
    launch: Launcher, double: BotApiDouble, redis_prefix: str
) -> None:
    await launch("all")
    chat = 9_100_002
    await double.send_user_message(chat, "/persona You are a lighthouse keeper. Be brief.")
    assert await double.wait_for_messages(chat, 1) == [texts.PERSONA_SET]
    await double.send_user_message(chat, "What do you see tonight?")
    await double.wait_for_messages(chat, 2)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        [job] = await generation_jobs(redis, Keys(redis_prefix), chat)
    finally:
        await redis.aclose()
    assert job["persona"] == "You are a lighthouse keeper. Be brief."
    assert job["turns"][-1] == ["user", "What do you see tonight?"]
