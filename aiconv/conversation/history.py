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

    def speaker_text(self) -> str:
        """The text as the model reads it: in groups, each user turn says who wrote it."""
        if self.role == "user" and self.sender:
            return f"{self.sender}: {self.text}"
        return self.text


def drop_retried(turns: Sequence[Turn]) -> list[Turn]:
    """The history as the model should read it after /retry: each marker is dropped together
    with the assistant turns right before it (the answers it asked to write again), so the
    prompt ends with the user message(s) that answer was for.

    Only assistant turns go; every user turn (group chatter included) stays, whatever the
    markers. Two markers in a row, or a marker before any answer (/retry racing the first
    reply), drop nothing more: a retry never removes more than the one answer it follows.
    """
    kept: list[Turn] = []
    for turn in turns:
        if not turn.retry:
            kept.append(turn)
            continue
        # Back to the newest addressed user turn; group chatter in between stays.
        index = len(kept) - 1
        while index >= 0 and (kept[index].role == "assistant" or kept[index].context_only):
            if kept[index].role == "assistant":
                del kept[index]
            index -= 1
    return kept


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
