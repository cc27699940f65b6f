"""The model's Markdown as Telegram text plus message entities; never loses a reply.

Invariant: `render_markdown` always returns something sendable. The text holds every visible
character the model wrote (markup turned into entities, nothing dropped), and every entity lies
within the text in UTF-16 code units (Telegram's unit), has a known type and, for a `text_link`,
a URL. When conversion fails or its result breaks that, the reply goes out as the model's raw
text without entities (`aiconv_reply_format_fallbacks_total`) rather than not at all.

Entities, not `parse_mode`: a `parse_mode` message that Telegram cannot parse is refused
outright, and escaping MarkdownV2 correctly is notoriously hard; entities are plain data that
this module checks before anything is sent.

The converter is telegramify-markdown (a CommonMark parser, pulldown-cmark via pyromark, that
emits text and entities with UTF-16 offsets). Picked by a measured comparison on 16 nasty
inputs (unclosed `**`, nested emphasis, fences containing backticks, an unclosed fence, links
with parentheses, HTML-like text, emoji and ZWJ sequences, RTL text, a 5,000-character code
block, tables, stray markers):

- telegramify-markdown 1.4: every result valid; 6 ms for all 16; drops inline/block HTML
  (`use <div> tags` lost `<div>`) -- fixed here by escaping HTML before conversion.
- markdown-it-py + sulguk (Markdown -> HTML -> entities): 4 of 16 invalid or failed (code
  entities inside pre, a table raised `Unsupported tag`), a heading's text lost; 21 ms.
- chatgpt-md-converter + sulguk: 4 of 16 invalid (code inside pre, a zero-length italic for
  stray markers); 9 ms.

HTML is not Telegram's business here: the model writing `<div>` means the text `<div>`, so each
`<` that the parser would read as HTML is backslash-escaped first (code spans and blocks are
left alone: the parser says which ranges are HTML).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyromark
import structlog
import telegramify_markdown
from telegramify_markdown.config import RenderConfig
from telegramify_markdown.converter import STANDARD_OPTIONS

from aiconv.observability.metrics import REPLY_FORMAT_FALLBACKS
from aiconv.telegram.models import clean_text

log = structlog.get_logger(__name__)

# What the converter may produce and aiconv sends: the formatting a model writes.
SENT_TYPES = frozenset(
    {
        "bold",
        "italic",
        "underline",
        "strikethrough",
        "spoiler",
        "blockquote",
        "expandable_blockquote",
        "code",
        "pre",
        "text_link",
    }
)
# Telegram's entity types (Bot API MessageEntity.type); anything else is refused by Telegram.
ENTITY_TYPES = SENT_TYPES | {
    "mention",
    "hashtag",
    "cashtag",
    "bot_command",
    "url",
    "email",
    "phone_number",
    "text_mention",
    "custom_emoji",
    "date_time",
}
HTML_ESCAPE_PASSES = 3  # escaping HTML can reveal more HTML only through odd nesting


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts offsets and the 4096 limit."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass(frozen=True)
class Entity:
    """A Telegram message entity; `offset` and `length` count UTF-16 code units."""

    type: str
    offset: int
    length: int
    url: str | None = None
    language: str | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "offset": self.offset, "length": self.length}
        if self.url is not None:
            out["url"] = self.url
        if self.language is not None:
            out["language"] = self.language
        return out


@dataclass(frozen=True)
class FormattedText:
    """Text as Telegram shows it, and its entities (UTF-16 offsets into `text`)."""

    text: str
    entities: tuple[Entity, ...] = field(default=())

    @classmethod
    def plain(cls, text: str) -> FormattedText:
        return cls(text, ())


def entity_problems(text: str, entities: Iterable[Entity]) -> list[str]:
    """Why Telegram would refuse these entities for `text` (empty: they are valid)."""
    units = text.encode("utf-16-le", "surrogatepass")
    size = len(units) // 2

    def inside_pair(at: int) -> bool:  # at a low surrogate: between the two halves of a pair
        if at <= 0 or at >= size:
            return False
        return 0xDC00 <= int.from_bytes(units[2 * at : 2 * at + 2], "little") <= 0xDFFF

    problems = []
    for entity in entities:
        where = f"{entity.type}@{entity.offset}+{entity.length}"
        if entity.type not in ENTITY_TYPES:
            problems.append(f"{where}: unknown type")
        if entity.offset < 0 or entity.length <= 0 or entity.end > size:
            problems.append(f"{where}: outside the text ({size} UTF-16 units)")
        elif inside_pair(entity.offset) or inside_pair(entity.end):
            problems.append(f"{where}: splits a surrogate pair")
        if entity.type == "text_link" and not entity.url:
            problems.append(f"{where}: text_link without url")
    return problems


class MarkdownRenderer:
    """Converts the model's Markdown; one per process (its converter config is its own)."""

    def __init__(self) -> None:
        # Isolated: the library's global config is shared mutable state.
        self._config = RenderConfig.isolated()

    def render(self, markdown: str) -> FormattedText:
        """Text and entities for `markdown`; its raw text, unformatted, if conversion fails."""
        markdown = clean_text(markdown)  # a lone surrogate can be neither parsed nor sent
        try:
            text, raw_entities = telegramify_markdown.convert(
                escape_html(markdown), config=self._config
            )
            entities = tuple(
                Entity(e.type, e.offset, e.length, e.url, e.language)
                for e in raw_entities
                if e.type in SENT_TYPES
            )
        except Exception as error:  # any converter bug must not lose the reply
            REPLY_FORMAT_FALLBACKS.labels("convert_error").inc()
            # The type only: the error's text would carry the reply's words into the log.
            log.warning(
                "markdown conversion failed; sent as plain text", error=type(error).__name__
            )
            return FormattedText.plain(markdown)
        if markdown.strip() and not text.strip():
            REPLY_FORMAT_FALLBACKS.labels("empty").inc()
            return FormattedText.plain(markdown)
        problems = entity_problems(text, entities)
        if problems:
            REPLY_FORMAT_FALLBACKS.labels("invalid").inc()
            log.warning("markdown conversion gave invalid entities", problems=problems[:5])
            return FormattedText.plain(markdown)
        return FormattedText(text, entities)


_LT = re.compile(rb"<")


def escape_html(markdown: str) -> str:
    """`markdown` with each `<` that would start HTML backslash-escaped, so it stays text."""
    for _ in range(HTML_ESCAPE_PASSES):
        source = markdown.encode("utf-8")
        ranges = _html_ranges(markdown)
        if not ranges:
            return markdown
        pieces: list[bytes] = []
        last = 0
        for start, end in ranges:
            pieces.append(source[last:start])
            pieces.append(_LT.sub(rb"\\<", source[start:end]))
            last = end
        pieces.append(source[last:])
        markdown = b"".join(pieces).decode("utf-8")
    return markdown


def _html_ranges(markdown: str) -> Sequence[tuple[int, int]]:
    """UTF-8 byte ranges the CommonMark parser reads as HTML, in order, not overlapping."""
    ranges: list[tuple[int, int]] = []
    for event, span in pyromark.events_with_range(markdown, options=STANDARD_OPTIONS):
        if isinstance(event, dict) and ("Html" in event or "InlineHtml" in event):
            start, end = span["start"], span["end"]
            if not ranges or start >= ranges[-1][1]:
                ranges.append((start, end))
    return ranges
