"""The access gate's Redis protocols as a state machine against the real Redis, two workers:
the burst guard counts each message once however often it is redelivered, admits at most the
limit in a window, and warns once; a refusal is told once a day; racing workers agree."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from redis.asyncio import Redis

from aiconv.conversation.policy import ChatPolicy
from aiconv.jobs.keys import Keys
from aiconv.store.repository import Store
from aiconv.telegram.models import IncomingMessage
from aiconv.worker.access import AccessGate
from tests.support.fuzzing import protocol_settings
from tests.support.messages import incoming_message
from tests.support.services import REDIS_URL, delete_prefixed

CHAT, USER = -77, 5
WORKERS = (0, 1)


def message(message_id: int) -> IncomingMessage:
    return incoming_message(
        update_id=message_id,
        chat_id=CHAT,
        chat_type="group",
        user_id=USER,
        username=None,
        language_code=None,
        message_id=message_id,
    )


class AccessProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.keys = Keys(f"aiconv-access-{uuid.uuid4().hex[:8]}:")
        self.clients = [Redis.from_url(REDIS_URL, decode_responses=True) for _ in WORKERS]
        self.limit = 1
        self.gates: list[AccessGate] = []
        self.next_id = 1
        self.admitted: set[int] = set()
        self.refused_ids: set[int] = set()
        self.warned = False
        self.told: set[str] = set()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(delete_prefixed(self.keys.prefix))
        for client in self.clients:
            self.run(client.aclose())
        self.loop.close()

    @initialize(limit=st.integers(1, 4))
    def configure(self, limit: int) -> None:
        self.limit = limit
        policy = ChatPolicy(user_messages_per_minute=limit)
        # The burst guard and the notices touch Redis only: no store is needed.
        self.gates = [
            AccessGate(client, self.keys, cast(Store, None), policy) for client in self.clients
        ]

    def expect_new(self, message_id: int, result: str) -> None:
        if len(self.admitted) < self.limit:
            assert result == "ok"
            self.admitted.add(message_id)
            return
        assert result == ("over" if self.warned else "over_first")
        self.warned = True
        self.refused_ids.add(message_id)

    @rule(worker=st.sampled_from(WORKERS))
    def a_message_arrives(self, worker: int) -> None:
        message_id, self.next_id = self.next_id, self.next_id + 1
        self.expect_new(message_id, self.run(self.gates[worker].burst(message(message_id))))

    @rule(worker=st.sampled_from(WORKERS), pick=st.integers(0, 100))
    def an_update_is_redelivered(self, worker: int, pick: int) -> None:
        seen = sorted(self.admitted | self.refused_ids)
        if not seen:
            return
        message_id = seen[pick % len(seen)]
        result = self.run(self.gates[worker].burst(message(message_id)))
        # Counted once: an admitted message stays admitted, a refused one is not warned again.
        assert result == ("ok" if message_id in self.admitted else "over")

    @rule()
    def two_workers_race_on_one_message(self) -> None:
        message_id, self.next_id = self.next_id, self.next_id + 1

        async def race() -> list[str]:
            return list(await asyncio.gather(*(g.burst(message(message_id)) for g in self.gates)))

        first, second = sorted(self.run(race()), key=["over_first", "ok", "over"].index)
        self.expect_new(message_id, first)
        assert second == ("ok" if message_id in self.admitted else "over")

    @rule(worker=st.sampled_from(WORKERS), reason=st.sampled_from(["refused", "quota"]))
    def a_refusal_is_due(self, worker: int, reason: str) -> None:
        told_now = self.run(self.gates[worker].first_notice_today(message(self.next_id), reason))
        assert told_now == (reason not in self.told)
        self.told.add(reason)


def test_the_access_protocols_hold_across_workers() -> None:
    run_state_machine_as_test(
        AccessProtocol,
        settings=protocol_settings(60, 25),
    )


async def test_a_refusal_notice_lasts_until_utc_midnight(redis: Redis, redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    gate = AccessGate(redis, keys, cast(Store, None), ChatPolicy())
    assert await gate.first_notice_today(message(1), "refused")
    ttl = await redis.ttl(keys.access_notice(CHAT, USER, "refused"))
    now = int((await redis.time())[0])
    assert ttl == 86_400 - now % 86_400 or ttl == 86_400 - now % 86_400 - 1
