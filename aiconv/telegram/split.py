"""Split long replies into Telegram-sized messages at natural boundaries."""

from __future__ import annotations

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


def split_message(text: str, limit: int = 4096) -> list[str]:
    """Split `text` into stripped, non-empty parts of at most `limit` characters.

    Prefers paragraph breaks, then line breaks, then sentence ends, then any whitespace;
    only a single word longer than `limit` is cut mid-word. Only whitespace at the cuts
    is lost.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    rest = text.strip()
    parts: list[str] = []
    while len(rest) > limit:
        # Prefer a cut in the second half so a stray early boundary doesn't yield a tiny part.
        cut = _find_cut(rest, limit, limit // 2) or _find_cut(rest, limit, 1) or limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts
