"""A Telegram user's message travels web/poller → worker → ml → worker → Telegram for real, on
one Redis and on a Redis Cluster (`both_redis`: 3 shards, one per primary, so the hand-overs
between stages cross the real slot rules)."""

from __future__ import annotations

import json

import httpx
import pytest

from aiconv.conversation import texts
from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.testing.botapi import BotApiDouble
from tests.support.database import query_rows
from tests.support.ports import free_port
from tests.support.processes import Launcher, webhook_settings
from tests.support.streams import stream_entries
from tests.support.waiting import eventually

SECRET = "e2e-webhook-secret"
pytestmark = [pytest.mark.e2e, pytest.mark.both_redis]


def stored_replies(database_url: str, *chats: int) -> list[tuple[int, int]]:
    rows = query_rows(
        database_url,
        "SELECT chat_id, reply_to_message_id FROM messages "
        "WHERE role = 'assistant' AND chat_id = ANY(%s) ORDER BY chat_id",
        list(chats),
    )
    return [(int(row[0]), int(row[1])) for row in rows]


async def test_webhook_message_gets_a_reply_preceded_by_typing(
    launch: Launcher, double: BotApiDouble, database_url: str
) -> None:
    await launch("all", **webhook_settings(free_port(), SECRET))
    assert double.webhook_url is not None and double.webhook_url.endswith("/webhook")
    assert double.webhook_secret == SECRET

    update = await double.send_user_message(501, "Hello! What is your favourite colour?")
    [reply] = await double.wait_for_messages(501, 1)
    assert reply.strip()
    await eventually(lambda: stored_replies(database_url, 501), timeout=10)

    typing = double.calls_of("sendChatAction", 501)
    sent = double.calls_of("sendMessage", 501)
    assert typing and typing[0].params["action"] == "typing"
    assert typing[0].at < sent[0].at

    rows = query_rows(
        database_url,
        "SELECT role, telegram_message_id, completion_tokens FROM messages "
        "WHERE chat_id = 501 ORDER BY id",
    )
    assert [row[0] for row in rows] == ["user", "assistant"]
    assert rows[0][1] == update["message"]["message_id"]
    assert rows[1][1] is not None and rows[1][2] and rows[1][2] > 0


async def test_polling_message_gets_a_reply(launch: Launcher, double: BotApiDouble) -> None:
    await launch("all")
    await double.send_user_message(502, "Hi there, tell me a short fact about cats.")
    [reply] = await double.wait_for_messages(502, 1)
    assert reply.strip()
    assert double.calls_of("deleteWebhook")
    assert double.webhook_url is None


async def test_reset_forgets_the_history(
    launch: Launcher, double: BotApiDouble, redis: RedisClient, keys: Keys
) -> None:
    await launch("all")
    await double.send_user_message(503, "My name is Zorblax.")
    await double.wait_for_messages(503, 1)
    await double.send_user_message(503, "/reset")
    replies = await double.wait_for_messages(503, 2)
    assert replies[1] == texts.RESET_DONE
    await double.send_user_message(503, "What is my name?")
    await double.wait_for_messages(503, 3)

    # The generation jobs of the chat's turns, on its shard's stream.
    jobs = await stream_entries(redis, keys.stream_for("generate", 503))
    turns = [json.loads(fields["job"])["turns"] for _, fields in jobs]
    assert ["user", "My name is Zorblax."] in turns[0]
    assert turns[-1] == [["user", "What is my name?"]]


async def test_webhook_rejects_bad_requests_and_answers_a_repeat_once(
    launch: Launcher, double: BotApiDouble
) -> None:
    app = await launch("all", **webhook_settings(free_port(), SECRET))
    url = f"{app.web_url}/webhook"
    good = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    update = double.make_update(504, "Hello, once only please.")
    async with httpx.AsyncClient() as http:
        assert (await http.post(url, json=update)).status_code == 401
        wrong = {"X-Telegram-Bot-Api-Secret-Token": "nope"}
        assert (await http.post(url, json=update, headers=wrong)).status_code == 401
        assert (await http.post(url, content=b"{not json", headers=good)).status_code == 400
        assert (await http.post(url, json={"hello": 1}, headers=good)).status_code == 400
        assert (await http.post(url, json=[1, 2], headers=good)).status_code == 400
        huge = b'{"update_id": 1, "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
        refused = await http.post(url, content=huge, headers=good)
        # The server read only part of the body: it closes this connection and says so, and
        # the client sends the next request on a fresh one (not on a connection being closed).
        assert refused.status_code == 413 and refused.headers["connection"] == "close"
        for _ in range(3):
            response = await http.post(url, json=update, headers=good)
            assert response.status_code == 200
    await double.wait_for_messages(504, 1)
    # A later message is answered too, so the repeat had its chance to produce a second reply.
    await double.send_user_message(504, "And now a second question?")
    replies = await double.wait_for_messages(504, 2)
    assert len(replies) == 2
    assert len(double.sent_texts(504)) == 2


async def test_two_chats_at_once_each_get_their_own_reply(
    launch: Launcher, double: BotApiDouble, database_url: str
) -> None:
    await launch("all")
    # (On the cluster, chats 601 and 602 are in different shards, so on different primaries.)
    first = await double.send_user_message(601, "Please say hello to Alice.")
    second = await double.send_user_message(602, "Please say hello to Bob.")
    await double.wait_for_messages(601, 1)
    await double.wait_for_messages(602, 1)
    await eventually(lambda: len(stored_replies(database_url, 601, 602)) == 2, timeout=10)
    rows = stored_replies(database_url, 601, 602)
    assert rows == [
        (601, first["message"]["message_id"]),
        (602, second["message"]["message_id"]),
    ]


async def test_a_photo_gets_the_polite_text_only_answer(
    launch: Launcher, double: BotApiDouble
) -> None:
    await launch("all")
    for chat, kind in ((701, "photo"), (702, "voice"), (703, "sticker"), (704, "document")):
        await double.send_user_message(chat, kind=kind)
        assert await double.wait_for_messages(chat, 1) == [texts.TEXT_ONLY]


async def test_commands_answer_without_generation(launch: Launcher, double: BotApiDouble) -> None:
    await launch("all")
    await double.send_user_message(705, "/start", user_id=705)
    await double.send_user_message(705, "/help")
    replies = await double.wait_for_messages(705, 2)
    assert "/help" in replies[0]
    assert replies[1] == texts.help_text()
