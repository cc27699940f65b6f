"""Parsing of Telegram bot commands ("/start", "/persona be brief", "/reset@MyBot").

Which commands exist, and what the bot's menu (setMyCommands) says about them, is decided here
and nowhere else: the help text, the menu and the parser all read COMMANDS, so they cannot drift.

In groups a bare `/cmd` may be meant for another bot (several bots share a group, and /help or
/stats are common names). So a bare command is taken as ours only when it is one of the basic
three every bot answers (`GROUP_BARE_COMMANDS`: /start, /help, /reset); any command is ours when
it is addressed to us by name (`/cmd@thisbot`) or the message is otherwise addressed to the bot
(an @mention before it, a reply to one of its messages: see conversation/addressing.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Telegram command names are 1-32 latin letters, digits or underscores.
_COMMAND_RE = re.compile(
    r"/(?P<name>[A-Za-z0-9_]{1,32})(?:@(?P<bot>[A-Za-z0-9_]+))?(?:\s+(?P<args>.*))?",
    re.DOTALL,
)

# name -> the description shown by /help and in the bot's command menu (setMyCommands: 3-256
# characters, lower-case names). Order is the menu's order.
COMMANDS: dict[str, str] = {
    "start": "say hello and see what I can do",
    "help": "list the commands",
    "reset": "forget our conversation so far and start afresh",
    "retry": "write the last answer again (a new reply; nothing sent is changed)",
    "persona": "show this chat's persona; /persona <text> sets it, /persona reset restores it",
    "stats": "messages and tokens in this chat, today and in total, and your quota",
}

# Bare in a group, only these are ours (any bot is expected to answer them).
GROUP_BARE_COMMANDS = frozenset({"start", "help", "reset"})


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    explicit: bool = False  # addressed by name: /cmd@thisbot

    def addressed_in_group(self) -> bool:
        """In a group a bare /cmd may be meant for another bot: it is ours only when it is one
        of the basic three. `/cmd@thisbot` is always ours (an unknown one gets "unknown
        command")."""
        return self.explicit or self.name in GROUP_BARE_COMMANDS

    @property
    def known(self) -> bool:
        return self.name in COMMANDS


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


def menu() -> list[tuple[str, str]]:
    """The bot's command menu, as setMyCommands takes it: (command, description) in order."""
    return list(COMMANDS.items())
