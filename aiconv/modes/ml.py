"""`aiconv ml`: load the model, then consume generation jobs, ML_PARALLEL at once.

Invariant: the process holds at most ML_PARALLEL generation jobs, however many streams it reads:
one `Consumer` per shard's generate stream (a chat's turn comes on its shard's stream, see
jobs/keys.py) and one for the /v1 stream, all sharing one `Slots` sized to the engine's slots.
Jobs beyond that stay in their streams for other ml processes.

The only mode module that imports llama.cpp at import time (through ml/engine.py): `all` and
`demo` reach it through modes/process.py when they run ml, `web` and `worker` never do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import structlog

from aiconv.config import Settings
from aiconv.jobs.consumer import Consumer, Slots, consumer_name
from aiconv.jobs.keys import GENERATE_GROUP
from aiconv.jobs.queue import Job, JobQueue
from aiconv.ml.cancel import CancelWatcher
from aiconv.ml.engine import Engine, EngineConfig
from aiconv.ml.generator import GenerateHandler, lane_of
from aiconv.ml.openai_jobs import openai_consumer
from aiconv.ml.protocol import served_model_id
from aiconv.ml.stats import CapacityPublisher, Throughput
from aiconv.observability.loops import supervised
from aiconv.observability.metrics import MODEL_LOADED
from aiconv.worker.turns import Turns

log = structlog.get_logger(__name__)


def main(settings: Settings, args: argparse.Namespace) -> int:
    from aiconv.modes.process import run_until_signalled

    return run_until_signalled(settings, ("ml",))


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        model_path=settings.resolved_model_path(),
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        stop=settings.stop_sequences,
        parallel=settings.ml_parallel,
        cache_mb=settings.ml_prefix_cache_mb,
    )


def model_id(settings: Settings) -> str:
    return served_model_id(settings.resolved_model_path())


async def load_engine(settings: Settings) -> Engine:
    """The model, loaded (off the event loop) and announced by aiconv_model_loaded."""
    engine = await Engine.load(engine_config(settings))
    MODEL_LOADED.set(1)
    return engine


async def warm_up(engine: Engine, settings: Settings, throughput: Throughput) -> None:
    """Measure one generation of a typical first turn (the persona and a greeting, up to
    MAX_TOKENS): what the worker's wait estimates start from until real generations replace it.
    It also leaves the persona's prefix in a slot, where the first real prompts find it. A
    failure only costs the measurement."""
    started = time.monotonic()
    try:
        completion = await engine.complete(
            [
                {"role": "system", "content": settings.persona},
                {"role": "user", "content": "Hello!"},
            ],
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
        )
    except Exception as error:  # the engine's own failure handling stops the mode if it must
        log.warning("ml warm-up failed", error=type(error).__name__)
        return
    seconds = time.monotonic() - started
    throughput.calibrate(seconds)
    log.info("ml warmed up", seconds=round(seconds, 3), tokens=completion.completion_tokens)


async def run_ml(engine: Engine, queue: JobQueue, settings: Settings, stop: asyncio.Event) -> None:
    # As many jobs in hand as the engine has slots: the rest of the stream stays with other ml
    # processes. A chat's jobs share a lane, so they are generated one after another, in order.
    watcher = CancelWatcher(queue.redis)
    turns = Turns(queue.redis, queue.keys, settings.turns)

    async def abandon(job: Job) -> None:
        """A generation that can never complete must not hold its chat's turn."""
        await turns.abandon(queue, job.payload)

    throughput = Throughput(slots=engine.context.n_seq)
    handler = GenerateHandler(
        engine,
        queue,
        queue.keys,
        settings.persona,
        watcher,
        model_id(settings),
        throughput,
        draft_interval=settings.draft_interval,
    )
    options = settings.consumer_options(concurrency=engine.context.n_seq)
    slots = Slots(engine.context.n_seq)
    # One name for all of them: a consumer name is per stream and group, and one name reads
    # as one process in XINFO and in the capacity index.
    name = consumer_name()
    consumers = [
        Consumer(
            queue,
            stream,
            GENERATE_GROUP,
            handler,
            name=name,
            lane_of=lane_of,
            options=options,
            on_dead_letter=abandon,
            slots=slots,
        )
        for stream in queue.keys.stage_streams("generate")
    ]
    # /v1 jobs on their own stream; the engine queues what exceeds its slots.
    consumers.append(openai_consumer(queue, handler.api, options, name=name, slots=slots))
    # The worker estimates waits from what each instance publishes (ml/stats.py).
    publisher = CapacityPublisher(queue.redis, queue.keys, name, throughput)
    log.info("ml running", consumer=name, parallel=engine.context.n_seq, streams=len(consumers))
    # A dead decode loop would answer every job with an apology: stop consuming instead and fail,
    # so that the process exits non-zero and is restarted; other ml processes go on meanwhile.
    loop = asyncio.get_running_loop()
    halt = asyncio.Event()

    def halt_on_failure(_: BaseException) -> None:
        loop.call_soon_threadsafe(halt.set)

    async def relay_stop() -> None:
        await stop.wait()
        halt.set()

    engine.on_failure(halt_on_failure)
    helpers = [
        asyncio.create_task(relay_stop()),
        asyncio.create_task(watcher.run(halt)),
        asyncio.create_task(supervised("ml_capacity", lambda: publisher.run(halt), halt)),
        # Beside the first jobs, not before them: a warm-up never delays or changes how a job
        # is answered (a dead decode loop still answers its job with the apology).
        asyncio.create_task(warm_up(engine, settings, throughput)),
    ]
    try:
        async with asyncio.TaskGroup() as running:
            for consumer in consumers:
                running.create_task(consumer.run(halt))
    finally:
        for task in helpers:
            task.cancel()
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if engine.failure is not None:
        raise RuntimeError("the llama.cpp decode loop failed") from engine.failure
