"""The ml stage: a generation job in, a reply job out (handed over atomically).

Two kinds of generation job arrive: a chat turn from the worker, on its chat's shard's generate
stream, whose reply goes to the same shard's replies stream (the hand-over is one script, so both
streams and the chat's keys share the shard's hash slot, see jobs/keys.py); and an OpenAI-API
request from the web (see `aiconv.ml.openai_jobs`), usually on its own stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import structlog

from aiconv.conversation import texts
from aiconv.conversation.history import Turn, fit_history
from aiconv.conversation.prompt import build_messages
from aiconv.jobs.keys import GENERATE_GROUP, Keys
from aiconv.jobs.messages import (
    GenerateJob,
    ReplyJob,
    conversation_of,
    turn_conversation,
    turn_topic,
)
from aiconv.jobs.queue import Job, JobQueue, TurnGuard
from aiconv.ml.cancel import CancelWatcher
from aiconv.ml.engine import Completion, Engine, Generation
from aiconv.ml.openai_jobs import API_KIND, OpenAiJobHandler
from aiconv.ml.stats import Throughput, observe
from aiconv.worker.drafts import DraftProgress
from aiconv.worker.typing_keeper import TypingSignal

PROMPT_MARGIN_TOKENS = 32  # chat-template tokens around each turn, beyond the per-turn overhead
TRIM_TO = 0.6  # share of the history budget left after a cut (see fit_turns)
ANCHORS_KEPT = 10_000  # chats whose window start this process remembers (LRU)

log = structlog.get_logger(__name__)


def lane_of(job: Job) -> str | None:
    """Jobs of one conversation (a chat, or one forum topic) run one after another, in stream
    order; API requests run freely."""
    if job.payload.get("kind") == API_KIND:
        return None
    return conversation_of(job.payload)


def fit_turns(
    turns: list[Turn], count: Callable[[str], int], budget: int, anchor: Turn | None = None
) -> list[Turn]:
    """The turns that fit `budget`, cut so that the prompt's beginning changes rarely.

    Everything fits: all of it. Otherwise, if the window of the previous turn still fits from
    its first turn (`anchor`) on, that window grows by the new turns; if not, the history is cut
    down to TRIM_TO of the budget, which leaves room for the next few turns. Cutting one turn
    per turn instead would change the prompt's start every turn, and so throw away the reuse
    of its evaluated prefix every turn.
    """
    whole = fit_history(turns, count, budget)
    if len(whole) == len(turns):
        return whole
    if anchor is not None:
        for start in range(len(turns) - 1, -1, -1):
            if turns[start] == anchor:
                window = fit_history(turns[start:], count, budget)
                if len(window) == len(turns) - start:
                    return window
                break
    return fit_history(turns, count, int(budget * TRIM_TO)) or whole


def prompt_tokens(
    engine: Engine, persona: str, turns: list[Turn], anchor: Turn | None = None
) -> tuple[list[int], Turn | None]:
    """The chat prompt, its history trimmed (oldest turns first) so an answer fits the context,
    and the first turn it kept (the `anchor` of the next turn's window).

    A single message too long for the context keeps its end. Runs off the event loop.
    """
    n_ctx = engine.n_ctx_seq
    reserve = min(engine.config.max_tokens, n_ctx // 2)  # room left for the answer
    persona_tokens = engine.count_tokens(persona) if persona.strip() else 0
    budget = n_ctx - reserve - persona_tokens - PROMPT_MARGIN_TOKENS
    tokens: list[int] = []
    fitted: list[Turn] = []
    for _ in range(6):
        fitted = fit_turns(turns, engine.count_tokens, max(budget, 0), anchor)
        tokens = engine.chat_tokens(build_messages(persona, fitted))
        over = len(tokens) + reserve - n_ctx
        if over <= 0:
            break
        budget -= over + PROMPT_MARGIN_TOKENS  # the template cost more than estimated
        anchor = None
    else:
        if len(tokens) >= n_ctx:
            raise ValueError(f"no prompt fits a context of {n_ctx} tokens")
        # no full answer fits, but a short one does
    return tokens, (fitted[0] if fitted else None)


class GenerateHandler:
    def __init__(
        self,
        engine: Engine,
        queue: JobQueue,
        keys: Keys,
        persona: str,
        watcher: CancelWatcher,
        model_id: str = "",
        throughput: Throughput | None = None,
        draft_interval: float | None = None,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.keys = keys
        self.persona = persona
        self.watcher = watcher
        self.api = OpenAiJobHandler(engine, queue, keys, watcher, model_id)
        # conversation -> the first turn of its window
        self._anchors: OrderedDict[Any, Turn] = OrderedDict()
        # What this instance publishes for the worker's wait estimates (ml/stats.py).
        self.throughput = throughput or Throughput(slots=max(1, engine.config.parallel))
        self.typing = TypingSignal(queue.redis, keys)
        # REPLY_STYLE=draft: private chats' text so far, for the worker's drafts (None: off).
        self.drafts = (
            DraftProgress(queue.redis, keys, draft_interval) if draft_interval is not None else None
        )

    async def __call__(self, job: Job) -> None:
        began = time.monotonic()
        self.throughput.started()
        measured: list[int] = []  # completion tokens of a generation that finished
        try:
            if job.payload.get("kind") == API_KIND:
                await self.api(job)
                measured.append(0)  # it held a slot as long as a turn would
            else:
                await self._turn(job, measured)
        finally:
            self.throughput.ended(time.monotonic() - began, sum(measured), finished=bool(measured))

    async def _turn(self, job: Job, measured: list[int]) -> None:
        gen = GenerateJob.from_payload(job.payload)
        turns = [Turn(role=role, text=text) for role, text in gen.turns]  # type: ignore[arg-type]
        chat_id, topic = gen.chat_id, turn_topic(gen.turn)
        conversation = turn_conversation(gen.turn)  # the chat, or its forum topic
        bound = log.bind(job_key=gen.key, chat_id=chat_id)
        stats: dict[str, Any] = {}
        cancelled = False
        drafting = self.drafts is not None and gen.chat_type == "private"  # groups: typing
        # The conversation's `live` key holds the turn's id until a newer message or /reset
        # supersedes it.
        live = self.keys.chat_live(chat_id, topic)
        try:
            if await self.watcher.stale(live, gen.turn):
                cancelled = True
                text = ""
                bound.info("generation skipped: superseded")
                observe(None, "cancelled")
            else:
                persona = self.persona if gen.persona is None else gen.persona  # /persona
                prompt, first = await asyncio.to_thread(
                    prompt_tokens, self.engine, persona, turns, self._anchors.get(conversation)
                )
                self._remember(conversation, first)
                # The reply is being written now: "typing…" if the worker held it back.
                await self.typing.generation_started(chat_id, topic)
                generation = self.engine.submit(prompt, cache_key=f"chat:{conversation}")
                try:
                    with self.watcher.watch(live, gen.turn, generation):
                        completion: Completion = await (
                            self._write_drafts(generation, chat_id, gen.turn)
                            if drafting
                            else generation.result()
                        )
                except asyncio.CancelledError:
                    generation.cancel()  # shutting down: the job stays pending for another
                    raise
                cancelled = completion.finish_reason == "cancelled"
                text = "" if cancelled else completion.text.strip() or texts.GENERATION_FAILED
                stats = {
                    "prompt_tokens": completion.prompt_tokens,
                    "cached_tokens": completion.cached_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "generation_seconds": round(completion.seconds, 4),
                    "first_token_seconds": completion.first_token_seconds,
                    "tokens_per_second": round(completion.tokens_per_second, 2),
                    "finish_reason": completion.finish_reason,
                }
                bound.info("generation cancelled" if cancelled else "generated", **stats)
                observe(completion, "cancelled" if cancelled else "ok")
                if not cancelled:
                    measured.append(completion.completion_tokens)
        except Exception as error:  # the user gets an apology, never silence
            bound.error("generation failed", error=type(error).__name__, detail=str(error)[:200])
            observe(None, "failed")
            text = texts.GENERATION_FAILED
            cancelled = False
        reply = ReplyJob(
            key=f"reply:{gen.turn}",
            chat_id=chat_id,
            chat_type=gen.chat_type,
            user_id=gen.user_id,
            reply_to_message_id=gen.reply_to_message_id,
            started_at=gen.started_at or time.time(),
            paced=True,
            text=text,
            turn=gen.turn,
            cancelled=cancelled,
            stats=stats,
            markdown=text != texts.GENERATION_FAILED,  # the model wrote it: Markdown
        )
        if drafting and self.drafts is not None:
            await self.drafts.close(chat_id, gen.turn)  # no draft may follow the reply
        await self.queue.hand_over(
            job,
            GENERATE_GROUP,
            self.keys.stream_for("replies", chat_id),
            reply.to_payload(),
            reply.key,
            guard=TurnGuard(chat_id=chat_id, turn=gen.turn),
        )

    async def _write_drafts(self, generation: Generation, chat_id: int, turn: str) -> Completion:
        """The generation's result, its text so far written for drafts on the way."""
        assert self.drafts is not None
        throttle = self.drafts.throttle()
        pieces: list[str] = []
        async for piece in generation:
            pieces.append(piece)
            now = time.monotonic()
            if throttle.due(now):
                throttle.written(now)
                await self.drafts.publish(chat_id, turn, "".join(pieces))
        assert generation.completion is not None
        return generation.completion

    def _remember(self, chat_id: Any, first: Turn | None) -> None:
        if first is None:
            self._anchors.pop(chat_id, None)
            return
        self._anchors[chat_id] = first
        self._anchors.move_to_end(chat_id)
        while len(self._anchors) > ANCHORS_KEPT:
            self._anchors.popitem(last=False)
