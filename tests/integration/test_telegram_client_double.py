"""BotClient against BotApiDouble over real HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aiconv.telegram.client import (
    BadRequest,
    BotClient,
    Forbidden,
    NetworkError,
    RetryAfter,
    ServerError,
    TelegramError,
)
from aiconv.telegram.models import parse_update
from aiconv.testing.botapi import BotApiDouble, LoopbackServer

TOKEN = "987654:SECRET-token-value"


@pytest.fixture
def double_options() -> Mapping[str, Any]:
    """The shared `double` fixture (tests/support/fixtures.py) with this module's token."""
    return {"token": TOKEN}


@pytest.fixture
def bot(double: BotApiDouble, http: httpx.AsyncClient) -> BotClient:
    return BotClient(http, double.url, TOKEN)


def _assert_no_token(err: BaseException) -> None:
    for text in (str(err), repr(err), str(err.args)):
        assert TOKEN not in text
        assert "SECRET" not in text


async def test_get_me(bot: BotClient, double: BotApiDouble) -> None:
    me = await bot.get_me()
    assert me["username"] == "aiconv_test_bot"
    assert me["is_bot"] is True
    assert me["id"] == 987654
    assert [c.method for c in double.calls] == ["getMe"]
    assert TOKEN not in repr(bot)


async def test_send_message_and_chat_action(bot: BotClient, double: BotApiDouble) -> None:
    await bot.send_chat_action(5)
    first = await bot.send_message(5, "hello")
    bold = [{"type": "bold", "offset": 0, "length": 5}]
    second = await bot.send_message(5, "again", reply_to=first, entities=bold)
    await bot.send_message(6, "other chat")
    assert second > first
    assert double.sent_texts(5) == ["hello", "again"]
    assert double.sent_texts(6) == ["other chat"]
    action = double.calls_of("sendChatAction", chat_id=5)[0]
    assert action.params == {"chat_id": 5, "action": "typing"}
    reply = double.calls_of("sendMessage", chat_id=5)[1]
    # reply_parameters, not the legacy reply_to_message_id; entities, never parse_mode
    assert reply.params["reply_parameters"] == {
        "message_id": first,
        "allow_sending_without_reply": True,
    }
    assert reply.params["entities"] == bold
    assert "reply_to_message_id" not in reply.params
    plain = double.calls_of("sendMessage", chat_id=5)[0].params
    assert "entities" not in plain and "reply_parameters" not in plain
    assert double.calls[0].at <= double.calls[-1].at


async def test_webhook_set_and_delete(bot: BotClient, double: BotApiDouble) -> None:
    await bot.set_webhook("https://example.test/webhook", "s3cret", ["message"])
    assert double.webhook_url == "https://example.test/webhook"
    assert double.webhook_secret == "s3cret"
    assert double.allowed_updates == ["message"]
    # Like Telegram: no getUpdates while a webhook is active.
    with pytest.raises(TelegramError) as info:
        await bot.get_updates(None, 0, ["message"])
    assert info.value.status == 409
    await bot.delete_webhook(drop_pending_updates=True)
    assert double.webhook_url is None
    assert await bot.get_updates(None, 0, ["message"]) == []


async def test_get_updates_offset_confirms(bot: BotClient, double: BotApiDouble) -> None:
    first = await double.send_user_message(1, "one")
    second = await double.send_user_message(1, "two")
    updates = await bot.get_updates(None, 0, ["message"])
    assert [u["update_id"] for u in updates] == [first["update_id"], second["update_id"]]
    updates = await bot.get_updates(first["update_id"] + 1, 0, ["message"])
    assert updates == [second]
    assert await bot.get_updates(second["update_id"] + 1, 0, ["message"]) == []
    msg = parse_update(second).message
    assert msg is not None and msg.text == "two"


async def test_long_poll_returns_when_message_arrives(bot: BotClient, double: BotApiDouble) -> None:
    poll = asyncio.create_task(bot.get_updates(None, 30, ["message"]))
    await double.wait_for(lambda: double.polling == 1, timeout=5)
    update = await double.send_user_message(77, "wake up")
    updates = await asyncio.wait_for(poll, timeout=5)
    assert updates == [update]


async def test_long_poll_times_out_empty(bot: BotClient, double: BotApiDouble) -> None:
    assert await bot.get_updates(None, 1, ["message"]) == []
    assert double.calls_of("getUpdates")[0].status == 200


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequest), (403, Forbidden), (500, ServerError), (502, ServerError)],
)
async def test_errors_map_to_classes(
    bot: BotClient, double: BotApiDouble, status: int, cls: type[TelegramError]
) -> None:
    double.fail_next("sendMessage", status, description="injected")
    with pytest.raises(cls) as info:
        await bot.send_message(1, "x")
    err = info.value
    assert (err.method, err.status, err.error_code, err.description) == (
        "sendMessage",
        status,
        status,
        "injected",
    )
    _assert_no_token(err)
    # The fault was used up; the next call succeeds.
    await bot.send_message(1, "x")
    assert double.sent_texts(1) == ["x"]


async def test_retry_after(bot: BotClient, double: BotApiDouble) -> None:
    double.fail_next("sendChatAction", 429, retry_after=7, times=2)
    for _ in range(2):
        with pytest.raises(RetryAfter) as info:
            await bot.send_chat_action(1)
        assert info.value.retry_after == 7.0
        assert info.value.status == 429
        _assert_no_token(info.value)
    await bot.send_chat_action(1)
    assert [c.status for c in double.calls_of("sendChatAction")] == [429, 429, 200]


async def test_real_bad_requests(bot: BotClient, double: BotApiDouble) -> None:
    with pytest.raises(BadRequest, match="message text is empty"):
        await bot.send_message(1, "   ")
    with pytest.raises(BadRequest, match="message is too long"):
        await bot.send_message(1, "x" * 4097)
    await bot.send_message(1, "x" * 4096)
    assert double.sent_texts(1) == ["x" * 4096]


async def test_entities_are_checked_in_utf16_units_like_telegram(
    bot: BotClient, double: BotApiDouble
) -> None:
    text = "😀 bold"  # the emoji is two UTF-16 units: "bold" is at 3..7
    await bot.send_message(1, text, entities=[{"type": "bold", "offset": 3, "length": 4}])
    assert double.sent_messages(1)[-1]["entities"] == [{"type": "bold", "offset": 3, "length": 4}]
    refused: list[tuple[dict[str, Any], str]] = [
        ({"type": "bold", "offset": 3, "length": 5}, "ends after the end of the text"),
        ({"type": "blink", "offset": 0, "length": 1}, "unsupported entity type"),
        ({"type": "bold", "offset": -1, "length": 2}, "wrong entity offset or length"),
        ({"type": "bold", "offset": 0, "length": 0}, "wrong entity offset or length"),
        ({"type": "text_link", "offset": 0, "length": 2}, "must have a url"),
    ]
    for entity, why in refused:
        with pytest.raises(BadRequest, match="can't parse entities") as info:
            await bot.send_message(1, text, entities=[entity])
        assert why in info.value.description
    assert double.sent_texts(1) == [text]


async def test_reply_parameters_are_checked(
    bot: BotClient, double: BotApiDouble, http: httpx.AsyncClient
) -> None:
    url = f"{double.url}/bot{TOKEN}/sendMessage"
    for bad in (
        {"message_id": "x"},
        "not json",
        {"message_id": 1, "allow_sending_without_reply": 1},
    ):
        answer = await http.post(url, json={"chat_id": 1, "text": "hi", "reply_parameters": bad})
        assert answer.status_code == 400
    answer = await http.post(
        url, json={"chat_id": 1, "text": "hi", "parse_mode": "HTML", "entities": []}
    )
    assert answer.status_code == 400
    await bot.send_message(1, "hi", reply_to=5)
    assert double.sent_texts(1) == ["hi"]


async def test_wrong_token_and_unknown_method(
    double: BotApiDouble, http: httpx.AsyncClient
) -> None:
    wrong = BotClient(http, double.url, "111:WRONG")
    with pytest.raises(TelegramError) as info:
        await wrong.get_me()
    assert info.value.status == 401
    assert info.value.description == "Unauthorized"
    assert "WRONG" not in str(info.value)
    response = await http.post(f"{double.url}/bot{TOKEN}/noSuchMethod", json={})
    assert response.status_code == 404
    assert response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}


async def test_form_and_query_params(double: BotApiDouble, http: httpx.AsyncClient) -> None:
    base = f"{double.url}/bot{TOKEN}"
    r = await http.post(f"{base}/sendMessage", data={"chat_id": "9", "text": "form"})
    assert r.json()["result"]["text"] == "form"
    r = await http.get(f"{base}/sendMessage", params={"chat_id": "9", "text": "query"})
    assert r.json()["result"]["chat"]["id"] == 9
    assert double.sent_texts(9) == ["form", "query"]


async def test_network_error_hides_token(http: httpx.AsyncClient) -> None:
    # A port that was just free: connection refused.
    server = LoopbackServer(Starlette())
    await server.start()
    url = server.url
    await server.stop()
    bot = BotClient(http, url, TOKEN)
    with pytest.raises(NetworkError) as info:
        await bot.get_me()
    assert info.value.status is None
    _assert_no_token(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_every_error_type_hides_token() -> None:
    errors: list[TelegramError] = [
        TelegramError("getMe", 401, "Unauthorized", 401),
        RetryAfter("sendMessage", 429, "Too Many Requests", 429, 3.0),
        Forbidden("sendMessage", 403, "Forbidden", 403),
        BadRequest("sendMessage", 400, "Bad Request", 400),
        ServerError("sendMessage", 500, "Internal", 500),
        NetworkError("getUpdates", "network error: ConnectError"),
    ]
    for err in errors:
        _assert_no_token(err)


async def test_webhook_delivery(bot: BotClient, double: BotApiDouble) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []

    async def webhook(request: Request) -> Response:
        received.append(
            (request.headers.get("x-telegram-bot-api-secret-token"), await request.json())
        )
        return JSONResponse({})

    app = Starlette(routes=[Route("/webhook", webhook, methods=["POST"])])
    async with LoopbackServer(app) as target:
        await bot.set_webhook(f"{target.url}/webhook", "hook-secret", ["message"])
        update = await double.send_user_message(3, kind="photo", text="caption")
        second = await double.send_user_message(3, "x")
        assert received == [("hook-secret", update), ("hook-secret", second)]
        assert double.webhook_responses == [
            (update["update_id"], 200),
            (second["update_id"], 200),
        ]
        await bot.set_webhook(f"{target.url}/nowhere", "hook-secret", ["message"])
        lost = await double.send_user_message(3, "y")
        assert double.webhook_responses[-1] == (lost["update_id"], 404)
    msg = parse_update(update).message
    assert msg is not None and (msg.kind, msg.text) == ("photo", "caption")


async def test_wait_for_times_out_with_calls(bot: BotClient, double: BotApiDouble) -> None:
    await bot.send_message(4, "only one")
    with pytest.raises(TimeoutError) as info:
        await double.wait_for_messages(4, 2, timeout=0.2)
    assert "sendMessage -> 200" in str(info.value)
    assert "only one" in str(info.value)


async def test_make_update_kinds(double: BotApiDouble) -> None:
    for kind in ["text", "photo", "voice", "sticker", "document", "video", "audio"]:
        data = double.make_update(-100, "t", kind=kind, chat_type="group", user_id=8)
        msg = parse_update(data).message
        assert msg is not None
        assert (msg.kind, msg.chat_type, msg.user_id, msg.text) == (kind, "group", 8, "t")
    a = double.make_update(1, "/start")
    b = double.make_update(1, "x")
    assert b["update_id"] == a["update_id"] + 1
    assert b["message"]["message_id"] > a["message"]["message_id"]
    assert a["message"]["entities"][0]["type"] == "bot_command"
    assert double.make_update(1, "x", update_id=5)["update_id"] == 5


async def test_stop_releases_pending_poll(http: httpx.AsyncClient) -> None:
    d = BotApiDouble(token=TOKEN)
    await d.start()
    bot = BotClient(http, d.url, TOKEN)
    poll = asyncio.create_task(bot.get_updates(None, 60, ["message"]))
    await d.wait_for(lambda: d.polling == 1, timeout=5)
    await asyncio.wait_for(d.stop(), timeout=10)
    assert await asyncio.wait_for(poll, timeout=5) == []
