"""/retry racing new messages, as a state machine on the real Redis turn scripts.

A user writes, asks /retry (any number of times, at any moment: before the first answer, while
one is being written, right after a new message), turns are claimed, their prompts built and
their answers delivered, in any interleaving. The worker's steps are the ones of
worker/updates.py and worker/commands.py: a /retry with nothing to answer again stores nothing;
otherwise its marker is stored and noted like a message; a claimed turn's prompt is the stored
history through `drop_retried`. PostgreSQL is modelled by a list; Redis and the scripts are real.
(Crashes, redelivery and leases are the turn protocol's own state machine,
tests/integration/test_turn_protocol.py; a marker is just one more noted message there.)

Invariants: no prompt holds a marker, nor an answer a marker asked to write again (the newest
answer delivered by a turn claimed before the marker, even one delivered after it); the prompt of
a turn whose newest message is a /retry ends with the user's message(s); every delivered answer
covers something no earlier answer did (never two answers for the same messages); once quiet,
every message and every /retry has been answered.
"""

from __future__ import annotations

import asyncio
import uuid
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from aiconv.conversation.history import Turn, drop_retried
from aiconv.jobs.keys import Keys
from aiconv.jobs.messages import TurnJob
from aiconv.jobs.queue import decode_entry
from aiconv.worker.turns import TurnConfig, Turns
from tests.support.services import REDIS_URL, delete_prefixed

CHAT = 501


class RetryRaces(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = Redis.from_url(REDIS_URL, decode_responses=True)
        self.keys = Keys(f"aiconv-retry-{uuid.uuid4().hex[:8]}:")
        self.turns = Turns(self.redis, self.keys, TurnConfig(0.0, 1000.0))
        self.rows: list[Turn] = []  # "PostgreSQL": the chat's stored history, in order
        self.next_id = 1
        self.noted = 0  # messages and markers noted
        self.read_after = "0-0"  # turn jobs already taken from the updates stream
        self.claimed: list[TurnJob] = []  # turn jobs not yet worked on
        self.writing: TurnJob | None = None  # the turn whose prompt was built
        self.prompts: list[tuple[TurnJob, list[Turn]]] = []
        self.delivered_covers: list[int] = []
        self.noted_items: list[Turn] = []  # what was noted, in order (messages and markers)
        self.answers: dict[int, list[Turn]] = {}  # a delivered turn's covers -> its answer

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(delete_prefixed(self.keys.prefix))
        self.run(self.redis.aclose())
        self.loop.close()

    @initialize(final=st.booleans())
    def configure(self, final: bool) -> None:
        """Every turn final (delivered whatever arrives meanwhile) or active (superseded)."""
        self.turns = Turns(self.redis, self.keys, TurnConfig(0.0, 0.0 if final else 1000.0))

    def _store_and_note(self, turn: Turn) -> None:
        self.rows.append(turn)
        self.noted_items.append(turn)
        assert self.run(self.turns.note_message(CHAT, self.next_id))
        self.next_id += 1
        self.noted += 1

    # --- the user -------------------------------------------------------------------------------

    @rule()
    def user_writes(self) -> None:
        self._store_and_note(Turn("user", f"message {self.next_id}", message_id=self.next_id))

    @rule()
    def user_retries(self) -> None:
        """What CommandHandler decides, then _converse(retry=True)."""
        if any(t.role == "user" for t in drop_retried(self.rows)):
            self._store_and_note(Turn("user", "/retry", retry=True, message_id=self.next_id))

    # --- the worker, ml and delivery ------------------------------------------------------------

    @rule()
    def claim(self) -> None:
        self.run(self.turns.claim_due())
        stream = self.keys.stream_for("updates", CHAT)
        entries = self.run(self.redis.xrange(stream, min=f"({self.read_after}"))
        for entry_id, fields in entries or []:
            self.read_after = entry_id
            job = decode_entry(stream, entry_id, fields, 1)
            self.claimed.append(TurnJob.from_payload(job.payload))

    @precondition(lambda self: bool(self.claimed) and self.writing is None)
    @rule()
    def a_turn_builds_its_prompt(self) -> None:
        """_start_turn: a stale turn is finished, an owner reads the history."""
        turn = self.claimed.pop(0)
        status = self.run(self.turns.status(CHAT, turn.turn))
        if status == "stale":
            self.run(self.turns.finish(CHAT, turn.turn, "superseded"))
        if status != "owner":
            return
        prompt = drop_retried(self.rows)
        # The answer each marker asks to write again: the newest delivered by a turn claimed
        # before the marker was noted (covers <= its position), wherever it was stored.
        retried = set()
        for position, item in enumerate(self.noted_items):
            earlier = [covers for covers in self.answers if covers <= position]
            if item.retry and earlier:
                retried.add(self.answers[max(earlier)][0].text)
        shown = {t.text for t in prompt if t.role == "assistant"}
        assert not shown & retried, (shown & retried, prompt)
        self.prompts.append((turn, prompt))
        self.writing = turn

    @precondition(lambda self: self.writing is not None)
    @rule()
    def its_answer_is_delivered(self) -> None:
        """Delivery: a superseded answer is dropped unsent, any other is sent and stored."""
        turn = self.writing
        assert turn is not None
        self.writing = None
        status = self.run(self.turns.status(CHAT, turn.turn))
        if status == "lost":
            return
        if status == "stale":
            self.run(self.turns.finish(CHAT, turn.turn, "superseded"))
            return
        answer = Turn(
            "assistant", f"answer of {turn.turn}", message_id=self.next_id, reply_to=turn.reply_to
        )
        self.next_id += 1  # the bot's message takes the chat's next id
        self.rows.append(answer)
        self.delivered_covers.append(turn.covers)
        self.answers[turn.covers] = [answer]
        self.run(self.turns.finish(CHAT, turn.turn, "delivered"))

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def a_retried_answer_is_never_shown_again(self) -> None:
        for turn, prompt in self.prompts:
            assert not any(t.retry for t in prompt), prompt
            if self.noted_items[turn.covers - 1].retry:
                # The turn of a /retry writes the answer again: the prompt ends with the user.
                assert prompt and prompt[-1].role == "user", prompt

    @invariant()
    def no_two_answers_for_the_same_messages(self) -> None:
        covers = self.delivered_covers
        assert all(a < b for a, b in pairwise(covers)), covers
        assert len(covers) <= self.noted

    def check_quiet(self) -> None:
        for _ in range(100):
            self.claim()
            while self.claimed or self.writing is not None:
                if self.writing is None:
                    self.a_turn_builds_its_prompt()
                else:
                    self.its_answer_is_delivered()
                self.claim()
            state = self.run(self.redis.hgetall(self.keys.chat_state(CHAT)))
            if "turn" not in state and int(state.get("answered", 0)) == self.noted:
                if self.noted:
                    assert self.delivered_covers[-1] == self.noted
                    assert self.rows[-1].role == "assistant"
                return
        raise AssertionError("the turns did not settle")


class QuietAtTheEnd(RetryRaces):
    def teardown(self) -> None:
        try:
            self.check_quiet()
        finally:
            super().teardown()


@pytest.mark.timeout(300, method="thread")
def test_retry_racing_new_messages_answers_each_once() -> None:
    run_state_machine_as_test(
        QuietAtTheEnd,
        settings=settings(
            max_examples=150,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
