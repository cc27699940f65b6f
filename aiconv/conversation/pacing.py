"""The human typing plan: how long to show "typing…" before each part of a reply."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class PacingConfig:
    enabled: bool = True
    chars_per_second: float = 15.0
    jitter: float = 0.2  # fractional ± applied to the typing time
    read_pause_seconds: float = 1.0  # "reading" the user's message before the first part
    between_parts_pause_seconds: float = 0.8
    min_delay_seconds: float = 1.0
    max_delay_seconds: float = 12.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "enabled" and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if not self.chars_per_second > 0:
            raise ValueError(f"chars_per_second must be > 0, got {self.chars_per_second!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        for name in ("read_pause_seconds", "between_parts_pause_seconds", "min_delay_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.min_delay_seconds > self.max_delay_seconds:
            raise ValueError(
                f"min_delay_seconds ({self.min_delay_seconds!r}) must be <= "
                f"max_delay_seconds ({self.max_delay_seconds!r})"
            )


@dataclass(frozen=True)
class PartPlan:
    text: str
    wait_seconds: float  # how long to keep "typing" before sending this part


def plan_delivery(
    parts: Sequence[str],
    config: PacingConfig,
    already_elapsed: float,
    rng: random.Random,
) -> list[PartPlan]:
    """Wait before each part; the first part's wait is reduced by time already spent.

    Generation time counts as typing time, so a slow model adds no extra delay.
    """
    if not config.enabled:
        return [PartPlan(part, 0.0) for part in parts]
    # Clock skew could make elapsed negative or NaN; never let that lengthen the wait.
    elapsed = already_elapsed if already_elapsed > 0 else 0.0
    plans: list[PartPlan] = []
    for index, part in enumerate(parts):
        pause = config.read_pause_seconds if index == 0 else config.between_parts_pause_seconds
        factor = 1.0 + rng.uniform(-config.jitter, config.jitter)
        natural = pause + len(part) / config.chars_per_second * factor
        wait = min(max(natural, config.min_delay_seconds), config.max_delay_seconds)
        if index == 0:
            wait = max(0.0, wait - elapsed)
        plans.append(PartPlan(part, wait))
    return plans


def typing_total(plans: Sequence[PartPlan]) -> float:
    return sum(plan.wait_seconds for plan in plans)
