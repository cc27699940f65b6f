"""parse_update: Telegram Update JSON into IncomingMessage."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aiconv.telegram.models import InvalidUpdate, Update, clean, parse_update
from tests.support.messages import incoming_message
from tests.support.updates import replaced


def _text_update(text: str = "hello") -> dict[str, Any]:
    return {
        "update_id": 1001,
        "message": {
            "message_id": 7,
            "from": {
                "id": 42,
                "is_bot": False,
                "first_name": "Ada",
                "username": "ada",
                "language_code": "en",
            },
            "chat": {"id": 42, "first_name": "Ada", "username": "ada", "type": "private"},
            "date": 1700000000,
            "text": text,
        },
    }


def test_text_message() -> None:
    update = parse_update(_text_update())
    assert update == Update(
        update_id=1001,
        message=incoming_message(
            update_id=1001,
            chat_id=42,
            user_id=42,
            username="ada",
            first_name="Ada",
            message_id=7,
            date=1700000000,
            text="hello",
        ),
    )


def test_command_is_text() -> None:
    data = _text_update("/start")
    data["message"]["entities"] = [{"type": "bot_command", "offset": 0, "length": 6}]
    msg = parse_update(data).message
    assert msg is not None
    assert (msg.kind, msg.text) == ("text", "/start")


def test_photo_with_caption() -> None:
    data = _text_update()
    del data["message"]["text"]
    data["message"]["photo"] = [{"file_id": "a", "file_unique_id": "b", "width": 1, "height": 1}]
    data["message"]["caption"] = "look"
    msg = parse_update(data).message
    assert msg is not None
    assert (msg.kind, msg.text) == ("photo", "look")


@pytest.mark.parametrize("kind", ["voice", "sticker", "document", "video", "audio"])
def test_media_kinds_without_caption(kind: str) -> None:
    data = _text_update()
    del data["message"]["text"]
    data["message"][kind] = {"file_id": "x", "file_unique_id": "y"}
    msg = parse_update(data).message
    assert msg is not None
    assert (msg.kind, msg.text) == (kind, None)


def test_unknown_content_is_other() -> None:
    data = _text_update()
    del data["message"]["text"]
    data["message"]["location"] = {"latitude": 1.0, "longitude": 2.0}
    msg = parse_update(data).message
    assert msg is not None
    assert (msg.kind, msg.text) == ("other", None)


def test_group_message_without_from() -> None:
    data = _text_update()
    del data["message"]["from"]
    data["message"]["chat"] = {"id": -100123, "type": "supergroup", "title": "G"}
    msg = parse_update(data).message
    assert msg is not None
    assert (msg.chat_id, msg.chat_type, msg.user_id, msg.username) == (
        -100123,
        "supergroup",
        None,
        None,
    )


@pytest.mark.parametrize(
    "key", ["edited_message", "callback_query", "my_chat_member", "channel_post"]
)
def test_other_update_types_are_ignored(key: str) -> None:
    data = _text_update()
    data[key] = data.pop("message")
    assert parse_update(data) == Update(update_id=1001, message=None)


def test_bare_update_is_valid() -> None:
    assert parse_update({"update_id": 5}) == Update(update_id=5, message=None)


def _without(path: tuple[str, ...]) -> dict[str, Any]:
    data = copy.deepcopy(_text_update())
    obj: Any = data
    for key in path[:-1]:
        obj = obj[key]
    del obj[path[-1]]
    return data


def _with(path: tuple[str, ...], value: object) -> dict[str, Any]:
    return replaced(_text_update(), path, value)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "update",
        42,
        {},
        {"update_id": "1"},
        {"update_id": True},
        {"update_id": 1.5},
        _without(("update_id",)),
        _without(("message", "chat")),
        _without(("message", "chat", "id")),
        _without(("message", "message_id")),
        _without(("message", "date")),
        _with(("message",), "hi"),
        _with(("message",), None),
        _with(("message", "chat"), []),
        _with(("message", "chat", "id"), "42"),
        _with(("message", "chat", "id"), False),
        _with(("message", "message_id"), None),
        _with(("message", "from"), "ada"),
        _with(("message", "from", "id"), None),
        _with(("message", "text"), 5),
        _with(("message", "from", "username"), ["ada"]),
    ],
)
def test_malformed_updates_raise(data: object) -> None:
    with pytest.raises(InvalidUpdate) as info:
        parse_update(data)
    assert str(info.value).startswith("invalid update:")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_ids_must_fit_a_bigint(value: int) -> None:
    data = _text_update()
    data["message"]["chat"]["id"] = value
    with pytest.raises(InvalidUpdate, match=r"message\.chat\.id is out of range"):
        parse_update(data)
    data = _text_update()
    data["update_id"] = value
    with pytest.raises(InvalidUpdate, match=r"update\.update_id is out of range"):
        parse_update(data)


def test_bigint_bounds_are_accepted() -> None:
    data = _text_update()
    data["update_id"], data["message"]["chat"]["id"] = 2**63 - 1, -(2**63)
    update = parse_update(data)
    assert update.message is not None and update.message.chat_id == -(2**63)


def test_text_is_cleaned_of_nul_and_lone_surrogates() -> None:
    data = _text_update("a\x00b\ud83dc\ude00 😀")
    data["message"]["from"]["username"] = "\x00ada\udfff"
    message = parse_update(data).message
    assert message is not None
    assert (message.text, message.username) == ("ab\ufffdc\ufffd 😀", "ada\ufffd")
    assert clean({"k\x00": ["\ud800", 1, None, {"x": "ok"}]}) == {
        "k": ["\ufffd", 1, None, {"x": "ok"}]
    }


def test_group_fields_are_parsed() -> None:
    data = _text_update("@bot hi \U0001f600")
    data["message"]["chat"] = {"id": -100777, "type": "supergroup", "is_forum": True}
    data["message"].update(
        entities=[
            {"type": "mention", "offset": 0, "length": 4},
            {"type": "text_mention", "offset": 5, "length": 2, "user": {"id": 42}},
            {"type": "bold", "offset": "x", "length": 1},  # malformed: skipped
            "junk",
        ],
        reply_to_message={"message_id": 3, "from": {"id": 42, "is_bot": True}},
        message_thread_id=9,
        is_topic_message=True,
    )
    msg = parse_update(data).message
    assert msg is not None
    assert [(e.type, e.offset, e.length, e.user_id) for e in msg.entities] == [
        ("mention", 0, 4, None),
        ("text_mention", 5, 2, 42),
    ]
    assert msg.reply_to is not None and msg.reply_to.from_user_id == 42
    assert (msg.is_group, msg.message_thread_id, msg.topic) == (True, 9, 9)


def test_a_reply_thread_outside_a_forum_is_no_topic() -> None:
    data = _text_update()
    data["message"]["message_thread_id"] = 9  # a reply chain in a plain supergroup
    msg = parse_update(data).message
    assert msg is not None and msg.topic is None


@pytest.mark.parametrize("thread", [0, -9])
def test_a_topic_id_that_is_no_message_id_is_no_topic(thread: int) -> None:
    data = _text_update()
    data["message"].update(message_thread_id=thread, is_topic_message=True)
    msg = parse_update(data).message
    assert msg is not None and msg.topic is None  # answered outside topics, not dropped


def test_migration_service_messages_are_parsed() -> None:
    data = _text_update()
    del data["message"]["text"]
    data["message"]["migrate_to_chat_id"] = -1001234
    msg = parse_update(data).message
    assert msg is not None and (msg.kind, msg.migrate_to_chat_id) == ("other", -1001234)


def _member_update(new_status: str = "member") -> dict[str, Any]:
    return {
        "update_id": 77,
        "my_chat_member": {
            "chat": {"id": -55, "type": "group", "title": "G"},
            "from": {"id": 8, "is_bot": False, "first_name": "Ann"},
            "date": 1_700_000_000,
            "old_chat_member": {"status": "left", "user": {"id": 1, "is_bot": True}},
            "new_chat_member": {"status": new_status, "user": {"id": 1, "is_bot": True}},
        },
    }


def test_my_chat_member_is_parsed() -> None:
    change = parse_update(_member_update()).my_chat_member
    assert change is not None
    assert (change.chat_id, change.by_user_id, change.old_status, change.new_status) == (
        -55,
        8,
        "left",
        "member",
    )
    assert change.present
    kicked = parse_update(_member_update("kicked")).my_chat_member
    assert kicked is not None and not kicked.present


def test_a_malformed_my_chat_member_is_ignored_but_an_unstorable_id_is_invalid() -> None:
    data = _member_update()
    data["my_chat_member"]["new_chat_member"] = "member"
    assert parse_update(data) == Update(update_id=77, message=None)
    data = _member_update()
    data["my_chat_member"]["chat"]["id"] = 2**70
    with pytest.raises(InvalidUpdate):
        parse_update(data)


def test_a_reply_carries_the_replied_text_or_the_quoted_part() -> None:
    replied = {"message_id": 3, "from": {"id": 9, "is_bot": True}, "date": 1, "text": "Paris."}
    update = _text_update("why?")
    update["message"]["reply_to_message"] = replied
    message = parse_update(update).message
    assert message is not None and message.reply_to is not None
    assert message.reply_to.text == "Paris."
    assert message.quoted_text == "Paris."
    update["message"]["quote"] = {"text": "Par", "position": 0}
    assert (quoted := parse_update(update).message) is not None
    assert quoted.quoted_text == "Par"
    update["message"]["quote"] = {"text": 5}  # malformed: no quote, the reply stands
    assert (fallback := parse_update(update).message) is not None
    assert fallback.quoted_text == "Paris."


def test_a_topic_root_is_not_quoted() -> None:
    update = _text_update("hi")
    update["message"].update(
        message_thread_id=4,
        is_topic_message=True,
        reply_to_message={"message_id": 4, "date": 1, "forum_topic_created": {"name": "t"}},
    )
    assert (message := parse_update(update).message) is not None
    assert message.quoted_text is None
    update["message"]["reply_to_message"]["text"] = "opening words"
    assert (root := parse_update(update).message) is not None
    assert root.quoted_text is None


def test_bot_commands_and_chat_members_parse_or_fail_clearly() -> None:
    from aiconv.telegram.models import (
        BotCommand,
        ChatMember,
        parse_bot_commands,
        parse_chat_member,
    )

    assert parse_bot_commands([{"command": "help", "description": "list"}]) == [
        BotCommand("help", "list")
    ]
    assert BotCommand("help", "list").to_api() == {"command": "help", "description": "list"}
    member = parse_chat_member({"status": "creator", "user": {"id": 5, "is_bot": False}})
    assert member == ChatMember(5, "creator") and member.is_admin
    assert parse_chat_member({"status": "administrator", "user": {"id": 5}}).is_admin
    for status in ("member", "restricted", "left", "kicked"):
        assert not parse_chat_member({"status": status, "user": {"id": 5}}).is_admin
    assert parse_bot_commands([]) == []
    bad_results: list[object] = [None, {}, [{"command": 1}], [1]]
    for bad in bad_results:
        with pytest.raises(ValueError, match="getMyCommands"):
            parse_bot_commands(bad)
    for bad_member in (
        None,
        {"status": "member"},
        {"status": 1, "user": {"id": 5}},
        {"status": "member", "user": {"id": True}},
    ):
        with pytest.raises(ValueError, match="getChatMember"):
            parse_chat_member(bad_member)


def test_sender_chat_is_parsed_and_a_malformed_one_is_ignored() -> None:
    def with_sender_chat(sender_chat: object) -> dict[str, object]:
        return {
            "update_id": 1,
            "message": {
                "message_id": 2,
                "date": 0,
                "chat": {"id": -5, "type": "group"},
                "text": "hi",
                "sender_chat": sender_chat,
            },
        }

    message = parse_update(with_sender_chat({"id": -5, "type": "group"})).message
    assert message is not None and message.sender_chat_id == -5
    for bad in (None, {"id": "x"}, {"id": True}, {"id": 10**30}, "chat"):
        message = parse_update(with_sender_chat(bad)).message
        assert message is not None and message.sender_chat_id is None
