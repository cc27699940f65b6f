"""Split long replies into Telegram-sized messages at natural boundaries, entities kept valid.

Invariants (checked by tests/unit/test_split_formatted.py with hypothesis):
- every part is non-empty, stripped, and at most `limit` long in the chosen measure (UTF-16
  code units for Telegram, whose offsets and 4096 limit count those);
- only whitespace at the cuts is lost: the parts, joined, hold every other character in order;
- cuts fall between Python characters, so never inside a surrogate pair (an astral character,
  e.g. an emoji, is one Python character and two UTF-16 units);
- each character keeps the formatting it had: an entity crossing a cut becomes one entity per
  part, every offset re-based to its part, so every part's entities lie within its text.
"""

from __future__ import annotations

from collections.abc import Callable

from aiconv.telegram.formatting import Entity, FormattedText, utf16_len

Measure = Callable[[str], int]

# (separator, keep) — `keep` chars of the separator stay with the left part (the
# sentence-ending punctuation); the rest is whitespace dropped at the cut.
_BOUNDARIES: tuple[tuple[str, int], ...] = (
    ("\n\n", 0),
    ("\n", 0),
    (". ", 1),
    ("! ", 1),
    ("? ", 1),
)


def _find_cut(text: str, limit: int, min_part: int) -> int | None:
    """Index where the left part ends (exclusive), or None if no boundary fits."""
    for sep, keep in _BOUNDARIES:
        # The left part text[:idx + keep] must be at most `limit` long.
        idx = text.rfind(sep, 1, limit - keep + len(sep))
        if idx >= 1 and idx + keep >= min_part:
            return idx + keep
    # Any whitespace (spaces, tabs, other line breaks): scan back from the limit.
    for idx in range(min(limit, len(text) - 1), 0, -1):
        if text[idx].isspace():
            return idx if idx >= min_part else None
    return None


def _fitting_chars(text: str, limit: int, measure: Measure) -> int:
    """How many leading characters of `text` fit in `limit` (at least one)."""
    if measure is len:
        return max(1, limit)
    used = 0
    for index, char in enumerate(text):
        used += measure(char)
        if used > limit:
            return max(1, index)
    return len(text)


def split_spans(text: str, limit: int, measure: Measure = len) -> list[tuple[int, int]]:
    """(start, end) indices into `text` of its parts; see `split_message`."""
    if limit < 1:
        raise ValueError("limit must be positive")
    start, end = 0, len(text)
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    spans: list[tuple[int, int]] = []
    while start < end and measure(text[start:end]) > limit:
        rest = text[start:end]
        fit = _fitting_chars(rest, limit, measure)
        # Prefer a cut in the second half so a stray early boundary doesn't yield a tiny part.
        cut = _find_cut(rest, fit, fit // 2) or _find_cut(rest, fit, 1) or fit
        left_end = start + cut
        while left_end > start and text[left_end - 1].isspace():
            left_end -= 1
        spans.append((start, left_end))
        start += cut
        while start < end and text[start].isspace():
            start += 1
    if start < end:
        spans.append((start, end))
    return spans


def split_message(text: str, limit: int = 4096, measure: Measure = len) -> list[str]:
    """Split `text` into stripped, non-empty parts of at most `limit` (by `measure`).

    Prefers paragraph breaks, then line breaks, then sentence ends, then any whitespace;
    only a single word longer than `limit` is cut mid-word. Only whitespace at the cuts
    is lost.
    """
    return [text[start:end] for start, end in split_spans(text, limit, measure)]


def split_formatted(formatted: FormattedText, limit: int = 4096) -> list[FormattedText]:
    """Parts of at most `limit` UTF-16 units, each with its share of the entities."""
    text = formatted.text
    spans = split_spans(text, limit, utf16_len)
    if not formatted.entities:
        return [FormattedText.plain(text[start:end]) for start, end in spans]
    # units_before[i]: UTF-16 offset of text[i]
    units_before = [0] * (len(text) + 1)
    for index, char in enumerate(text):
        units_before[index + 1] = units_before[index] + (2 if ord(char) > 0xFFFF else 1)
    parts = []
    for start, end in spans:
        low, high = units_before[start], units_before[end]
        entities = []
        for entity in formatted.entities:
            first, last = max(entity.offset, low), min(entity.end, high)
            if last > first:
                entities.append(
                    Entity(entity.type, first - low, last - first, entity.url, entity.language)
                )
        parts.append(FormattedText(text[start:end], tuple(entities)))
    return parts
