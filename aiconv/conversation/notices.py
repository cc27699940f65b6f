"""What the bot says when policy stops it from answering (aiconv.worker.access).

Each is sent at most once per chat and user per UTC day (the burst warning once a minute), so a
refused user is told, not flooded.
"""

from __future__ import annotations

NOT_ALLOWED = (
    "Sorry, this bot is private and I can't chat with you here. "
    "If you think you should have access, ask the person who runs it."
)

QUOTA_USED = (
    "You've used today's message allowance ({limit} tokens). "
    "It resets at midnight UTC (00:00 UTC); talk to you then!"
)

SLOW_DOWN = (
    "You're sending messages faster than I can read them (at most {limit} a minute). "
    "I skipped the last one: wait a moment, then send it again."
)


def quota_used(limit: int) -> str:
    return QUOTA_USED.format(limit=limit)


def slow_down(limit: int) -> str:
    return SLOW_DOWN.format(limit=limit)
