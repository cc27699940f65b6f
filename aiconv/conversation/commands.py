"""Parsing of Telegram bot commands ("/start", "/help foo", "/reset@MyBot")."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Telegram command names are 1-32 latin letters, digits or underscores.
_COMMAND_RE = re.compile(
    r"/(?P<name>[A-Za-z0-9_]{1,32})(?:@(?P<bot>[A-Za-z0-9_]+))?(?:\s+(?P<args>.*))?",
    re.DOTALL,
)

KNOWN_COMMANDS: dict[str, str] = {
    "start": "say hello and see what I can do",
    "help": "list the commands",
    "reset": "forget our conversation so far and start afresh",
}


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    explicit: bool = False  # addressed by name: /cmd@thisbot

    def addressed_in_group(self) -> bool:
        """In a group a bare /cmd may be meant for another bot: it is ours only when we know
        it. `/cmd@thisbot` is always ours (an unknown one gets "unknown command")."""
        return self.explicit or self.name in KNOWN_COMMANDS


def parse_command(text: str, bot_username: str | None = None) -> Command | None:
    """Return the command in ``text``, or None if it is not one addressed to this bot.

    ``bot_username`` may be given with or without its leading "@".
    """
    match = _COMMAND_RE.fullmatch(text.lstrip())
    if match is None:
        return None
    addressed = match.group("bot")
    # In groups a command may be meant for another bot; it is not ours to answer.
    if (
        addressed is not None
        and bot_username is not None
        and addressed.lower() != bot_username.lstrip("@").lower()
    ):
        return None
    return Command(
        name=match.group("name").lower(),
        args=(match.group("args") or "").strip(),
        explicit=addressed is not None,
    )
