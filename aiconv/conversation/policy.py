"""Who the bot answers, where, and how much: the settings of groups and access control.

One frozen value read from the environment by aiconv.config (GROUP_MODE, GROUP_CONTEXT_MESSAGES,
ACCESS_MODE, ALLOWED_USER_IDS, ALLOWED_CHAT_IDS, USER_DAILY_TOKENS, USER_MESSAGES_PER_MINUTE);
the worker enforces it before anything is queued (aiconv.worker.access).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiconv.conversation.addressing import GroupMode

AccessMode = Literal["open", "allowlist"]


@dataclass(frozen=True)
class ChatPolicy:
    group_mode: GroupMode = "mention"
    group_context_messages: int = 5  # unaddressed group messages kept for the prompt; 0: none
    access_mode: AccessMode = "open"
    allowed_user_ids: frozenset[int] = frozenset()
    allowed_chat_ids: frozenset[int] = frozenset()
    user_daily_tokens: int = 0  # generated tokens per user per UTC day; 0: unlimited
    user_messages_per_minute: int = 0  # messages per user per chat a minute; 0: unlimited

    def allowed_by_settings(self, user_id: int | None, chat_id: int) -> bool:
        """Allowed without asking the database (open mode, or listed in the settings)."""
        if self.access_mode == "open":
            return True
        return chat_id in self.allowed_chat_ids or (
            user_id is not None and user_id in self.allowed_user_ids
        )


def parse_ids(value: str | None) -> frozenset[int]:
    """Comma-separated Telegram ids (chat ids of groups are negative); raises ValueError."""
    ids = set()
    for item in (value or "").split(","):
        item = item.strip()
        if item:
            ids.add(int(item))
    return frozenset(ids)
