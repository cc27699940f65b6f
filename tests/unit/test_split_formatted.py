"""split_formatted: parts within Telegram's limit in UTF-16 units, entities valid in each part,
every character keeping the formatting it had."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aiconv.telegram.formatting import Entity, FormattedText, entity_problems, utf16_len
from aiconv.telegram.split import split_formatted

_pieces = st.one_of(
    st.text(alphabet="abcé😀👍🏽𝔘שלוםمر", min_size=1, max_size=25),
    st.sampled_from([" ", "\n", "\n\n", ". ", "! ", "\t", "  "]),
)
texts = st.lists(_pieces, min_size=1, max_size=60).map("".join)
TYPES = ["bold", "italic", "code", "pre", "text_link"]


@st.composite
def formatted_texts(draw: st.DrawFn) -> FormattedText:
    """A text with valid entities: spans between character boundaries, possibly nested."""
    text = draw(texts)
    bounds = [0]
    for char in text:
        bounds.append(bounds[-1] + utf16_len(char))
    entities = []
    for _ in range(draw(st.integers(0, 6))):
        start, end = sorted(draw(st.lists(st.sampled_from(bounds), min_size=2, max_size=2)))
        if end > start:
            kind = draw(st.sampled_from(TYPES))
            url = "https://example.com/x" if kind == "text_link" else None
            entities.append(Entity(kind, start, end - start, url=url))
    return FormattedText(text, tuple(entities))


def styled_characters(formatted: FormattedText) -> list[tuple[str, frozenset[str]]]:
    """Each non-whitespace character with the entity types covering it."""
    out, unit = [], 0
    for char in formatted.text:
        kinds = frozenset(
            e.type for e in formatted.entities if e.offset <= unit < e.offset + e.length
        )
        if not char.isspace():
            out.append((char, kinds))
        unit += utf16_len(char)
    return out


@settings(max_examples=500, deadline=None)
@given(formatted_texts(), st.integers(min_value=2, max_value=60))
def test_parts_fit_keep_valid_entities_and_every_character_its_style(
    formatted: FormattedText, limit: int
) -> None:
    parts = split_formatted(formatted, limit)
    for part in parts:
        assert part.text and part.text == part.text.strip()
        assert utf16_len(part.text) <= limit
        assert entity_problems(part.text, part.entities) == []
    joined = [pair for part in parts for pair in styled_characters(part)]
    assert joined == styled_characters(formatted)


def test_an_entity_crossing_a_cut_becomes_one_per_part_rebased() -> None:
    text = "😀 " + "word " * 10 + "end"
    formatted = FormattedText(text, (Entity("bold", 0, utf16_len(text)),))
    parts = split_formatted(formatted, 20)
    assert len(parts) > 1
    for part in parts:
        assert part.entities == (Entity("bold", 0, utf16_len(part.text)),)


def test_the_limit_counts_utf16_units_not_characters() -> None:
    emoji = "😀" * 3000  # 3000 characters, 6000 UTF-16 units, no whitespace to cut at
    parts = split_formatted(FormattedText(emoji, (Entity("italic", 0, 6000),)), 4096)
    assert [utf16_len(p.text) for p in parts] == [4096, 1904]
    assert [p.entities for p in parts] == [
        (Entity("italic", 0, 4096),),
        (Entity("italic", 0, 1904),),
    ]


def test_a_long_code_block_is_cut_into_pre_parts_at_line_breaks() -> None:
    code = "\n".join(f"x_{n} = {n}" for n in range(800))
    text = "Here:\n" + code
    pre = Entity("pre", 6, utf16_len(code), language="python")
    parts = split_formatted(FormattedText(text, (pre,)), 4096)
    assert len(parts) == 3
    for part in parts:
        [entity] = [e for e in part.entities if e.type == "pre"]
        assert entity.language == "python"
        assert entity.offset + entity.length == utf16_len(part.text)
    assert "\n".join(p.text for p in parts) == text
