"""Parsed incoming messages for tests that start past parsing (store, access, addressing).

Invariant: `incoming_message()` is an ordinary private text message ("hi" from Ann, chat and user
1, message and update 1) with every field set, so a test names only the fields it is about and a
field added to `IncomingMessage` is filled in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiconv.telegram.models import IncomingMessage

PRIVATE_TEXT = IncomingMessage(
    update_id=1,
    chat_id=1,
    chat_type="private",
    user_id=1,
    username="ann",
    first_name="Ann",
    language_code="en",
    message_id=1,
    date=0,
    kind="text",
    text="hi",
)


def incoming_message(**fields: Any) -> IncomingMessage:
    """`PRIVATE_TEXT` with the given fields replaced."""
    return dataclasses.replace(PRIVATE_TEXT, **fields)
