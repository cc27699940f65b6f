"""The ml stage: a generation job in, a reply job out (handed over atomically)."""

from __future__ import annotations

import time

import structlog

from aiconv.conversation import texts
from aiconv.conversation.history import Turn, fit_history
from aiconv.conversation.prompt import build_messages
from aiconv.jobs.keys import Keys
from aiconv.jobs.queue import Job, JobQueue
from aiconv.ml.engine import Completion, Engine

GENERATE_GROUP = "ml"
PROMPT_MARGIN_TOKENS = 32  # chat-template tokens around each turn, beyond the per-turn overhead

log = structlog.get_logger(__name__)


class GenerateHandler:
    def __init__(self, engine: Engine, queue: JobQueue, keys: Keys, persona: str) -> None:
        self.engine = engine
        self.queue = queue
        self.keys = keys
        self.persona = persona

    async def __call__(self, job: Job) -> None:
        p = job.payload
        turns = [Turn(role=role, text=text) for role, text in p.get("turns", [])]
        bound = log.bind(job_key=job.key, chat_id=p.get("chat_id"))
        stats: dict[str, float | int | None] = {}
        try:
            messages = await self.engine.run(self._prompt, turns)
            completion: Completion = await self.engine.complete(messages)
            text = completion.text or texts.GENERATION_FAILED
            stats = {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "generation_seconds": round(completion.seconds, 4),
                "first_token_seconds": completion.first_token_seconds,
                "tokens_per_second": round(completion.tokens_per_second, 2),
            }
            bound.info("generated", **stats)
        except Exception as error:  # the user gets an apology, never silence
            bound.error("generation failed", error=type(error).__name__, detail=str(error)[:200])
            text = texts.GENERATION_FAILED
        reply_key = "reply:" + job.key.removeprefix("gen:")
        reply = {
            "key": reply_key,
            "chat_id": p.get("chat_id"),
            "chat_type": p.get("chat_type"),
            "user_id": p.get("user_id"),
            "reply_to_message_id": p.get("reply_to_message_id"),
            "started_at": p.get("started_at", time.time()),
            "paced": True,
            "text": text,
            "stats": stats,
        }
        await self.queue.hand_over(job, GENERATE_GROUP, self.keys.replies, reply, reply_key)

    def _prompt(self, turns: list[Turn]) -> list[dict[str, str]]:
        config = self.engine.config
        persona_tokens = self.engine.count_tokens(self.persona) if self.persona.strip() else 0
        budget = config.n_ctx - config.max_tokens - persona_tokens - PROMPT_MARGIN_TOKENS
        fitted = fit_history(turns, self.engine.count_tokens, budget)
        return build_messages(self.persona, fitted)
