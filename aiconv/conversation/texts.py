"""The bot's fixed replies, kept apart from logic so wording changes touch one file."""

from __future__ import annotations

from aiconv.conversation.commands import KNOWN_COMMANDS

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
    lines = [f"/{name} — {description}" for name, description in KNOWN_COMMANDS.items()]
    return "Here's what I understand:\n" + "\n".join(lines) + "\n\nAnything else, just say it."
