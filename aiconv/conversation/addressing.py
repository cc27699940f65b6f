"""Whether a group message is meant for the bot, and its text without the bot's mention.

In a group the bot answers only when addressed (GROUP_MODE=mention, the default): an @mention of
its username (a `mention` entity), a `text_mention` of its user id (users without a username are
mentioned so), or a reply to one of its messages. Commands are decided by their own rule
(aiconv.conversation.commands): `/cmd@thisbot`, or a bare `/cmd` that this bot knows. With
GROUP_MODE=all every group message is addressed. Private chats are always addressed.

Telegram counts entity offsets and lengths in UTF-16 code units, so an emoji before a mention
shifts it by two; Python indexes code points. Offsets are converted exactly, and an entity that
does not fall on character boundaries or outside the text is ignored, never guessed at: a
malformed entity can make a message unaddressed, never crash its handling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiconv.telegram.models import IncomingMessage, MessageEntity

GroupMode = Literal["mention", "all"]

# What is left between the text and a removed leading mention: "@bot, hi" -> "hi".
_LEADING_JOINERS = re.compile(r"^[\s,:;.!-]+")
_SPACE_RUNS = re.compile(r"[ \t]{2,}")


@dataclass(frozen=True)
class BotIdentity:
    """The bot itself, from getMe."""

    user_id: int | None  # None until getMe answers: replies and text_mentions go unrecognised
    username: str  # without the leading "@"


@dataclass(frozen=True)
class Addressing:
    addressed: bool
    text: str  # the message's text without the bot's mentions


def utf16_span(text: str, offset: int, length: int) -> tuple[int, int] | None:
    """The code-point slice ``[start, end)`` of a UTF-16 ``offset``/``length``, or None when
    either end falls inside a character (half a surrogate pair) or beyond the text."""
    if offset < 0 or length < 0:
        return None
    start = end = None
    units = 0
    for index, char in enumerate(text):
        if units == offset:
            start = index
        if units == offset + length:
            end = index
        units += 2 if ord(char) > 0xFFFF else 1
    if units == offset:
        start = len(text)
    if units == offset + length:
        end = len(text)
    if start is None or end is None:
        return None
    return start, end


def _mentions_bot(text: str, entity: MessageEntity, bot: BotIdentity) -> tuple[int, int] | None:
    """The span of ``entity`` when it mentions the bot."""
    if entity.type == "text_mention":
        if bot.user_id is None or entity.user_id != bot.user_id:
            return None
    elif entity.type != "mention":
        return None
    span = utf16_span(text, entity.offset, entity.length)
    if span is None:
        return None
    if entity.type == "mention" and text[span[0] : span[1]].lower() != f"@{bot.username}".lower():
        return None
    return span


def strip_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` without the (possibly overlapping) spans, tidied where they were cut out."""
    keep = [True] * len(text)
    for start, end in spans:
        for index in range(start, end):
            keep[index] = False
    rest = "".join(char for char, kept in zip(text, keep, strict=True) if kept)
    rest = _SPACE_RUNS.sub(" ", rest)
    return _LEADING_JOINERS.sub("", rest).strip()


def address(
    message: IncomingMessage, bot: BotIdentity | None, group_mode: GroupMode = "mention"
) -> Addressing:
    """Whether ``message`` is addressed to ``bot``, and its text without the bot's mentions.

    Without the bot's identity (getMe has not answered yet) a group message counts as addressed
    only in GROUP_MODE=all.
    """
    text = message.text or ""
    if bot is None:
        return Addressing(not message.is_group or group_mode == "all", text)
    spans = [s for e in message.entities if (s := _mentions_bot(text, e, bot)) is not None]
    stripped = strip_spans(text, spans) if spans else text
    if not message.is_group or group_mode == "all":
        return Addressing(True, stripped)
    replied = message.reply_to
    replies_to_bot = (
        replied is not None and bot.user_id is not None and replied.from_user_id == bot.user_id
    )
    return Addressing(bool(spans) or replies_to_bot, stripped)
