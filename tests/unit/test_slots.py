"""`Slots` (aiconv/jobs/consumer.py), the slots a stage's consumers share: reserved before a
read, never more than the size through reservations, and a slot given back goes to the
consumer that has waited longest; a waiter that gives up takes nothing with it."""

from __future__ import annotations

import asyncio

import pytest

from aiconv.jobs.consumer import Slots
from tests.support.waiting import eventually


async def test_reservations_never_exceed_the_size() -> None:
    slots = Slots(3)
    assert await slots.reserve(2, 1.0) == 2
    assert await slots.reserve(5, 1.0) == 1  # only what is free
    assert slots.held == 3 and slots.free == 0
    assert await slots.reserve(1, 0.01) == 0  # none came in time
    assert slots.held == 3


async def test_a_slot_given_back_goes_to_the_oldest_waiter() -> None:
    slots = Slots(1)
    assert await slots.reserve(1, 1.0) == 1
    first = asyncio.create_task(slots.reserve(4, 10.0))
    await eventually(lambda: slots.waiting == 1, timeout=5)
    second = asyncio.create_task(slots.reserve(4, 10.0))
    await eventually(lambda: slots.waiting == 2, timeout=5)
    slots.give_back()
    # Handed over at once: whoever reserves next, before `first` runs again, finds none free.
    assert slots.held == 1
    assert await slots.reserve(1, 0.01) == 0
    assert await first == 1
    assert not second.done()
    slots.give_back()
    assert await second == 1
    assert slots.held == 1


async def test_a_waiter_that_gives_up_takes_no_slot() -> None:
    slots = Slots(1)
    assert await slots.reserve(1, 1.0) == 1
    quitter = asyncio.create_task(slots.reserve(1, 10.0))
    await eventually(lambda: slots.waiting == 1, timeout=5)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    slots.give_back()
    assert slots.held == 0
    assert await slots.reserve(1, 0.01) == 1


async def test_a_waiter_cancelled_after_its_slot_was_handed_gives_it_back() -> None:
    slots = Slots(1)
    assert await slots.reserve(1, 1.0) == 1
    waiter = asyncio.create_task(slots.reserve(1, 10.0))
    await eventually(lambda: slots.waiting == 1, timeout=5)
    slots.give_back()  # handed to `waiter`, which has not run since
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.held == 0


def test_a_stage_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        Slots(0)
