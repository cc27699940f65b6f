"""How long a waiting turn will wait for the model: pure arithmetic, no I/O.

Each ml instance publishes what it measured over a recent window (`MlCapacity`): its slots, how
many are busy, and how long one generation takes a slot on average. The worker knows how many
generation jobs wait unread ahead of a new one (the `generate` stream's lag). The estimate is
queueing arithmetic, deliberately simple: a job starts at once while a slot is free; otherwise it
waits for the jobs ahead of it to be served at the summed rate of every live instance
(`slots / seconds per generation`, a rate that does not drop when an instance is idle, unlike
measured turns per second).

Nothing measured yet (no ml has published, or none has finished a generation in its window): the
estimate is still given, from FALLBACK_SECONDS_PER_GENERATION, but marked `measured=False`, and
callers must not decline anyone or promise minutes on a guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A guess for one generation on one slot when nothing is measured: a short CPU answer.
FALLBACK_SECONDS_PER_GENERATION = 10.0
# "Typing…" starts this long before a turn's generation is expected to start: the estimate is
# coarse, and a reply that starts early should not find the chat silent.
TYPING_LEAD_SECONDS = 5.0

_FIELDS = ("slots", "busy", "seconds_per_generation", "turns_per_second", "tokens_per_second")


@dataclass(frozen=True)
class MlCapacity:
    """What one ml instance publishes (fields of its Redis hash)."""

    slots: int
    busy: int = 0
    seconds_per_generation: float | None = None  # mean over the window; None: none finished
    turns_per_second: float = 0.0  # measured, over the window (load-dependent)
    tokens_per_second: float = 0.0  # completion tokens, measured, over the window

    def to_fields(self) -> dict[str, str]:
        return {
            "slots": str(self.slots),
            "busy": str(self.busy),
            "seconds_per_generation": ""
            if self.seconds_per_generation is None
            else f"{self.seconds_per_generation:.6f}",
            "turns_per_second": f"{self.turns_per_second:.6f}",
            "tokens_per_second": f"{self.tokens_per_second:.6f}",
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> MlCapacity | None:
        """None for a hash that is not (or no longer) a complete, sane publication."""
        if not all(name in fields for name in _FIELDS):
            return None
        try:
            slots = int(fields["slots"])
            busy = int(fields["busy"])
            per = fields["seconds_per_generation"]
            seconds = float(per) if per else None
            turns = float(fields["turns_per_second"])
            tokens = float(fields["tokens_per_second"])
        except ValueError:
            return None
        if slots < 1 or busy < 0 or (seconds is not None and not seconds > 0):
            return None
        if not (math.isfinite(turns) and math.isfinite(tokens)):
            return None
        return cls(slots, min(busy, slots), seconds, max(turns, 0.0), max(tokens, 0.0))


@dataclass(frozen=True)
class Estimate:
    seconds: float  # until the job's generation starts
    measured: bool  # False: based on the fallback guess, not on what ml measured


def service_rate(instances: Iterable[MlCapacity]) -> tuple[float, bool]:
    """Generations started per second when every slot is busy, and whether it was measured.

    An instance that has not finished a generation yet counts at the fallback speed.
    """
    rate = 0.0
    measured = False
    for instance in instances:
        if instance.seconds_per_generation is not None:
            rate += instance.slots / instance.seconds_per_generation
            measured = True
        else:
            rate += instance.slots / FALLBACK_SECONDS_PER_GENERATION
    return rate, measured


def estimate_wait(ahead: int, instances: Iterable[MlCapacity], busy_fallback: int = 0) -> Estimate:
    """Seconds until a generation job with `ahead` unread jobs in front of it starts.

    `busy_fallback` (jobs being generated, e.g. the stream's pending count) stands in for the
    busy slots when no instance has published.
    """
    live = list(instances)
    if not live:
        # One slot at the fallback speed: honest about knowing nothing, never zero.
        rate = 1.0 / FALLBACK_SECONDS_PER_GENERATION
        free = 0 if busy_fallback > 0 else 1
        waiting = max(0, ahead) - free + 1
        return Estimate(max(0, waiting) / rate, measured=False)
    rate, measured = service_rate(live)
    free = sum(max(0, i.slots - i.busy) for i in live)
    waiting = max(0, ahead) - free + 1  # jobs to be served before a slot frees for this one
    if waiting <= 0:
        return Estimate(0.0, measured)
    return Estimate(waiting / rate, measured)


def minutes_to_say(seconds: float) -> int:
    """Whole minutes to promise a user: rounded up, at least one."""
    return max(1, math.ceil(seconds / 60.0))
