"""Every Redis key aiconv uses, under one prefix so installs (and test runs) never collide."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "aiconv:"

    @property
    def updates(self) -> str:
        return f"{self.prefix}updates"

    @property
    def generate(self) -> str:
        return f"{self.prefix}generate"

    @property
    def replies(self) -> str:
        return f"{self.prefix}replies"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    def done(self, idempotency_key: str) -> str:
        """Marker that the job with this key has already handed its effect on."""
        return f"{self.prefix}done:{idempotency_key}"

    def poller_lock(self, bot_token: str) -> str:
        # The token itself is a secret; only a digest of it may appear in Redis.
        return f"{self.prefix}poller:{_digest(bot_token)}:lock"

    def poller_offset(self, bot_token: str) -> str:
        return f"{self.prefix}poller:{_digest(bot_token)}:offset"

    @property
    def typing_due(self) -> str:
        return f"{self.prefix}typing:due"

    @property
    def typing_deadline(self) -> str:
        return f"{self.prefix}typing:deadline"

    @property
    def turns_due(self) -> str:
        """Chats with unanswered messages, scored by when their turn may start."""
        return f"{self.prefix}turns:due"

    @property
    def turns_first(self) -> str:
        """Per chat: when its oldest unanswered message arrived."""
        return f"{self.prefix}turns:first"

    def turn(self, chat_id: int | str) -> str:
        """Held while one turn of the chat is being generated and delivered."""
        return f"{self.prefix}turn:{chat_id}"

    def latest(self, chat_id: int | str) -> str:
        """The key of the chat's newest generation; an older one in flight is stale."""
        return f"{self.prefix}latest:{chat_id}"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]
