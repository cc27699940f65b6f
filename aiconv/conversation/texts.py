"""The bot's fixed replies, kept apart from logic so wording changes touch one file."""

from __future__ import annotations

from aiconv.conversation.commands import COMMANDS

RESET_DONE = "Done — I've forgotten our conversation. Let's start fresh!"

TEXT_ONLY = "Sorry, I can only understand text messages for now. Could you type it out for me?"

UNKNOWN_COMMAND = "I don't know that command. Send /help to see what I understand."

GENERATION_FAILED = "Sorry, something went wrong on my side. Could you try again in a moment?"

OVERLOADED = "I'm overloaded right now; please write again in a few minutes."


def busy_notice(minutes: int) -> str:
    """Told once per turn when the model's queue is long; the reply still comes."""
    when = "about a minute" if minutes <= 1 else f"about {minutes} minutes"
    return f"Lots of people are writing to me right now — I'll answer in {when}."


def greeting(first_name: str | None) -> str:
    name = (first_name or "").strip()
    hello = f"Hi {name}!" if name else "Hi!"
    return (
        f"{hello} I'm an AI chat companion running on a local language model. "
        "Just write to me and we'll talk. Send /help to see the commands."
    )


def help_text() -> str:
    lines = [f"/{name} — {description}" for name, description in COMMANDS.items()]
    return "Here's what I understand:\n" + "\n".join(lines) + "\n\nAnything else, just say it."


# --- /persona, /retry, /stats ------------------------------------------------------------------

PERSONA_SET = "Done — this chat's persona is set. Send /persona to see it, /persona reset to undo."

PERSONA_RESET = "Done — this chat is back to the default persona."

PERSONA_ADMINS_ONLY = "Only this group's administrators can change its persona."

PERSONA_UNCHECKED = "I couldn't check whether you're an administrator here; please try again soon."

NOTHING_TO_RETRY = "There's nothing for me to answer again yet — write to me first."


def persona_shown(persona: str, custom: bool) -> str:
    which = "This chat's persona" if custom else "This chat uses the default persona"
    return f"{which}:\n\n{persona}\n\nChange it with /persona <text>; /persona reset restores it."


def persona_too_long(length: int, limit: int) -> str:
    return (
        f"That persona is {length} characters long; the limit is {limit}. "
        "Please shorten it and send it again — nothing was changed."
    )


def stats_text(
    messages_today: int,
    messages_total: int,
    tokens_today: int,
    tokens_total: int,
    quota: tuple[int, int] | None,
) -> str:
    """/stats. ``quota``: (tokens used today, daily limit) when USER_DAILY_TOKENS is set."""
    lines = [
        "This chat:",
        f"• messages: {messages_today} today, {messages_total} in total",
        f"• tokens I wrote: {tokens_today} today, {tokens_total} in total",
    ]
    if quota is not None:
        used, limit = quota
        left = max(0, limit - used)
        lines.append(f"Your daily quota: {left} of {limit} tokens left (resets at midnight UTC).")
    return "\n".join(lines)
