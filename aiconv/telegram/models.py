"""Telegram Bot API Update parsing into small frozen dataclasses.

What is parsed here can always be stored: every id must fit PostgreSQL's BIGINT (an update with
`update_id` 10^30 is invalid, not a job that fails five times and is dead-lettered), and text
is cleaned of what PostgreSQL's TEXT and UTF-8 cannot hold: NUL characters are removed and lone
UTF-16 surrogates (JSON ``"\ud800"``) become U+FFFD. `clean` does the same to a whole update
before it is queued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

MessageKind = Literal["text", "photo", "voice", "sticker", "document", "video", "audio", "other"]

# Order matters: the first media field present decides the kind.
_MEDIA_KINDS: tuple[MessageKind, ...] = ("photo", "voice", "sticker", "document", "video", "audio")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InvalidUpdate(ValueError):
    """The payload is not a Telegram Update we can trust."""


def clean_text(text: str) -> str:
    """`text` without NUL characters, its lone surrogates replaced by U+FFFD."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else REPLACEMENT, text)


def clean(value: Any) -> Any:
    """A JSON value with every string (keys included) passed through `clean_text`.

    Recursive: give it only values whose depth is bounded (see aiconv.web.jsonbody).
    """
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(item) for item in value]
    return value


@dataclass(frozen=True)
class IncomingMessage:
    update_id: int
    chat_id: int
    chat_type: str
    user_id: int | None
    username: str | None
    first_name: str | None
    language_code: str | None
    message_id: int
    date: int
    kind: MessageKind
    text: str | None


@dataclass(frozen=True)
class Update:
    update_id: int
    message: IncomingMessage | None


def _req_int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    # bool is a subclass of int; Telegram never sends booleans for ids.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUpdate(f"invalid update: {where}.{key} must be an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidUpdate(f"invalid update: {where}.{key} is out of range")
    return value


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidUpdate(f"invalid update: {where}.{key} must be a string")
    return clean_text(value)


def _parse_message(update_id: int, msg: object) -> IncomingMessage:
    if not isinstance(msg, dict):
        raise InvalidUpdate("invalid update: message must be an object")
    chat = msg.get("chat")
    if not isinstance(chat, dict):
        raise InvalidUpdate("invalid update: message.chat must be an object")
    chat_id = _req_int(chat, "id", "message.chat")
    chat_type = chat.get("type", "private")
    if not isinstance(chat_type, str):
        raise InvalidUpdate("invalid update: message.chat.type must be a string")
    chat_type = clean_text(chat_type)
    message_id = _req_int(msg, "message_id", "message")
    date = _req_int(msg, "date", "message")

    user_id: int | None = None
    username = first_name = language_code = None
    sender = msg.get("from")
    if sender is not None:
        if not isinstance(sender, dict):
            raise InvalidUpdate("invalid update: message.from must be an object")
        user_id = _req_int(sender, "id", "message.from")
        username = _opt_str(sender, "username", "message.from")
        first_name = _opt_str(sender, "first_name", "message.from")
        language_code = _opt_str(sender, "language_code", "message.from")

    text = _opt_str(msg, "text", "message")
    kind: MessageKind
    if text is not None:
        kind = "text"
    else:
        kind = next((k for k in _MEDIA_KINDS if msg.get(k) is not None), "other")
        text = _opt_str(msg, "caption", "message")

    return IncomingMessage(
        update_id=update_id,
        chat_id=chat_id,
        chat_type=chat_type,
        user_id=user_id,
        username=username,
        first_name=first_name,
        language_code=language_code,
        message_id=message_id,
        date=date,
        kind=kind,
        text=text,
    )


def parse_update(data: object) -> Update:
    """Parse an Update; updates other than `message` are valid but carry message=None."""
    if not isinstance(data, dict):
        raise InvalidUpdate("invalid update: expected a JSON object")
    update_id = _req_int(data, "update_id", "update")
    if "message" not in data:
        return Update(update_id=update_id, message=None)
    return Update(update_id=update_id, message=_parse_message(update_id, data["message"]))
