"""Prometheus figures of each generation (names in aiconv.observability.metrics)."""

from __future__ import annotations

from aiconv.ml.engine import Completion
from aiconv.observability.metrics import (
    GENERATION_SECONDS,
    GENERATIONS,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    TOKENS_PER_SECOND,
)


def observe(completion: Completion | None, outcome: str) -> None:
    """outcome: ok, failed or cancelled."""
    GENERATIONS.labels(outcome).inc()
    if completion is None:
        return
    TOKENS.labels("prompt").inc(completion.prompt_tokens)
    TOKENS.labels("completion").inc(completion.completion_tokens)
    if outcome != "ok":
        return
    GENERATION_SECONDS.observe(completion.seconds)
    if completion.first_token_seconds is not None:
        TIME_TO_FIRST_TOKEN.observe(completion.first_token_seconds)
    if completion.completion_tokens > 1:
        TOKENS_PER_SECOND.observe(completion.tokens_per_second)
