"""The ml mode's wiring: load the model, then consume generation jobs."""

from __future__ import annotations

import asyncio

import structlog

from aiconv.config import Settings
from aiconv.jobs.consumer import Consumer
from aiconv.jobs.queue import JobQueue
from aiconv.ml.engine import Engine, EngineConfig
from aiconv.ml.generator import GENERATE_GROUP, GenerateHandler

log = structlog.get_logger(__name__)


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        model_path=settings.resolved_model_path(),
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
    )


async def run_ml(engine: Engine, queue: JobQueue, settings: Settings, stop: asyncio.Event) -> None:
    # One sequence at a time per model for now: reading only what we can run leaves the rest
    # of the stream to other ml processes.
    consumer = Consumer(
        queue,
        queue.keys.generate,
        GENERATE_GROUP,
        GenerateHandler(engine, queue, queue.keys, settings.persona),
        options=settings.consumer_options(concurrency=1),
    )
    log.info("ml running", consumer=consumer.name)
    await consumer.run(stop)
