"""REPLY_STYLE=draft through real processes: a private chat sees its answer being written
(sendMessageDraft) and then the answer itself; a group keeps "typing…". The double enforces
Telegram's sending limits, and none is exceeded."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from aiconv.testing.botapi import BotApiDouble, TelegramLimits
from tests.support.processes import Launcher

pytestmark = pytest.mark.e2e

DRAFTING = {
    "REPLY_STYLE": "draft",
    "DRAFT_INTERVAL_SECONDS": "1",
    # Long enough an answer that its writing takes seconds even for the small test model.
    "MAX_TOKENS": "128",
}


@pytest.fixture
def double_options() -> Mapping[str, Any]:
    return {"limits": TelegramLimits()}


async def test_drafts_stream_in_private_chats_and_groups_keep_typing(
    launch: Launcher, double: BotApiDouble
) -> None:
    await launch("all", **DRAFTING)
    private = 7100 + random.randrange(1000)
    await double.send_user_message(private, "Tell me a long story about a dragon and a knight.")
    await double.wait_for_messages(private, 1, timeout=120)

    # Meanwhile (seconds: a stray draft would have come by the end), a group's turn.
    group = -1006000000 - random.randrange(1000)
    text = f"@{double.bot_username} tell me a short story"
    await double.send_user_message(
        group, text, user_id=71, chat_type="supergroup", extra={"entities": double.mention(text)}
    )
    await double.wait_for_messages(group, 1, timeout=120)
    assert not double.calls_of("sendMessageDraft", group)
    assert [c for c in double.calls_of("sendChatAction", group) if c.status == 200]
    assert not double.rate_limited(), double.rate_limited()[:3]

    drafts = double.drafts_of(private)
    first_reply = min(c.at for c in double.calls_of("sendMessage", private) if c.status == 200)
    assert drafts, double.describe_calls()
    assert all(d.at < first_reply for d in drafts)  # none after the answer
    assert len({d.params["draft_id"] for d in drafts}) == 1  # one turn: one animated draft
