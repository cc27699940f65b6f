"""llama.cpp behind an async face: one model, one inference thread, the loop never blocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    max_tokens: int = 256
    temperature: float = 0.7
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_seconds: float | None

    @property
    def tokens_per_second(self) -> float:
        decode = self.seconds - (self.first_token_seconds or 0.0)
        return self.completion_tokens / decode if decode > 0 else 0.0


def backend_name() -> str:
    return "gpu" if llama_cpp.llama_supports_gpu_offload() else "cpu"


class Engine:
    def __init__(self, llm: llama_cpp.Llama, config: EngineConfig) -> None:
        self.llm = llm
        self.config = config
        # llama.cpp contexts are not thread-safe: every call goes through this one thread.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    @classmethod
    async def load(cls, config: EngineConfig) -> Engine:
        def build() -> llama_cpp.Llama:
            return llama_cpp.Llama(
                model_path=str(config.model_path),
                n_ctx=config.n_ctx,
                n_threads=config.n_threads,
                n_gpu_layers=config.n_gpu_layers,
                verbose=False,
            )

        started = time.perf_counter()
        llm = await asyncio.to_thread(build)
        log.info(
            "model loaded",
            model=config.model_path.name,
            backend=backend_name(),
            n_ctx=config.n_ctx,
            n_gpu_layers=config.n_gpu_layers,
            seconds=round(time.perf_counter() - started, 2),
        )
        return cls(llm, config)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.llm.close()

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` alone (no BOS); safe from the inference thread only."""
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    async def run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def complete(self, messages: Sequence[dict[str, str]]) -> Completion:
        return await self.run(self._complete_blocking, list(messages))  # type: ignore[no-any-return]

    def _complete_blocking(self, messages: list[dict[str, str]]) -> Completion:
        started = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        chunks = 0
        stream = self.llm.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            stop=list(self.config.stop) or None,
            stream=True,
        )
        for chunk in stream:
            content = chunk["choices"][0]["delta"].get("content")  # type: ignore[index,union-attr]
            if content:
                if first is None:
                    first = time.perf_counter() - started
                pieces.append(str(content))
                chunks += 1
        prompt_tokens = sum(self.count_tokens(m["content"]) + 4 for m in messages)
        return Completion(
            text="".join(pieces).strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=chunks,
            seconds=time.perf_counter() - started,
            first_token_seconds=first,
        )
