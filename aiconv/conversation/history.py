"""Conversation turns and fitting them into the model's context budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str
    sender: str | None = None  # a group member's first name: the model is told who said what
    context_only: bool = False  # an unaddressed group message, kept as context only
    retry: bool = False  # a /retry marker: see drop_retried; never shown to the model
    message_id: int | None = None  # Telegram's id, when known (drop_retried compares them)
    reply_to: int | None = None  # an assistant turn: the newest message its turn answered

    def speaker_text(self) -> str:
        """The text as the model reads it: in groups, each user turn says who wrote it."""
        if self.role == "user" and self.sender:
            return f"{self.sender}: {self.text}"
        return self.text


def drop_retried(turns: Sequence[Turn]) -> list[Turn]:
    """The history as the model should read it after /retry: every marker is dropped, and so is
    the answer each marker asked to write again, so the prompt ends with the user message(s)
    that answer was for.

    The answer a marker retries is the newest answer to a message before it: of the assistant
    turns replying (``reply_to``) to a stored user turn older than the marker, those with the
    highest such id (all parts of one reply). Found by ids, not by position, because an answer
    being written when /retry arrived is stored after the marker, yet is the one retried; and
    fixed replies to commands (not stored) are never mistaken for it. Without ids (rows written
    before the ids were kept, or a migrated group's old rows) the assistant turns right before
    the marker are taken. Only assistant turns go; every user turn (group chatter included)
    stays. An answer to a marker itself is not retried by that marker, only by a later one.
    """
    stored_users = {t.message_id for t in turns if t.role == "user" and t.message_id is not None}
    retried: set[int] = set()  # positions of the answers to drop
    for position, marker in enumerate(turns):
        if not marker.retry:
            continue
        by_id = [
            (t.reply_to, index)
            for index, t in enumerate(turns)
            if t.role == "assistant"
            and t.reply_to is not None
            and t.reply_to in stored_users
            and marker.message_id is not None
            and t.reply_to < marker.message_id
        ]
        if by_id:
            newest = max(reply_to for reply_to, _ in by_id)
            retried.update(index for reply_to, index in by_id if reply_to == newest)
            continue
        # Without ids: back to the newest addressed user turn; group chatter in between stays.
        index = position - 1
        while index >= 0 and (
            turns[index].role == "assistant" or turns[index].context_only or turns[index].retry
        ):
            if turns[index].role == "assistant":
                retried.add(index)
            index -= 1
    return [t for i, t in enumerate(turns) if not t.retry and i not in retried]


def keep_recent_context(turns: Sequence[Turn], limit: int) -> list[Turn]:
    """``turns`` with only the newest ``limit`` context-only turns (GROUP_CONTEXT_MESSAGES)."""
    context = [i for i, t in enumerate(turns) if t.context_only]
    kept = set(context[-limit:]) if limit > 0 else set()
    return [t for i, t in enumerate(turns) if not t.context_only or i in kept]


def approx_tokens(text: str) -> int:
    """Over-estimate of the token count: English averages ~4 bytes per token, we assume 3."""
    return math.ceil(len(text.encode("utf-8")) / 3)


def merge_consecutive(turns: Iterable[Turn]) -> list[Turn]:
    """Join adjacent same-role turns with newlines; chat templates expect alternating roles."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            merged[-1] = Turn(turn.role, merged[-1].text + "\n" + turn.text)
        else:
            merged.append(turn)
    return merged


def _truncate_front(
    turn: Turn, count_tokens: Callable[[str], int], budget: int, overhead: int
) -> Turn | None:
    """Keep the longest end of ``turn.text`` that fits, or None if not even "" fits."""

    def fits(keep: int) -> bool:
        tail = turn.text[len(turn.text) - keep :]
        return count_tokens(tail) + overhead <= budget

    if not fits(0):
        return None
    lo, hi = 0, len(turn.text)  # fits(lo) holds; the full text is known not to fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return Turn(turn.role, turn.text[len(turn.text) - lo :])


def fit_history(
    turns: Sequence[Turn],
    count_tokens: Callable[[str], int],
    budget: int,
    per_turn_overhead: int = 8,
) -> list[Turn]:
    """Most recent whole turns (oldest first) whose total cost fits ``budget``.

    The window never starts with an assistant turn. If the last turn alone is too long it
    is returned cut from the front, keeping its end, since the end is what gets answered.
    """
    if budget <= 0 or not turns:
        return []
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        cost = count_tokens(turn.text) + per_turn_overhead
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    if not kept:
        cut = _truncate_front(turns[-1], count_tokens, budget, per_turn_overhead)
        kept = [cut] if cut is not None else []
    kept.reverse()
    start = 0
    while start < len(kept) and kept[start].role == "assistant":
        start += 1
    return kept[start:]
