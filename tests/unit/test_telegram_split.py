"""split_message: Telegram-sized parts cut at natural boundaries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aiconv.telegram.split import split_message


def _non_ws(s: str) -> str:
    return "".join(ch for ch in s if not ch.isspace())


# Words, punctuation and assorted whitespace so every boundary kind gets exercised.
_pieces = st.one_of(
    st.text(alphabet="abcxyzé😀", min_size=1, max_size=30),
    st.sampled_from([" ", "  ", "\n", "\n\n", "\n \n", ". ", "! ", "? ", "\t", ".", "\r\n"]),
)
texts = st.lists(_pieces, max_size=80).map("".join)


@settings(max_examples=400)
@given(texts, st.integers(min_value=1, max_value=120))
def test_parts_fit_are_stripped_and_lose_only_whitespace(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    for part in parts:
        assert 0 < len(part) <= limit
        assert part == part.strip()
    assert _non_ws("".join(parts)) == _non_ws(text)


@given(st.text(max_size=200))
def test_any_unicode_text(text: str) -> None:
    parts = split_message(text, 50)
    assert all(0 < len(p) <= 50 and p.strip() == p for p in parts)
    assert _non_ws("".join(parts)) == _non_ws(text)


@given(texts)
def test_short_text_is_one_stripped_part(text: str) -> None:
    if text.strip():
        assert split_message(text, 10_000) == [text.strip()]
    else:
        assert split_message(text, 10_000) == []


def test_empty_and_whitespace() -> None:
    assert split_message("") == []
    assert split_message(" \n\t \n") == []


def test_default_limit_is_telegram_max() -> None:
    text = "word " * 2000
    parts = split_message(text)
    assert len(parts) == 3
    assert all(len(p) <= 4096 for p in parts)


def test_prefers_paragraph_boundary() -> None:
    text = "First paragraph line one.\nline two.\n\nSecond paragraph here."
    assert split_message(text, 45) == [
        "First paragraph line one.\nline two.",
        "Second paragraph here.",
    ]


def test_prefers_line_break_over_sentence() -> None:
    text = "Alpha beta. Gamma delta\nepsilon zeta eta"
    assert split_message(text, 30) == ["Alpha beta. Gamma delta", "epsilon zeta eta"]


def test_sentence_end_keeps_punctuation() -> None:
    text = "This is one sentence! And here is another one? Yes."
    assert split_message(text, 30) == ["This is one sentence!", "And here is another one? Yes."]


def test_falls_back_to_spaces() -> None:
    assert split_message("aaa bbb ccc ddd", 8) == ["aaa bbb", "ccc ddd"]


def test_hard_cuts_only_overlong_words() -> None:
    assert split_message("hi abcdefghijkl yo", 5) == ["hi", "abcde", "fghij", "kl yo"]


def test_avoids_tiny_first_part_when_later_boundary_fits() -> None:
    text = "Hi.\n\n" + "word " * 30
    parts = split_message(text, 60)
    # The early paragraph break is in the first half; a later space gives a fuller part.
    assert len(parts[0]) > 30
