"""Assembly of the chat-completion messages sent to the model."""

from __future__ import annotations

from collections.abc import Sequence

from aiconv.conversation.history import Turn, merge_consecutive

# Markdown is welcome: replies are sent as Telegram entities (telegram/formatting.py), so bold,
# code, lists and links render; headings and tables have no Telegram form and read poorly.
DEFAULT_PERSONA = (
    "You are a friendly, warm conversational partner chatting with someone on Telegram. "
    "Write the way a person types in a chat: natural sentences, short paragraphs. Telegram "
    "shows Markdown formatted, so use it where it helps: **bold** for what matters, `code` "
    "and fenced code blocks for code, lists for steps, links; no headings or tables. Be "
    "concise and natural, answer what was asked, and ask a question back now and then. If "
    "you don't know something, say so honestly."
)


QUOTE_MAX_CHARS = 600  # of a replied-to message kept in the prompt: context, not a second message


def with_quote(text: str, quoted: str | None, limit: int = QUOTE_MAX_CHARS) -> str:
    """The user's turn as the model sees it: the message they replied to, quoted Markdown
    style and bounded (its end cut, marked with an ellipsis), then what they wrote."""
    quoted = (quoted or "").strip()
    if not quoted:
        return text
    if len(quoted) > limit:
        quoted = quoted[: limit - 1].rstrip() + "…"
    block = "\n".join(f"> {line}".rstrip() for line in quoted.splitlines())
    return f"{block}\n\n{text}"


def build_messages(
    persona: str, history: Sequence[Turn], user_text: str | None = None
) -> list[dict[str, str]]:
    """OpenAI-style messages: persona as system, then history, then the new user text."""
    turns: list[Turn] = []
    if persona.strip():
        turns.append(Turn("system", persona.strip()))
    turns.extend(history)
    if user_text is not None:
        turns.append(Turn("user", user_text))
    return [{"role": t.role, "content": t.text} for t in merge_consecutive(turns)]
