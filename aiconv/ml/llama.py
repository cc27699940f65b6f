"""A thin, typed layer over llama.cpp's C API (through llama-cpp-python's ctypes bindings).

Only this module touches ctypes. It loads a model, renders its chat template, tokenizes, and
owns one context whose KV cache holds `n_seq` independent sequences that share every decode
call: the low-level batch API, several sequence ids per batch.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

# Used when a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_backend_ready = False


def backend_name(n_gpu_layers: int = 0) -> str:
    """Where the model runs: "gpu" when layers are offloaded with a GPU build, else "cpu"."""
    return "gpu" if gpu_build() and n_gpu_layers != 0 else "cpu"


def gpu_build() -> bool:
    """Whether this llama-cpp-python was built with a GPU backend (CUDA, Metal, ...)."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


class LlamaError(RuntimeError):
    """llama.cpp refused an operation (load, context, decode)."""


class Model:
    """A loaded GGUF: vocabulary, chat template. Read-only after load, so safe from any thread."""

    def __init__(self, path: Path, n_gpu_layers: int = 0) -> None:
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers < 0 else n_gpu_layers
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise LlamaError(f"cannot load model {path}")
        self.path = path
        self.ptr = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(model)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self._formatter = self._chat_formatter()
        self._piece_cache: dict[int, bytes] = {}

    def close(self) -> None:
        if self.ptr:
            self.vocab = None
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    def metadata(self, key: str) -> str | None:
        size = 4096
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buffer, size)
            if n < 0:
                return None
            if n < size:
                return buffer.value.decode("utf-8", errors="replace")
            size = n + 1

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        template = self.metadata("tokenizer.chat_template") or CHATML_TEMPLATE
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self.token_text(self.eos),
            bos_token=self.token_text(self.bos),
        )

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text for `messages`, ending where the assistant's reply begins."""
        return str(self._formatter(messages=list(messages)).prompt)  # type: ignore[arg-type]

    def chat_stops(self) -> tuple[str, ...]:
        """The template's own end marker, as text (llama-cpp-python stops on it as well)."""
        eos = self.token_text(self.eos)
        return (eos,) if eos else ()

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        if self.vocab is None:
            raise LlamaError("model closed")
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), tokens, capacity, add_bos, special
        )
        if n < 0:
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), tokens, capacity, add_bos, special
            )
            if n < 0:
                raise LlamaError("tokenization failed")
        return list(tokens[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one generated token (special tokens render as nothing)."""
        cached = self._piece_cache.get(token)
        if cached is not None:
            return cached
        buffer = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -n, 0, False)
        result = buffer.raw[: max(n, 0)]
        self._piece_cache[token] = result
        return result

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None


class Sampler:
    """A llama.cpp sampler chain: greedy at temperature 0, else top-k/top-p/min-p/temp/dist."""

    def __init__(self, params: SamplingParams) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if params.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            if 0 < params.top_p < 1:
                add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0:
                add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4))
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self.ptr: Any = chain

    def sample(self, context: Context, index: int) -> int:
        """Sample (and accept) a token from the `index`-th output of the last decode."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, context.ptr, index))

    def close(self) -> None:
        if self.ptr is not None:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable llama_batch of up to `capacity` tokens, each in exactly one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append a token; returns its index in the batch (where its logits will be)."""
        i = self.n
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq
        raw.logits[i] = 1 if logits else 0
        self.n = i + 1
        return i

    def close(self) -> None:
        if self.raw is not None:
            llama_cpp.llama_batch_free(self.raw)
            self.raw = None


class Context:
    """One llama_context: `n_seq` sequences of `n_ctx_seq` tokens each (KV not unified)."""

    def __init__(
        self,
        model: Model,
        *,
        n_seq: int,
        n_ctx_seq: int,
        n_batch: int,
        n_threads: int,
        flash_attn: bool | None = None,
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_seq
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = False
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            if flash_attn is None
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise LlamaError("cannot create a llama.cpp context")
        self.ptr: Any = ctx
        self.model = model
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.n_seq = n_seq
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)
        self.n_batch = llama_cpp.llama_n_batch(ctx)

    def close(self) -> None:
        if self.ptr is not None:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None

    def decode(self, batch: Batch) -> None:
        batch.raw.n_tokens = batch.n
        status = llama_cpp.llama_decode(self.ptr, batch.raw)
        if status != 0:
            raise LlamaError(f"llama_decode returned {status}")

    def seq_remove(self, seq: int, start: int = 0) -> bool:
        """Forget positions >= start of `seq`; False if the model cannot cut a sequence there."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq, start, -1))

    def seq_clear(self, seq: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def save_seq(self, seq: int) -> ctypes.Array[ctypes.c_uint8]:
        size = llama_cpp.llama_state_seq_get_size(self.ptr, seq)
        buffer: ctypes.Array[ctypes.c_uint8] = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ptr, buffer, size, seq)
        if written != size:
            raise LlamaError("cannot save a sequence's state")
        return buffer

    def restore_seq(self, seq: int, state: ctypes.Array[ctypes.c_uint8]) -> bool:
        self.seq_clear(seq)
        return bool(llama_cpp.llama_state_seq_set_data(self.ptr, state, len(state), seq))
