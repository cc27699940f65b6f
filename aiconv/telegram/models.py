"""Telegram Bot API Update parsing into small frozen dataclasses.

What is parsed here can always be stored: every id must fit PostgreSQL's BIGINT (an update with
`update_id` 10^30 is invalid, not a job that fails five times and is dead-lettered), and text
is cleaned of what PostgreSQL's TEXT and UTF-8 cannot hold: NUL characters are removed and lone
UTF-16 surrogates (JSON ``"\ud800"``) become U+FFFD. `clean` does the same to a whole update
before it is queued.

What groups need is parsed too: entities (offsets in UTF-16 code units, as Telegram counts), the
message replied to, the forum topic, supergroup migrations, and the bot's own membership changes
(`my_chat_member`). A malformed entity is skipped rather than failing the update: entities only
decide whether the bot was addressed, and a message is never lost over one.
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
class MessageEntity:
    """A span of a message's text; `offset` and `length` count UTF-16 code units."""

    type: str
    offset: int
    length: int
    user_id: int | None = None  # text_mention: the user mentioned


@dataclass(frozen=True)
class RepliedMessage:
    """The message a message replies to: enough to tell a reply to the bot, and its text (or
    caption) for the prompt."""

    message_id: int
    from_user_id: int | None
    from_is_bot: bool
    text: str | None = None


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
    entities: tuple[MessageEntity, ...] = ()
    reply_to: RepliedMessage | None = None
    message_thread_id: int | None = None
    is_topic_message: bool = False  # message_thread_id names a forum topic (not a reply thread)
    migrate_to_chat_id: int | None = None  # service message: this group became that supergroup
    migrate_from_chat_id: int | None = None  # service message: this supergroup was that group
    quote: str | None = None  # the part of the replied message the user quoted (TextQuote)
    # Sent on behalf of a chat: the group itself when an anonymous administrator wrote it.
    sender_chat_id: int | None = None

    @property
    def quoted_text(self) -> str | None:
        """What the user replied to, for the prompt: the quoted part, else the whole replied
        message's text; None for no reply, or for a topic's root (every topic message
        "replies" to the service message that opened its topic)."""
        if self.quote:
            return self.quote
        replied = self.reply_to
        if replied is None or not replied.text:
            return None
        if self.is_topic_message and replied.message_id == self.message_thread_id:
            return None
        return replied.text

    @property
    def is_group(self) -> bool:
        return self.chat_type in ("group", "supergroup")

    @property
    def topic(self) -> int | None:
        """The forum topic to answer in, or None (replies in a plain group carry no topic).
        Topic ids are message ids, so positive: any other is answered outside topics, never
        made a conversation whose id no turn could name (jobs/messages.py `turn_topic`)."""
        thread = self.message_thread_id
        return thread if self.is_topic_message and thread is not None and thread > 0 else None


@dataclass(frozen=True)
class ChatMemberChange:
    """`my_chat_member`: the bot's own status in a chat changed (added, removed, kicked, ...)."""

    update_id: int
    chat_id: int
    chat_type: str
    by_user_id: int | None
    old_status: str
    new_status: str
    date: int

    @property
    def present(self) -> bool:
        """Whether the bot is in the chat after the change."""
        return self.new_status not in ("left", "kicked")


@dataclass(frozen=True)
class Update:
    update_id: int
    message: IncomingMessage | None
    my_chat_member: ChatMemberChange | None = None


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


def _opt_int(obj: dict[str, Any], key: str, where: str) -> int | None:
    return None if obj.get(key) is None else _req_int(obj, key, where)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX


def _parse_entities(raw: object) -> tuple[MessageEntity, ...]:
    """Well-formed entities only (see the module docstring)."""
    if not isinstance(raw, list):
        return ()
    entities = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            continue
        offset, length = item.get("offset"), item.get("length")
        if not (_is_count(offset) and _is_count(length)):
            continue
        assert isinstance(offset, int) and isinstance(length, int)
        user = item.get("user")
        user_id = user.get("id") if isinstance(user, dict) else None
        if not (_is_count(user_id) or user_id is None):
            user_id = None
        entities.append(MessageEntity(clean_text(item["type"]), offset, length, user_id))
    return tuple(entities)


def _parse_replied(raw: object) -> RepliedMessage | None:
    if not isinstance(raw, dict):
        return None
    message_id = raw.get("message_id")
    if not _is_count(message_id):
        return None
    assert isinstance(message_id, int)
    sender = raw.get("from")
    from_id = sender.get("id") if isinstance(sender, dict) else None
    text = raw.get("text", raw.get("caption"))
    return RepliedMessage(
        message_id=message_id,
        from_user_id=from_id if _is_count(from_id) else None,
        from_is_bot=isinstance(sender, dict) and sender.get("is_bot") is True,
        text=clean_text(text) if isinstance(text, str) else None,
    )


def _parse_quote(raw: object) -> str | None:
    """The text of a TextQuote; a malformed one is no quote (the message itself stands)."""
    text = raw.get("text") if isinstance(raw, dict) else None
    return clean_text(text) if isinstance(text, str) and text else None


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
    entities = _parse_entities(msg.get("entities"))
    kind: MessageKind
    if text is not None:
        kind = "text"
    else:
        kind = next((k for k in _MEDIA_KINDS if msg.get(k) is not None), "other")
        text = _opt_str(msg, "caption", "message")
        entities = _parse_entities(msg.get("caption_entities"))

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
        entities=entities,
        reply_to=_parse_replied(msg.get("reply_to_message")),
        message_thread_id=_opt_int(msg, "message_thread_id", "message"),
        is_topic_message=msg.get("is_topic_message") is True,
        migrate_to_chat_id=_opt_int(msg, "migrate_to_chat_id", "message"),
        migrate_from_chat_id=_opt_int(msg, "migrate_from_chat_id", "message"),
        quote=_parse_quote(msg.get("quote")),
        sender_chat_id=_sender_chat_id(msg.get("sender_chat")),
    )


def _sender_chat_id(raw: object) -> int | None:
    """`sender_chat.id`, or None when absent or unusable (it only grants admin rights, so a
    malformed one grants nothing)."""
    if not isinstance(raw, dict):
        return None
    chat_id = raw.get("id")
    if isinstance(chat_id, bool) or not isinstance(chat_id, int):
        return None
    return chat_id if INT64_MIN <= chat_id <= INT64_MAX else None


def _parse_my_chat_member(update_id: int, raw: object) -> ChatMemberChange | None:
    """The change, or None when its shape is not one (ignored like an unknown update kind);
    an id that could not be stored is invalid, as everywhere."""
    where = "my_chat_member"
    if not isinstance(raw, dict):
        return None
    chat, old, new = raw.get("chat"), raw.get("old_chat_member"), raw.get("new_chat_member")
    if not (isinstance(chat, dict) and isinstance(old, dict) and isinstance(new, dict)):
        return None
    sender = raw.get("from")
    statuses = [m.get("status") for m in (old, new)]
    if not all(isinstance(s, str) for s in statuses):
        return None
    chat_type = chat.get("type", "group")
    return ChatMemberChange(
        update_id=update_id,
        chat_id=_req_int(chat, "id", f"{where}.chat"),
        chat_type=clean_text(chat_type) if isinstance(chat_type, str) else "group",
        by_user_id=_req_int(sender, "id", f"{where}.from") if isinstance(sender, dict) else None,
        old_status=clean_text(str(statuses[0])),
        new_status=clean_text(str(statuses[1])),
        date=_req_int(raw, "date", where),
    )


def parse_update(data: object) -> Update:
    """Parse an Update; updates other than `message` and `my_chat_member` are valid but carry
    neither."""
    if not isinstance(data, dict):
        raise InvalidUpdate("invalid update: expected a JSON object")
    update_id = _req_int(data, "update_id", "update")
    if "my_chat_member" in data:
        change = _parse_my_chat_member(update_id, data["my_chat_member"])
        return Update(update_id=update_id, message=None, my_chat_member=change)  # may be None
    if "message" not in data:
        return Update(update_id=update_id, message=None)
    return Update(update_id=update_id, message=_parse_message(update_id, data["message"]))


# --- Bot API results the commands use: the command menu and a user's status in a chat --------

ADMIN_STATUSES = frozenset({"creator", "administrator"})


@dataclass(frozen=True)
class BotCommand:
    """One entry of the bot's command menu (setMyCommands / getMyCommands)."""

    command: str  # without the "/"; 1-32 lower-case letters, digits, underscores
    description: str  # 1-256 characters

    def to_api(self) -> dict[str, str]:
        return {"command": self.command, "description": self.description}


@dataclass(frozen=True)
class ChatMember:
    """getChatMember's answer, reduced to what the bot decides on."""

    user_id: int
    status: str  # creator, administrator, member, restricted, left, kicked

    @property
    def is_admin(self) -> bool:
        return self.status in ADMIN_STATUSES


def parse_bot_commands(raw: object) -> list[BotCommand]:
    """getMyCommands' result; raises ValueError when it is not a list of commands."""
    if not isinstance(raw, list):
        raise ValueError("getMyCommands: expected a list")
    commands = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("getMyCommands: expected objects")
        command, description = item.get("command"), item.get("description")
        if not isinstance(command, str) or not isinstance(description, str):
            raise ValueError("getMyCommands: command and description must be strings")
        commands.append(BotCommand(command, description))
    return commands


def parse_chat_member(raw: object) -> ChatMember:
    """getChatMember's result; raises ValueError when it has no user id or status."""
    if not isinstance(raw, dict):
        raise ValueError("getChatMember: expected an object")
    user, status = raw.get("user"), raw.get("status")
    user_id = user.get("id") if isinstance(user, dict) else None
    if isinstance(user_id, bool) or not isinstance(user_id, int) or not isinstance(status, str):
        raise ValueError("getChatMember: user.id and status are required")
    return ChatMember(user_id=user_id, status=status)
