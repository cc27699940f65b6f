from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from aiconv.conversation.history import Turn
from aiconv.conversation.prompt import DEFAULT_PERSONA, QUOTE_MAX_CHARS, build_messages, with_quote


def test_basic() -> None:
    history = [Turn("user", "hi"), Turn("assistant", "hello!")]
    assert build_messages("Be nice.", history, "how are you?") == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how are you?"},
    ]


def test_blank_persona_omitted() -> None:
    assert build_messages("  \n", [], "hi") == [{"role": "user", "content": "hi"}]


def test_user_text_merged_with_trailing_user_turn() -> None:
    history = [Turn("user", "one"), Turn("user", "two")]
    assert build_messages("", history, "three") == [{"role": "user", "content": "one\ntwo\nthree"}]


def test_without_user_text() -> None:
    history = [Turn("user", "hi")]
    assert build_messages("P", history) == [
        {"role": "system", "content": "P"},
        {"role": "user", "content": "hi"},
    ]


def test_default_persona() -> None:
    assert DEFAULT_PERSONA.strip()
    assert build_messages(DEFAULT_PERSONA, [])[0]["role"] == "system"
    # Replies render Markdown now: the persona invites it instead of forbidding it.
    assert "no markdown" not in DEFAULT_PERSONA.lower()
    assert "Markdown" in DEFAULT_PERSONA


def test_a_reply_quotes_what_it_answers_before_the_text() -> None:
    assert with_quote("why?", None) == "why?"
    assert with_quote("why?", "  ") == "why?"
    assert with_quote("why?", "Paris.\n\nIt is big.") == "> Paris.\n>\n> It is big.\n\nwhy?"


@given(st.text(max_size=2000), st.text(min_size=1, max_size=50))
def test_a_quote_is_bounded_and_the_text_kept_whole(quoted: str, text: str) -> None:
    turn = with_quote(text, quoted)
    assert turn.endswith(text)
    quote_lines = turn[: len(turn) - len(text)]
    # Every quoted line is marked, and the quote's own text is at most the bound.
    assert all(line.startswith(">") for line in quote_lines.strip("\n").splitlines())
    shown = "".join(line[2:] for line in quote_lines.strip("\n").splitlines())
    assert len(shown) <= QUOTE_MAX_CHARS


roles = st.sampled_from(["system", "user", "assistant"])
turns_st = st.lists(st.builds(Turn, role=roles, text=st.text(max_size=20)), max_size=10)


@given(st.text(max_size=20), turns_st, st.none() | st.text(max_size=20))
def test_alternating_roles(persona: str, history: list[Turn], user_text: str | None) -> None:
    messages = build_messages(persona, history, user_text)
    for left, right in pairwise(messages):
        assert left["role"] != right["role"]
    if user_text is not None:
        assert messages[-1]["role"] == "user"
        assert messages[-1]["content"].endswith(user_text)
    if not persona.strip() and not history and user_text is None:
        assert messages == []
