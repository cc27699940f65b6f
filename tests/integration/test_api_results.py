"""The /v1 result reader as a protocol, on real Redis: whatever the interleaving of requests
registering, ml writing answers (before or after the request registered) and requests leaving,
every waiting request gets exactly the events of its own stream, in order, once each; the reader
counts exactly the requests that wait; and once none waits, the reader ends by itself.

On both kinds of Redis: on a cluster the reader's one XREAD over all its waiters' streams is
legal only because they share the reader's hash slot, and ml finds that slot through the
reader id the job carries (`ResultReader.response_stream`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from aiconv.jobs.codec import JobCodec
from aiconv.jobs.keys import Keys
from aiconv.web.api_results import ResultReader, ResultWaiter
from tests.support.fuzzing import protocol_settings
from tests.support.ports import free_port
from tests.support.redis_targets import RedisTarget, delete_prefixed_on
from tests.support.waiting import eventually

pytestmark = pytest.mark.both_redis

REQUESTS = ["a", "b", "c", "d"]
SETTLE_SECONDS = 10.0


class ResultReaderProtocol(RuleBasedStateMachine):
    target: RedisTarget  # set by the test: the Redis of this run

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = self.target.client()
        self.keys = self.target.keys(f"aiconv-rr-{uuid.uuid4().hex[:8]}:")
        self.reader = ResultReader(self.redis, self.keys, JobCodec().decode, block_ms=100)
        self.written: dict[str, list[int]] = {request: [] for request in REQUESTS}
        self.waiters: dict[str, ResultWaiter] = {}
        self.received: dict[str, list[int]] = {}
        self.next_event = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            for waiter in self.waiters.values():
                self.reader.close(waiter)
            if self.waiters:
                # Nobody waits now: the reader ends at its next read, by itself.
                self.run(eventually(lambda: not self.reader.running, timeout=SETTLE_SECONDS))
        finally:
            self.run(self.reader.aclose())
            self.run(delete_prefixed_on(self.target, self.keys.prefix))
            self.run(self.redis.aclose())
            self.loop.close()

    @rule(request=st.sampled_from(REQUESTS))
    def request_waits(self, request: str) -> None:
        if request in self.waiters:
            return
        self.waiters[request] = self.run(self.reader.open(request, 600.0))
        self.received[request] = []

    @rule(request=st.sampled_from(REQUESTS))
    def ml_answers(self, request: str) -> None:
        """ml writes to any request's stream: one that waits, has left, or has not come yet."""
        event = {"type": "delta", "text": str(self.next_event)}
        self.next_event += 1
        # Where ml writes: the job names the reader (web/openai.py puts its id in the job).
        stream = self.keys.api_response(self.reader.reader_id, request)
        assert stream == self.reader.response_stream(request)
        self.run(self.redis.xadd(stream, {"event": json.dumps(event)}))
        self.written[request].append(int(event["text"]))

    @rule(request=st.sampled_from(REQUESTS))
    def request_leaves(self, request: str) -> None:
        waiter = self.waiters.pop(request, None)
        if waiter is not None:
            self.reader.close(waiter)
            self.reader.close(waiter)  # idempotent

    @rule()
    def every_waiting_request_gets_its_events(self) -> None:
        async def drain() -> None:
            for request, waiter in self.waiters.items():
                got = self.received[request]
                async with asyncio.timeout(SETTLE_SECONDS):
                    while len(got) < len(self.written[request]):
                        got.append(int((await waiter.next())["text"]))

        self.run(drain())
        for request in self.waiters:
            assert self.received[request] == self.written[request]

    @invariant()
    def the_reader_counts_the_waiting_requests(self) -> None:
        assert self.reader.waiting == len(self.waiters)


@pytest.mark.timeout(600, method="thread")
def test_result_reader_protocol(redis_target: RedisTarget) -> None:
    class OnThisRedis(ResultReaderProtocol):
        target = redis_target

    run_state_machine_as_test(
        OnThisRedis,
        settings=protocol_settings(40, 30),
    )


async def test_a_cluster_out_of_reach_ends_each_wait_with_a_redis_error() -> None:
    """What the requests answer 503 for: a cluster client that reaches no node raises no
    RedisError of its own (RedisClusterException), which the reader must not die of silently,
    leaving its waiters to time out."""
    unreachable = RedisCluster(
        host="127.0.0.1", port=free_port(), decode_responses=True, socket_connect_timeout=1
    )
    reader = ResultReader(unreachable, Keys("aiconv-rr-gone:", 3), JobCodec().decode)
    try:
        waiter = await reader.open("r", 60.0)
        with pytest.raises(RedisError):
            async with asyncio.timeout(SETTLE_SECONDS):
                await waiter.next()
        assert reader.waiting == 0
    finally:
        await reader.aclose()
        await unreachable.aclose()
