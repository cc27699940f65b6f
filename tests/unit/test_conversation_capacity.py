"""The wait estimate's arithmetic (aiconv/conversation/capacity.py), as properties."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from aiconv.conversation import texts
from aiconv.conversation.capacity import (
    FALLBACK_SECONDS_PER_GENERATION,
    MlCapacity,
    estimate_wait,
    minutes_to_say,
    service_rate,
)


@st.composite
def instances(draw: st.DrawFn) -> MlCapacity:
    slots = draw(st.integers(1, 16))
    return MlCapacity(
        slots=slots,
        busy=draw(st.integers(0, slots)),
        seconds_per_generation=draw(st.none() | st.floats(0.05, 600.0)),
        turns_per_second=draw(st.floats(0.0, 100.0)),
        tokens_per_second=draw(st.floats(0.0, 10_000.0)),
    )


fleets = st.lists(instances(), max_size=5)


@given(fleets, st.integers(0, 100_000))
def test_the_estimate_is_finite_and_never_negative(fleet: list[MlCapacity], ahead: int) -> None:
    estimate = estimate_wait(ahead, fleet)
    assert math.isfinite(estimate.seconds) and estimate.seconds >= 0


@given(fleets, st.integers(0, 10_000), st.integers(1, 100))
def test_more_jobs_ahead_never_means_a_shorter_wait(
    fleet: list[MlCapacity], ahead: int, more: int
) -> None:
    assert estimate_wait(ahead + more, fleet).seconds >= estimate_wait(ahead, fleet).seconds


@given(fleets, instances(), st.integers(0, 10_000))
def test_another_live_instance_never_makes_the_wait_longer(
    fleet: list[MlCapacity], extra: MlCapacity, ahead: int
) -> None:
    if not fleet:
        return  # from "nothing known" to one instance is not "more capacity"
    assert estimate_wait(ahead, [*fleet, extra]).seconds <= estimate_wait(ahead, fleet).seconds


@given(fleets, st.integers(0, 1000))
def test_a_free_slot_for_everyone_ahead_means_no_wait(fleet: list[MlCapacity], ahead: int) -> None:
    free = sum(i.slots - i.busy for i in fleet)
    if fleet and ahead < free:
        assert estimate_wait(ahead, fleet).seconds == 0.0


@given(st.integers(1, 16), st.floats(0.1, 60.0), st.integers(0, 5000))
def test_a_saturated_instance_serves_the_queue_at_its_measured_rate(
    slots: int, per_generation: float, ahead: int
) -> None:
    fleet = [MlCapacity(slots=slots, busy=slots, seconds_per_generation=per_generation)]
    estimate = estimate_wait(ahead, fleet)
    assert estimate.measured
    assert math.isclose(estimate.seconds, (ahead + 1) * per_generation / slots, rel_tol=1e-9)


@given(st.integers(0, 1000), st.integers(0, 5))
def test_with_nothing_published_the_guess_is_marked_unmeasured(ahead: int, busy: int) -> None:
    estimate = estimate_wait(ahead, [], busy_fallback=busy)
    assert not estimate.measured
    assert estimate.seconds <= (ahead + 1) * FALLBACK_SECONDS_PER_GENERATION


@given(fleets)
def test_the_rate_is_measured_only_when_some_instance_measured(fleet: list[MlCapacity]) -> None:
    rate, measured = service_rate(fleet)
    assert measured == any(i.seconds_per_generation is not None for i in fleet)
    assert (rate > 0) == bool(fleet)


@given(instances())
def test_a_publication_round_trips(instance: MlCapacity) -> None:
    parsed = MlCapacity.from_fields(instance.to_fields())
    assert parsed is not None
    assert parsed.slots == instance.slots and parsed.busy == instance.busy
    if instance.seconds_per_generation is None:
        assert parsed.seconds_per_generation is None
    else:
        assert parsed.seconds_per_generation is not None
        assert math.isclose(
            parsed.seconds_per_generation, instance.seconds_per_generation, abs_tol=1e-5
        )


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "slots",
                "busy",
                "seconds_per_generation",
                "turns_per_second",
                "tokens_per_second",
                "x",
            ]
        ),
        st.text(max_size=8),
    )
)
def test_a_garbled_publication_is_ignored_not_raised(fields: dict[str, str]) -> None:
    parsed = MlCapacity.from_fields(fields)
    assert parsed is None or parsed.slots >= 1


@given(st.floats(0.0, 1e6))
def test_the_promised_minutes_are_whole_and_never_short(seconds: float) -> None:
    minutes = minutes_to_say(seconds)
    assert minutes >= 1 and minutes * 60 >= seconds
    assert "minute" in texts.busy_notice(minutes)
