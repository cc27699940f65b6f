import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiconv.conversation import texts
from aiconv.conversation.commands import KNOWN_COMMANDS, Command, parse_command


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


def test_in_groups_bare_commands_are_ours_only_when_known() -> None:
    """A bare /cmd in a group may belong to another bot: only the ones we know are answered;
    /cmd@thisbot always is (an unknown one gets "unknown command")."""
    assert parse_command("/help").addressed_in_group()  # type: ignore[union-attr]
    assert not parse_command("/weather").addressed_in_group()  # type: ignore[union-attr]
    assert parse_command("/weather@MyBot", "MyBot").addressed_in_group()  # type: ignore[union-attr]


def test_known_commands() -> None:
    assert set(KNOWN_COMMANDS) == {"start", "help", "reset"}
    for name in KNOWN_COMMANDS:
        assert parse_command(f"/{name}") == Command(name, "")


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
    for name in KNOWN_COMMANDS:
        assert f"/{name}" in texts.help_text()
    for reply in (
        texts.RESET_DONE,
        texts.TEXT_ONLY,
        texts.UNKNOWN_COMMAND,
        texts.GENERATION_FAILED,
    ):
        assert reply.strip()
