"""Hypothesis settings for fuzzing a live service from inside one test.

Invariant: a fuzz run is reproducible and judged only by its assertions: examples are drawn from a
fixed seed (`derandomize`), nothing is kept between runs (no example database), and neither
timing (`deadline`) nor hypothesis' health checks (slow data, a function-scoped fixture) fail it,
since the service under test is real and as slow as the machine.
"""

from __future__ import annotations

import hypothesis


def fuzz_settings(max_examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
