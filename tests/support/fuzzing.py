"""Hypothesis settings for tests that draw examples against live services (the web apps, Redis,
PostgreSQL), in one place so that every such test is run the same way.

Invariants:
- Nothing is kept between runs (no example database), so runs do not depend on each other; the
  fuzzers also draw from a fixed seed (`derandomize`): a fuzz failure in CI is the one you get
  locally.
- Timing never fails a run (`deadline=None`, no "too slow" check): the services are real and as
  slow as the machine; only the test's assertions decide.
"""

from __future__ import annotations

import hypothesis
from hypothesis import HealthCheck


def fuzz_settings(max_examples: int) -> hypothesis.settings:
    """For fuzzing a live service from inside one test: reproducible, no health check at all."""
    return hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


def protocol_settings(
    max_examples: int, steps: int, also_suppress: tuple[HealthCheck, ...] = ()
) -> hypothesis.settings:
    """For a state machine (`run_state_machine_as_test`) whose steps call the real services."""
    return hypothesis.settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, *also_suppress],
        database=None,
    )
