import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiconv.conversation.pacing import PacingConfig, PartPlan, plan_delivery, typing_total


def test_defaults_valid() -> None:
    config = PacingConfig()
    assert config.enabled and config.chars_per_second == 15.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"chars_per_second": 0}, "chars_per_second"),
        ({"chars_per_second": -1}, "chars_per_second"),
        ({"chars_per_second": math.nan}, "chars_per_second"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"read_pause_seconds": -1}, "read_pause_seconds"),
        ({"between_parts_pause_seconds": -0.1}, "between_parts_pause_seconds"),
        ({"min_delay_seconds": -1}, "min_delay_seconds"),
        ({"min_delay_seconds": 5, "max_delay_seconds": 2}, "min_delay_seconds"),
        ({"max_delay_seconds": math.inf}, "max_delay_seconds"),
    ],
)
def test_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PacingConfig(**kwargs)  # type: ignore[arg-type]


NO_JITTER = PacingConfig(jitter=0.0, chars_per_second=12.0, max_delay_seconds=20.0)


def test_example_without_jitter() -> None:
    plans = plan_delivery(["a" * 24, "b" * 12], NO_JITTER, 0.0, random.Random(1))
    assert [p.text for p in plans] == ["a" * 24, "b" * 12]
    assert plans[0].wait_seconds == pytest.approx(1.0 + 2.0)
    assert plans[1].wait_seconds == pytest.approx(0.8 + 1.0)
    assert typing_total(plans) == pytest.approx(4.8)


def test_clamped() -> None:
    plans = plan_delivery(["", "x" * 10_000], NO_JITTER, 0.0, random.Random(1))
    assert plans[0].wait_seconds == pytest.approx(1.0)  # min delay
    assert plans[1].wait_seconds == pytest.approx(20.0)  # max delay


def test_elapsed_only_shortens_first_part() -> None:
    parts = ["a" * 24, "b" * 12]
    plans = plan_delivery(parts, NO_JITTER, 2.5, random.Random(1))
    assert plans[0].wait_seconds == pytest.approx(0.5)
    assert plans[1].wait_seconds == pytest.approx(1.8)
    slow = plan_delivery(parts, NO_JITTER, 60.0, random.Random(1))
    assert slow[0].wait_seconds == 0.0
    assert slow[1].wait_seconds == pytest.approx(1.8)


def test_negative_elapsed_does_not_lengthen() -> None:
    plans = plan_delivery(["a" * 24], NO_JITTER, -10.0, random.Random(1))
    assert plans[0].wait_seconds == pytest.approx(3.0)


def test_disabled() -> None:
    plans = plan_delivery(["hi", "there"], PacingConfig(enabled=False), 0.0, random.Random(1))
    assert plans == [PartPlan("hi", 0.0), PartPlan("there", 0.0)]
    assert typing_total(plans) == 0.0


def test_empty() -> None:
    assert plan_delivery([], PacingConfig(), 0.0, random.Random(1)) == []
    assert typing_total([]) == 0.0


configs = st.builds(
    lambda cps, jitter, read, between, lo, span: PacingConfig(
        chars_per_second=cps,
        jitter=jitter,
        read_pause_seconds=read,
        between_parts_pause_seconds=between,
        min_delay_seconds=lo,
        max_delay_seconds=lo + span,
    ),
    st.floats(0.5, 100),
    st.floats(0, 0.99),
    st.floats(0, 5),
    st.floats(0, 5),
    st.floats(0, 5),
    st.floats(0, 30),
)
parts_st = st.lists(st.text(max_size=300), max_size=6)
elapsed_st = st.floats(-10, 100)


@given(parts_st, configs, elapsed_st, st.integers())
def test_waits_within_bounds(
    parts: list[str], config: PacingConfig, elapsed: float, seed: int
) -> None:
    plans = plan_delivery(parts, config, elapsed, random.Random(seed))
    assert [p.text for p in plans] == parts
    for index, plan in enumerate(plans):
        assert 0.0 <= plan.wait_seconds <= config.max_delay_seconds
        if index > 0:
            assert plan.wait_seconds >= config.min_delay_seconds


@given(parts_st, configs, elapsed_st, st.integers())
def test_deterministic(parts: list[str], config: PacingConfig, elapsed: float, seed: int) -> None:
    first = plan_delivery(parts, config, elapsed, random.Random(seed))
    assert first == plan_delivery(parts, config, elapsed, random.Random(seed))


@given(
    st.lists(st.text(max_size=300), min_size=1, max_size=6),
    configs,
    st.floats(0, 50),
    st.floats(0, 50),
    st.integers(),
)
def test_first_wait_decreases_with_elapsed(
    parts: list[str], config: PacingConfig, e1: float, e2: float, seed: int
) -> None:
    early, late = sorted((e1, e2))
    a = plan_delivery(parts, config, early, random.Random(seed))
    b = plan_delivery(parts, config, late, random.Random(seed))
    assert b[0].wait_seconds <= a[0].wait_seconds
    # later parts are unaffected by elapsed time
    assert [p.wait_seconds for p in a[1:]] == [p.wait_seconds for p in b[1:]]


@given(parts_st, elapsed_st, st.integers())
def test_disabled_is_zero(parts: list[str], elapsed: float, seed: int) -> None:
    plans = plan_delivery(parts, PacingConfig(enabled=False), elapsed, random.Random(seed))
    assert all(p.wait_seconds == 0.0 for p in plans)
