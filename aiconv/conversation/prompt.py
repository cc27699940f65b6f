"""Assembly of the chat-completion messages sent to the model."""

from __future__ import annotations

from collections.abc import Sequence

from aiconv.conversation.history import Turn, merge_consecutive

DEFAULT_PERSONA = (
    "You are a friendly, warm conversational partner chatting with someone on Telegram. "
    "Write the way a person types in a chat: plain sentences, short paragraphs, no "
    "markdown headings or tables, lists only when truly needed. Be concise and natural, "
    "answer what was asked, and ask a question back now and then. If you don't know "
    "something, say so honestly."
)


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
