"""Markdown -> Telegram text + entities: nasty inputs render validly, nothing visible is lost,
and a conversion failure falls back to the raw text."""

from __future__ import annotations

import re

import pytest
import telegramify_markdown
from hypothesis import given, settings
from hypothesis import strategies as st

from aiconv.observability.metrics import REPLY_FORMAT_FALLBACKS
from aiconv.telegram.formatting import (
    Entity,
    FormattedText,
    MarkdownRenderer,
    entity_problems,
    escape_html,
    utf16_len,
)


@pytest.fixture(scope="module")
def renderer() -> MarkdownRenderer:
    return MarkdownRenderer()


def covered(formatted: FormattedText, kind: str) -> list[str]:
    """The texts covered by entities of `kind`, in order."""
    units = formatted.text.encode("utf-16-le")
    return [
        units[2 * e.offset : 2 * e.end].decode("utf-16-le")
        for e in formatted.entities
        if e.type == kind
    ]


def test_bold_italic_code_and_links_become_entities(renderer: MarkdownRenderer) -> None:
    out = renderer.render(
        "Use **bold**, _italic_ and `code`, see [the docs](https://example.com/a_(b))."
    )
    assert out.text == "Use bold, italic and code, see the docs."
    assert covered(out, "bold") == ["bold"]
    assert covered(out, "italic") == ["italic"]
    assert covered(out, "code") == ["code"]
    [link] = [e for e in out.entities if e.type == "text_link"]
    assert link.url == "https://example.com/a_(b)"  # parentheses in a URL survive


def test_a_fenced_block_is_pre_with_its_language_and_backticks_inside(
    renderer: MarkdownRenderer,
) -> None:
    out = renderer.render("Try:\n\n```js\nconst s = `tpl ${x}`;\n```\n\nDone.")
    assert "const s = `tpl ${x}`;" in covered(out, "pre")[0]
    [pre] = [e for e in out.entities if e.type == "pre"]
    assert pre.language == "js"
    assert out.text.endswith("Done.")


@pytest.mark.parametrize(
    ("markdown", "visible"),
    [
        ("This is **never closed. Still here.", "This is **never closed. Still here."),
        ("Compare a < b > c, use <div> tags", "Compare a < b > c, use <div> tags"),
        ("<script>alert(1)</script> done", "<script>alert(1)</script> done"),
        ("<div>\n**x**\n</div>", "<div>\nx\n</div>"),
        ("Here:\n```python\nprint(1)\nno end", "Here:\nprint(1)\nno end"),
        ("`<b>` stays", "<b> stays"),
        ("a \ud83d **b**", "a \ufffd b"),  # a lone surrogate can't be sent: replaced
    ],
)
def test_nasty_inputs_keep_their_visible_text(
    renderer: MarkdownRenderer, markdown: str, visible: str
) -> None:
    out = renderer.render(markdown)
    assert out.text == visible
    assert entity_problems(out.text, out.entities) == []


def test_astral_and_rtl_offsets_count_utf16_units(renderer: MarkdownRenderer) -> None:
    out = renderer.render("😀👨‍👩‍👧 **bold 👍🏽** then **שלום** and _مرحبا_")
    assert covered(out, "bold") == ["bold 👍🏽", "שלום"]
    assert covered(out, "italic") == ["مرحبا"]
    assert entity_problems(out.text, out.entities) == []


def test_a_long_code_block_is_one_pre_entity(renderer: MarkdownRenderer) -> None:
    body = "\n".join(f"line_{n} = `{n}` ** 2  # <not html>" for n in range(200))
    out = renderer.render(f"```python\n{body}\n```")
    assert out.text == body
    assert [e.type for e in out.entities] == ["pre"]
    assert out.entities[0].length == utf16_len(body)


def test_a_converter_failure_sends_the_raw_text(
    renderer: MarkdownRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(markdown: str, **_: object) -> tuple[str, list[object]]:
        raise RuntimeError("converter bug")

    before = REPLY_FORMAT_FALLBACKS.labels("convert_error")._value.get()
    monkeypatch.setattr(telegramify_markdown, "convert", broken)
    assert renderer.render("**hi**") == FormattedText("**hi**", ())
    assert REPLY_FORMAT_FALLBACKS.labels("convert_error")._value.get() == before + 1


def test_invalid_entities_from_the_converter_send_the_raw_text(
    renderer: MarkdownRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Bad:
        type, offset, length, url, language = "bold", 0, 99, None, None

    monkeypatch.setattr(telegramify_markdown, "convert", lambda markdown, **_: ("hi", [Bad()]))
    assert renderer.render("**hi**") == FormattedText("**hi**", ())


def test_entity_problems_names_what_telegram_refuses() -> None:
    text = "a😀b"  # 4 UTF-16 units; the emoji is units 1-2
    assert entity_problems(text, [Entity("bold", 0, 4)]) == []
    assert entity_problems(text, [Entity("bold", 0, 5)])
    assert entity_problems(text, [Entity("bold", 2, 1)])  # starts inside the surrogate pair
    assert entity_problems(text, [Entity("bold", 0, 0)])
    assert entity_problems(text, [Entity("blink", 0, 1)])
    assert entity_problems(text, [Entity("text_link", 0, 1)])  # no url


def test_escape_html_leaves_code_alone() -> None:
    assert escape_html("a <b> c") == "a \\<b> c"
    assert escape_html("`<b>` and\n\n```\n<div>\n```") == "`<b>` and\n\n```\n<div>\n```"
    assert escape_html("no html < here") == "no html < here"


# Markdown-ish text: every marker the converter reacts to, letters of several scripts, emoji.
_markdownish = st.lists(
    st.one_of(
        st.text(alphabet="abcXYZéשלוםمرحبا😀👍🏽", min_size=1, max_size=8),
        st.sampled_from(
            [
                "*",
                "**",
                "_",
                "__",
                "~~",
                "`",
                "```",
                "```\n",
                "\n",
                "\n\n",
                " ",
                "# ",
                "- ",
                "> ",
                "<",
                ">",
                "<div>",
                "</div>",
                "|",
                "||",
                "---",
                "\t",
            ]
        ),
    ),
    max_size=60,
).map("".join)


def _letters(text: str) -> str:
    return "".join(ch for ch in text if ch.isalpha())


# The rest of a line that opens a fence (in a list item or quote too) is its info string (the
# language): markup, not text.
_FENCE_INFO = re.compile(r"(?m)^([ \t>*+#|-]*(?:`{3,}|~{3,})).*$")


def _is_subsequence(short: str, long: str) -> bool:
    remaining = iter(long)
    return all(ch in remaining for ch in short)


@settings(max_examples=300, deadline=None)
@given(_markdownish)
def test_any_markdown_renders_valid_entities_and_keeps_every_letter(markdown: str) -> None:
    out = MarkdownRenderer().render(markdown)
    assert entity_problems(out.text, out.entities) == []
    # Every letter is shown, in order, except perhaps those of a fence's info string.
    shown = _letters(out.text)
    assert _is_subsequence(shown, _letters(markdown))
    assert _is_subsequence(_letters(_FENCE_INFO.sub(r"\1", markdown)), shown)
