"""Continuous batching over llama.cpp: several conversations share every decode step.

One model, one context, `parallel` slots. Each slot is a KV-cache sequence. A single decode
thread loops: it admits waiting requests into free slots between steps, builds one batch with
the next token of every generating slot plus prompt chunks of the slots still reading their
prompt, calls llama_decode once, then samples each slot's token from its own row of logits
with its own sampler. Text streams to asyncio through `loop.call_soon_threadsafe`.

Prefix reuse: a slot keeps the tokens it processed after its request ends. A new prompt goes
to the free slot sharing the longest prefix with it (a chat's next turn finds its previous turn
there) and only the rest is evaluated. A slot's content that must make room for another
conversation is saved to host memory first (`PrefixCache`, LRU, bounded in bytes) and restored
when that conversation comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from llama_cpp import _logger as llama_logger

from aiconv.ml.cache import CacheEntry, PrefixCache
from aiconv.ml.llama import (
    Batch,
    Context,
    LlamaError,
    Model,
    Sampler,
    SamplingParams,
    backend_name,
    gpu_build,
)
from aiconv.ml.text import TextStream, common_prefix

log = structlog.get_logger(__name__)

# A slot's content is saved to host memory before another conversation overwrites it only if
# at least this many of its tokens would be lost; shorter prefixes are cheap to recompute.
SAVE_MIN_TOKENS = 64
# A prefix held elsewhere (host memory, another slot) is copied in only if it saves at least
# this many tokens of prompt evaluation over what the chosen slot already shares.
MIN_GAIN_TOKENS = 32
# Streamed text reaches the event loop at most this often per generation (the first at once).
PUSH_INTERVAL_SECONDS = 0.025

__all__ = ["Completion", "Engine", "EngineConfig", "Generation", "PromptTooLong", "backend_name"]


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    n_ctx: int = 2048  # per conversation: each slot holds this many tokens
    n_threads: int | None = None
    n_gpu_layers: int = 0
    max_tokens: int = 256
    temperature: float = 0.7
    stop: tuple[str, ...] = ()
    parallel: int = 4
    n_batch: int = 512
    cache_mb: int = 512  # host memory for saved conversation states (0: off)
    flash_attn: bool | None = None  # None: llama.cpp decides on a GPU, off on the CPU

    @property
    def flash_attn_mode(self) -> bool | None:
        """None lets llama.cpp choose (offloaded layers); on the CPU, flash attention decodes
        slower than the plain kernels, so it stays off there unless asked for."""
        if self.flash_attn is not None:
            return self.flash_attn
        return None if backend_name(self.n_gpu_layers) == "gpu" else False

    @property
    def threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_seconds: float | None
    finish_reason: str = "stop"  # stop | length | cancelled
    cached_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        decode = self.seconds - (self.first_token_seconds or 0.0)
        return (self.completion_tokens - 1) / decode if decode > 0 else 0.0


class PromptTooLong(ValueError):
    """The prompt leaves no room for even one generated token in a slot."""


class EngineClosed(RuntimeError):
    pass


class Generation:
    """One request's stream of text, consumed on the event loop; cancel() ends it early."""

    def __init__(self, request: _Request, loop: asyncio.AbstractEventLoop) -> None:
        self._request = request
        self._loop = loop
        self._queue: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        self.completion: Completion | None = None

    def cancel(self) -> None:
        self._request.cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._request.cancelled

    def _push(self, item: str | Completion | BaseException) -> None:
        """From the decode thread."""
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def __aiter__(self) -> AsyncIterator[str]:
        while self.completion is None:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Completion):
                self.completion = item
                return
            yield item

    async def result(self) -> Completion:
        async for _ in self:
            pass
        assert self.completion is not None
        return self.completion


class _Forget:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done: asyncio.Future[None] = loop.create_future()

    def generation_done(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.done.set_result, None)


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    stops: tuple[str, ...]
    cache_key: str | None
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    generation: Generation | None = None


@dataclass(eq=False)
class _Active:
    request: _Request
    sampler: Sampler
    pending: list[int]  # prompt tokens not yet evaluated
    stream: TextStream
    cached_tokens: int
    text: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)  # text not yet handed to the event loop
    pushed_at: float = 0.0
    generated: int = 0
    next_token: int | None = None  # sampled, to be evaluated in the next step
    first_token_at: float | None = None
    out_index: int = -1  # row of this slot's logits in the last batch, -1 for none


@dataclass(eq=False)
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what its KV sequence holds, positions 0..
    key: str | None = None
    last_used: float = 0.0
    active: _Active | None = None


class Engine:
    def __init__(self, model: Model, context: Context, config: EngineConfig) -> None:
        self.model = model
        self.context = context
        self.config = config
        self.n_ctx_seq = context.n_ctx_seq
        self.cache = PrefixCache(config.cache_mb * 1024 * 1024)
        self._slots = [_Slot(seq) for seq in range(context.n_seq)]
        self._batch = Batch(max(context.n_batch, context.n_seq))
        self._inbox: queue.SimpleQueue[_Request | _Forget | None] = queue.SimpleQueue()
        self._waiting: deque[_Request] = deque()
        self._closed = False
        self.failure: BaseException | None = None  # why the decode loop died, if it did
        self._on_failure: list[Callable[[BaseException], None]] = []
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        self._thread.start()

    # ---- set-up -------------------------------------------------------------------------

    @classmethod
    def open(cls, config: EngineConfig) -> Engine:
        llama_logger.set_verbose(False)
        model = Model(config.model_path, n_gpu_layers=config.n_gpu_layers)
        try:
            context = Context(
                model,
                n_seq=max(1, config.parallel),
                n_ctx_seq=config.n_ctx,
                n_batch=config.n_batch,
                n_threads=config.threads,
                flash_attn=config.flash_attn_mode,
            )
        except Exception:
            model.close()
            raise
        return cls(model, context, config)

    @classmethod
    async def load(cls, config: EngineConfig) -> Engine:
        started = time.perf_counter()
        engine = await asyncio.to_thread(cls.open, config)
        log.info(
            "model loaded",
            model=config.model_path.name,
            backend=backend_name(config.n_gpu_layers),
            gpu_build=gpu_build(),
            n_ctx=config.n_ctx,
            parallel=config.parallel,
            n_threads=config.threads,
            n_gpu_layers=config.n_gpu_layers,
            prefix_cache_mb=config.cache_mb,
            seconds=round(time.perf_counter() - started, 2),
        )
        if config.n_gpu_layers != 0 and not gpu_build():
            log.warning("N_GPU_LAYERS is set, but llama-cpp-python has no GPU backend: CPU only")
        return engine

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._thread.join()
        for slot in self._slots:
            if slot.active is not None:
                slot.active.sampler.close()
        self.cache.clear()
        self._batch.close()
        self.context.close()
        self.model.close()

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        """Call `callback` (from the decode thread) if the decode loop dies."""
        self._on_failure.append(callback)

    @property
    def active(self) -> int:
        """Slots generating now (read from any thread: a snapshot)."""
        return sum(slot.active is not None for slot in self._slots)

    # ---- prompts (any thread: the vocabulary is read-only) -----------------------------------

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return len(self.model.tokenize(text, special=True))

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        self._check_open()
        return self.model.tokenize(self.model.render_chat(messages), special=True)

    def _check_open(self) -> None:
        if self._closed or not self._thread.is_alive():
            raise EngineClosed("engine closed")

    # ---- requests ---------------------------------------------------------------------------

    def submit(
        self,
        prompt: list[int],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        seed: int | None = None,
        stop: Sequence[str] = (),
        cache_key: str | None = None,
    ) -> Generation:
        """Queue a generation; call from the event loop. Tokens stream through the result."""
        self._check_open()
        if not prompt:
            raise PromptTooLong("empty prompt")
        room = self.n_ctx_seq - len(prompt)
        if room < 1:
            raise PromptTooLong(f"prompt of {len(prompt)} tokens, context {self.n_ctx_seq}")
        wanted = self.config.max_tokens if max_tokens is None else max_tokens
        request = _Request(
            prompt=list(prompt),
            max_tokens=max(1, min(wanted, room)),
            sampling=SamplingParams(
                temperature=self.config.temperature if temperature is None else temperature,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
                seed=seed,
            ),
            stops=(*self.model.chat_stops(), *self.config.stop, *stop),
            cache_key=cache_key,
        )
        generation = Generation(request, asyncio.get_running_loop())
        request.generation = generation
        self._inbox.put(request)
        return generation

    async def forget(self) -> None:
        """Drop every reusable prefix (idle slots and the host cache): the next prompt is cold."""
        marker = _Forget(asyncio.get_running_loop())
        self._inbox.put(marker)
        await marker.done

    async def complete(self, messages: Sequence[dict[str, str]], **options: Any) -> Completion:
        prompt = await asyncio.to_thread(self.chat_tokens, messages)
        return await self.submit(prompt, **options).result()

    # ---- the decode thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._take_inbox():
                self._admit()
                if not self._step():
                    continue
        except Exception as error:  # a bug here must not leave requests hanging forever
            log.exception("decode loop crashed", error=type(error).__name__)
            self.failure = error
            self._fail_all(error)
            for callback in self._on_failure:
                callback(error)
        else:
            self._fail_all(EngineClosed("engine closed"))

    def _busy(self) -> bool:
        return bool(self._waiting) or any(s.active is not None for s in self._slots)

    def _take_inbox(self) -> bool:
        """Move new requests to the waiting line; block while there is nothing to do."""
        block = not self._busy()
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                return False
            if isinstance(item, _Forget):
                self._forget()
                item.generation_done()
            else:
                self._waiting.append(item)
            block = False

    def _forget(self) -> None:
        for slot in self._slots:
            if slot.active is None:
                self.context.seq_clear(slot.seq)
                slot.tokens.clear()
                slot.key = None
                slot.last_used = 0.0
        self.cache.clear()

    def _admit(self) -> None:
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            self._finish_unstarted(request, "cancelled")
        while self._waiting:
            free = [s for s in self._slots if s.active is None]
            if not free:
                return
            request = self._waiting.popleft()
            try:
                self._start(request, free)
            except Exception as error:
                log.error("cannot start generation", error=type(error).__name__, detail=str(error))
                self._deliver(request, error)

    def _choose(self, prompt: list[int], free: list[_Slot]) -> tuple[_Slot, int]:
        """The free slot to use and how many of its tokens the prompt shares.

        A slot whose content the prompt mostly continues (a chat's next turn) wins; otherwise
        the least recently used slot (empty ones first) gives way, so a new conversation never
        destroys a long one just to share a short system prompt with it.
        """
        best, shared = free[0], -1
        for slot in free:
            n = common_prefix(slot.tokens, prompt)
            if n > shared or (n == shared and slot.last_used < best.last_used):
                best, shared = slot, n
        if shared > 0 and 2 * shared >= len(best.tokens):
            return best, shared
        oldest = min(free, key=lambda s: (bool(s.tokens), s.last_used))
        return oldest, common_prefix(oldest.tokens, prompt)

    def _start(self, request: _Request, free: list[_Slot]) -> None:
        prompt = request.prompt
        slot, shared = self._choose(prompt, free)
        if shared + MIN_GAIN_TOKENS < len(prompt):
            self._borrow(slot, prompt, shared, request.cache_key)
            shared = common_prefix(slot.tokens, prompt)
        keep = min(shared, len(prompt) - 1)  # at least one token to evaluate, for its logits
        if keep < len(slot.tokens):
            if len(slot.tokens) - keep >= SAVE_MIN_TOKENS:
                self._save(slot, request.cache_key)
            if not self.context.seq_remove(slot.seq, keep):
                self.context.seq_clear(slot.seq)  # models that cannot cut a sequence
                keep = 0
            del slot.tokens[keep:]
        slot.key = request.cache_key
        slot.last_used = time.perf_counter()
        slot.active = _Active(
            request=request,
            sampler=Sampler(request.sampling),
            pending=prompt[keep:],
            stream=TextStream(request.stops),
            cached_tokens=keep,
        )

    def _borrow(self, slot: _Slot, prompt: list[int], shared: int, key: str | None) -> None:
        """Fill `slot` with a longer prefix of `prompt` held elsewhere, if there is one.

        From host memory: a conversation's saved state (moved into the slot when the prompt
        continues it, else copied). From another slot: its state copied over, of which the
        shared part (typically the system prompt) is also kept in host memory, so that later
        new conversations restore that small state instead of copying a whole slot.
        """
        needed = shared + MIN_GAIN_TOKENS
        found = self.cache.best(prompt, key) if self.cache.enabled else None
        donor, donor_shared = None, 0
        for other in self._slots:
            if other is not slot and other.tokens:
                n = common_prefix(other.tokens, prompt)
                if n > donor_shared:
                    donor, donor_shared = other, n
        if found is not None and found[1] >= needed and found[1] >= donor_shared:
            entry = self.cache.get(found[0])
            self._save(slot, key)
            if self.context.restore_seq(slot.seq, entry.state):
                slot.tokens, slot.key = list(entry.tokens), entry.key
                if 2 * found[1] >= len(entry.tokens):
                    self.cache.take(found[0])  # the conversation moves back into a slot
                elif self.context.seq_remove(slot.seq, found[1]):
                    # Only a prefix was wanted; the entry stays cached for its own conversation.
                    del slot.tokens[found[1] :]
                    slot.key = None
                self.cache.hits += 1
            else:
                self.context.seq_clear(slot.seq)
                slot.tokens, slot.key = [], None
            return
        if donor is None or donor_shared < needed:
            if self.cache.enabled:
                self.cache.misses += 1
            return
        self._save(slot, key)
        try:
            state = self.context.save_seq(donor.seq)
        except LlamaError:
            return
        if not self.context.restore_seq(slot.seq, state):
            self.context.seq_clear(slot.seq)
            slot.tokens, slot.key = [], None
            return
        slot.tokens, slot.key = list(donor.tokens), None
        if self.cache.enabled and self.context.seq_remove(slot.seq, donor_shared):
            del slot.tokens[donor_shared:]
            with contextlib.suppress(LlamaError):
                prefix = self.context.save_seq(slot.seq)
                self.cache.put(CacheEntry(tokens=list(slot.tokens), state=prefix, key=None))

    def _save(self, slot: _Slot, incoming_key: str | None) -> None:
        """Keep a slot's content in host memory before it is overwritten."""
        if not self.cache.enabled or len(slot.tokens) < SAVE_MIN_TOKENS:
            return
        if slot.key is not None and slot.key == incoming_key:
            return  # the same conversation moves on; its older state is superseded
        try:
            state = self.context.save_seq(slot.seq)
        except LlamaError:
            return
        self.cache.put(CacheEntry(tokens=list(slot.tokens), state=state, key=slot.key))

    def _step(self) -> bool:
        """One decode call for every active slot; False if there was nothing to decode."""
        batch = self._batch
        batch.clear()
        in_batch: list[tuple[_Slot, int]] = []  # slot, tokens it put in
        for slot in self._slots:
            active = slot.active
            if active is None:
                continue
            if active.request.cancelled:
                self._finish(slot, "cancelled")
                continue
            if active.next_token is not None:
                active.out_index = batch.add(active.next_token, len(slot.tokens), slot.seq, True)
                in_batch.append((slot, 1))
        for slot in self._slots:
            active = slot.active
            if active is None or not active.pending:
                continue
            room = batch.capacity - batch.n
            if room <= 0:
                break
            chunk = active.pending[:room]
            base = len(slot.tokens)
            last = len(chunk) == len(active.pending)
            for i, token in enumerate(chunk):
                index = batch.add(token, base + i, slot.seq, last and i == len(chunk) - 1)
            active.out_index = index if last else -1
            in_batch.append((slot, len(chunk)))
        if not in_batch:
            return False
        try:
            self.context.decode(batch)
        except LlamaError as error:
            log.error("decode failed", error=str(error), sequences=len(in_batch))
            for slot, _ in in_batch:
                self.context.seq_clear(slot.seq)
                slot.tokens.clear()
                self._finish(slot, "error", error)
            return True
        self.steps += 1
        now = time.perf_counter()
        for slot, n in in_batch:
            active = slot.active
            assert active is not None
            if active.next_token is not None:
                slot.tokens.append(active.next_token)
                active.next_token = None
            else:
                slot.tokens.extend(active.pending[:n])
                del active.pending[:n]
            if active.out_index >= 0:
                self._sample(slot, active, now)
        return True

    def _sample(self, slot: _Slot, active: _Active, now: float) -> None:
        token = active.sampler.sample(self.context, active.out_index)
        active.out_index = -1
        if active.first_token_at is None:
            active.first_token_at = now
        if self.model.is_eog(token):
            self._finish(slot, "stop")
            return
        active.generated += 1
        piece = active.stream.feed(self.model.piece(token))
        if piece:
            active.text.append(piece)
            active.unsent.append(piece)
            # The first text goes out at once; later text in batches: every wake-up of the
            # event loop costs the decode thread time (the GIL), for no visible gain.
            if active.pushed_at == 0.0 or now - active.pushed_at >= PUSH_INTERVAL_SECONDS:
                self._deliver(active.request, "".join(active.unsent))
                active.unsent.clear()
                active.pushed_at = now
        if active.stream.stopped:
            self._finish(slot, "stop")
        elif (
            active.generated >= active.request.max_tokens or len(slot.tokens) + 1 >= self.n_ctx_seq
        ):
            self._finish(slot, "length")
        else:
            active.next_token = token

    def _finish(self, slot: _Slot, reason: str, error: BaseException | None = None) -> None:
        active = slot.active
        assert active is not None
        slot.active = None
        slot.last_used = time.perf_counter()
        active.sampler.close()
        if error is not None:
            self._deliver(active.request, error)
            return
        tail = active.stream.finish() if reason != "cancelled" else ""
        if tail:
            active.text.append(tail)
            active.unsent.append(tail)
        if active.unsent:
            self._deliver(active.request, "".join(active.unsent))
        request = active.request
        self._deliver(
            request,
            Completion(
                text="".join(active.text),
                prompt_tokens=len(request.prompt),
                completion_tokens=active.generated,
                seconds=slot.last_used - request.submitted,
                first_token_seconds=(
                    active.first_token_at - request.submitted if active.first_token_at else None
                ),
                finish_reason=reason,
                cached_tokens=active.cached_tokens,
            ),
        )

    def _finish_unstarted(self, request: _Request, reason: str) -> None:
        self._deliver(
            request,
            Completion(
                text="",
                prompt_tokens=len(request.prompt),
                completion_tokens=0,
                seconds=time.perf_counter() - request.submitted,
                first_token_seconds=None,
                finish_reason=reason,
            ),
        )

    def _deliver(self, request: _Request, item: str | Completion | BaseException) -> None:
        if request.generation is not None:
            request.generation._push(item)

    def _fail_all(self, error: BaseException) -> None:
        for slot in self._slots:
            if slot.active is not None:
                self._deliver(slot.active.request, error)
                slot.active.sampler.close()
                slot.active = None
        while self._waiting:
            self._deliver(self._waiting.popleft(), error)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request):
                self._deliver(item, error)
            elif isinstance(item, _Forget):
                item.generation_done()
