import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiconv.conversation import texts
from aiconv.conversation.addressing import BotIdentity, address
from aiconv.conversation.commands import (
    COMMANDS,
    GROUP_BARE_COMMANDS,
    Command,
    menu,
    parse_command,
)
from aiconv.telegram.models import IncomingMessage, MessageEntity
from aiconv.worker.commands import persona_action


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/start", Command("start", "")),
        ("/help foo", Command("help", "foo")),
        ("/help   foo bar  ", Command("help", "foo bar")),
        ("  /START", Command("start", "")),
        ("/reset@MyBot", Command("reset", "", explicit=True)),
        ("/reset@mybot now", Command("reset", "now", explicit=True)),
        ("/say hi\nthere", Command("say", "hi\nthere")),
    ],
)
def test_parses_commands(text: str, expected: Command) -> None:
    assert parse_command(text, "MyBot") == expected


@pytest.mark.parametrize("text", ["hello", "/", "/ start", "a /start", "", "   ", "/start-x"])
def test_non_commands(text: str) -> None:
    assert parse_command(text) is None


def test_addressed_to_other_bot() -> None:
    assert parse_command("/start@OtherBot", "MyBot") is None
    assert parse_command("/start@OtherBot", "@otherbot") == Command("start", "", explicit=True)


def test_any_bot_when_username_unknown() -> None:
    assert parse_command("/start@OtherBot") == Command("start", "", explicit=True)


def test_in_groups_bare_commands_are_ours_only_when_basic() -> None:
    """A bare /cmd in a group may belong to another bot: only /start, /help and /reset are
    answered bare; /cmd@thisbot always is (an unknown one gets "unknown command")."""
    assert parse_command("/help").addressed_in_group()  # type: ignore[union-attr]
    assert not parse_command("/weather").addressed_in_group()  # type: ignore[union-attr]
    assert not parse_command("/stats").addressed_in_group()  # type: ignore[union-attr]
    assert not parse_command("/persona be brief").addressed_in_group()  # type: ignore[union-attr]
    assert parse_command("/weather@MyBot", "MyBot").addressed_in_group()  # type: ignore[union-attr]
    assert parse_command("/stats@MyBot", "MyBot").addressed_in_group()  # type: ignore[union-attr]
    assert {"start", "help", "reset"} == GROUP_BARE_COMMANDS


def test_known_commands_are_the_menu_and_the_help() -> None:
    assert set(COMMANDS) == {"start", "help", "reset", "retry", "persona", "stats"}
    assert [name for name, _ in menu()] == list(COMMANDS)
    for name in COMMANDS:
        assert parse_command(f"/{name}") == Command(name, "")
        assert f"/{name}" in texts.help_text()
    for name, description in menu():
        # What setMyCommands accepts: lower-case names, 1-32 chars; descriptions 1-256 chars.
        assert re.fullmatch(r"[a-z0-9_]{1,32}", name)
        assert 1 <= len(description) <= 256


def test_persona_keeps_its_text_lines_and_case() -> None:
    text = "/persona@MyBot You are Captain Nemo.\nSpeak like a sailor.  "
    assert parse_command(text, "MyBot") == Command(
        "persona", "You are Captain Nemo.\nSpeak like a sailor.", explicit=True
    )


@pytest.mark.parametrize(
    ("args", "action"),
    [("", "show"), ("   ", "show"), ("reset", "reset"), (" RESET ", "reset"), ("be terse", "set")],
)
def test_persona_action(args: str, action: str) -> None:
    assert persona_action(args) == action


_names = st.from_regex(r"[A-Za-z0-9_]{1,32}", fullmatch=True)
_bots = st.none() | st.from_regex(r"[A-Za-z0-9_]{1,20}", fullmatch=True)
_args = st.text(st.characters(codec="utf-8"), max_size=60)


@given(_names, _bots, _args, st.sampled_from(["", " ", "  \n"]))
def test_a_built_command_parses_back(name: str, bot: str | None, args: str, lead: str) -> None:
    """Any well-formed `/name[@bot] args` parses to its parts (name lower-cased, args stripped),
    and is ours only when addressed to us or to no bot."""
    text = f"{lead}/{name}" + (f"@{bot}" if bot else "") + (f" {args}" if args else "")
    ours = parse_command(text, "MyBot")
    if bot is not None and bot.lower() != "mybot":
        assert ours is None
        return
    assert ours == Command(name.lower(), args.strip(), explicit=bot is not None)
    assert ours.addressed_in_group() == (bot is not None or name.lower() in GROUP_BARE_COMMANDS)


@given(st.text(), st.lists(st.tuples(st.integers(-5, 50), st.integers(-5, 50)), max_size=4))
def test_a_group_message_with_arbitrary_mentions_never_fails_command_handling(
    text: str, spans: list[tuple[int, int]]
) -> None:
    """Addressing strips mention entities (arbitrary, possibly malformed) before the text is
    parsed again as a command ("@bot /stats"): neither step raises, and a command found in the
    stripped text is a known shape."""
    message = IncomingMessage(
        update_id=1,
        chat_id=-5,
        chat_type="group",
        message_id=1,
        date=0,
        user_id=2,
        username=None,
        first_name=None,
        language_code=None,
        kind="text",
        text=text,
        entities=tuple(MessageEntity("mention", o, n) for o, n in spans),
    )
    addressing = address(message, BotIdentity(user_id=9, username="MyBot"))
    command = parse_command(addressing.text, "MyBot")
    if command is not None:
        assert re.fullmatch(r"[a-z0-9_]{1,32}", command.name)
        assert command.args == command.args.strip()


@given(st.text())
def test_never_raises(text: str) -> None:
    result = parse_command(text, "MyBot")
    if result is not None:
        assert result.name == result.name.lower()
        assert text.lstrip().startswith("/")


@given(st.text())
def test_plain_text_is_not_a_command(text: str) -> None:
    if not text.lstrip().startswith("/"):
        assert parse_command(text) is None


def test_texts() -> None:
    assert "Ann" in texts.greeting("Ann")
    assert "/help" in texts.greeting(None)
    assert "None" not in texts.greeting(None)
    assert texts.greeting("  ").startswith("Hi!")
    for name in COMMANDS:
        assert f"/{name}" in texts.help_text()
    for reply in (
        texts.RESET_DONE,
        texts.TEXT_ONLY,
        texts.UNKNOWN_COMMAND,
        texts.GENERATION_FAILED,
        texts.PERSONA_SET,
        texts.PERSONA_RESET,
        texts.PERSONA_ADMINS_ONLY,
        texts.NOTHING_TO_RETRY,
    ):
        assert reply.strip()
