"""bench/soak: many users at once through real `aiconv web`, `worker` and `ml` processes.

    python -m bench.soak                                  # 1000 users at 100 messages/s
    python -m bench.soak --users 200 --rate 50 --max-tokens 24
    python -m bench.soak --users 50 --rate 25 --fast-pacing --no-baseline --json out.json

Each user writes one message by webhook (as Telegram would: a fresh update id, the secret
header) to a real `aiconv web`; a real `aiconv worker` and `aiconv ml` answer through the Bot
API double, which runs in this process and records every call with its arrival time. The
processes get a database and a Redis key prefix of their own, dropped afterwards.

Printed figures (the issue "1000 users on one box" names them):
- webhook ack p50/p99 and non-2xx answers;
- first "typing" after the webhook accepted the message, p50/p95;
- reply latency (accepted → last part of the reply) p50/p95/max; lost; duplicated;
- Bot API calls per second, overall and per method: mean and the maximum over any 1 s window;
- per process: peak RSS (the process and its children together) and CPU seconds; CPU per
  message of web + worker, every Telegram call included;
- ml throughput: completion tokens/s while ml was busy, beside `llama-server -np ML_PARALLEL`
  alone on the same prompt mix (same persona, same user texts, same max_tokens and threads),
  run afterwards on the same box, as a ratio (target ≥ 0.85). Skipped, with a message, when
  llama-server cannot be had (see bench/common.py: it is built once from a PyPI sdist).

Nothing here is a pass/fail threshold: it is a measurement. The 50-user smoke run in the tests
checks only that nothing is lost or duplicated and that the report is complete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

from aiconv.conversation import texts
from aiconv.conversation.prompt import DEFAULT_PERSONA
from aiconv.store.migrate import apply_migrations, ensure_database
from aiconv.testing.botapi import BotApiDouble
from bench.common import Row, inherited_env, llama_server_binary, print_table

ADMIN_DATABASE_URL = os.environ.get(
    "AICONV_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AICONV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "soak-webhook-secret-0123456789abcdef"
FIRST_CHAT_ID = 8_100_000_000  # far from the ids the tests use
# What the bot says instead of, or before, a reply when it is busy: counted apart, never as one.
_WHEN = texts.busy_notice(2).split("about 2 minutes")
BUSY_NOTICE = re.compile(
    re.escape(_WHEN[0]) + "about (a minute|[0-9]+ minutes)" + re.escape(_WHEN[1])
)
TOPICS = (
    "Hi! How are you today?",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book?",
    "I had a long day at work.",
    "What's a fun weekend plan?",
    "Tell me something interesting about the ocean.",
    "How do I stay motivated to exercise?",
    "Any tips for learning a new language?",
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def max_per_window(times: Iterable[float], window: float = 1.0) -> int:
    """The largest number of events inside any `window`-long interval (two pointers)."""
    ordered = sorted(times)
    best = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


# ---- processes ---------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants that are alive now."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int, with_reaped_children: bool) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Process:
    """One `aiconv MODE` process; peak RSS and CPU are of its whole process tree."""

    mode: str
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.env['METRICS_PORT']}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "aiconv.cli", self.mode], env=self.env, stdout=out, stderr=out
        )

    async def ready(self, http: httpx.AsyncClient, limit_s: float = 180.0) -> None:
        assert self.popen is not None
        probes = [f"{self.ops_url}/ready"] + (
            [f"{self.web_url}/health"] if self.mode == "web" else []
        )
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"aiconv {self.mode} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if all([(await http.get(p)).status_code == 200 for p in probes]):
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)  # polling readiness, bounded by the deadline
        raise TimeoutError(f"aiconv {self.mode} not ready:\n{self.log.read_text()[-3000:]}")

    def sample(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            rss = sum(_rss_kib(pid) for pid in _tree(self.popen.pid))
            self.peak_rss_kib = max(self.peak_rss_kib, rss)

    def tree_cpu_seconds(self) -> float:
        """CPU of the tree so far: read while it still runs (children's CPU dies with them)."""
        if self.popen is None or self.popen.poll() is not None:
            return 0.0
        root = self.popen.pid
        return sum(_cpu_seconds(p, p == root) for p in _tree(root))

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(40)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Sampler:
    """Samples every process's tree RSS twice a second on a thread of its own."""

    def __init__(self, processes: Sequence[Process]) -> None:
        self._processes = processes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for process in self._processes:
                process.sample()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class Chat:
    chat_id: int
    text: str
    sent_at: float = 0.0
    accepted_at: float | None = None
    status: int = 0
    ack_seconds: float = 0.0


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    calls_per_method: dict[str, dict[str, float]] = field(default_factory=dict)
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    ml: dict[str, Any] = field(default_factory=dict)


def process_env(
    args: argparse.Namespace, database_url: str, prefix: str, double: BotApiDouble, web_port: int
) -> dict[str, str]:
    env = inherited_env()
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
        TELEGRAM_BOT_TOKEN=double.token,
        TELEGRAM_API_URL=double.url,
        ENVIRONMENT="dev",
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
        MAX_TOKENS=str(args.max_tokens),
        ML_PARALLEL=str(args.ml_parallel),
        # One deployment: every process knows the webhook (the worker then never polls).
        TELEGRAM_WEBHOOK_URL=f"http://127.0.0.1:{web_port}/webhook",
        TELEGRAM_WEBHOOK_SECRET=SECRET,
    )
    if args.cluster:
        env.update(
            REDIS_CLUSTER_ENABLED="true",
            REDIS_CLUSTER_NODES=args.cluster,
            REDIS_SHARDS=str(args.shards),
        )
    if args.threads:
        env["N_THREADS"] = str(args.threads)
    if args.fast_pacing:
        env.update(
            TYPING_CHARS_PER_SECOND="300",
            TYPING_READ_PAUSE_SECONDS="0.2",
            TYPING_MIN_DELAY_SECONDS="0.2",
            TYPING_MAX_DELAY_SECONDS="1",
            TURN_DEBOUNCE_SECONDS="0.3",
        )
    return env


async def completion_tokens(http: httpx.AsyncClient, ops_url: str) -> float | None:
    try:
        text = (await http.get(f"{ops_url}/metrics")).text
    except httpx.HTTPError:
        return None
    match = re.search(r'^aiconv_tokens_total\{kind="completion"\} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def watch_tokens(
    http: httpx.AsyncClient, ops_url: str, samples: list[tuple[float, float]], stop: asyncio.Event
) -> None:
    """(time, completion tokens so far) once a second: the ml throughput while it was busy."""
    while not stop.is_set():
        tokens = await completion_tokens(http, ops_url)
        if tokens is not None:
            samples.append((time.monotonic(), tokens))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def busy_throughput(samples: Sequence[tuple[float, float]]) -> float:
    """Tokens/s between the first and the last sample at which the count moved."""
    moved = [i for i in range(1, len(samples)) if samples[i][1] > samples[i - 1][1]]
    if not moved:
        return 0.0
    first, last = samples[moved[0] - 1], samples[moved[-1]]
    return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)


def is_notice(text: str) -> bool:
    return BUSY_NOTICE.fullmatch(text) is not None


def is_reply(text: str) -> bool:
    """A generated reply (or a part of one): neither a busy notice nor a decline."""
    return not is_notice(text) and text != texts.OVERLOADED


async def send_all(
    args: argparse.Namespace, web_url: str, double: BotApiDouble, chats: list[Chat]
) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:

        async def one(chat: Chat) -> None:
            update = double.make_update(chat.chat_id, chat.text)
            chat.sent_at = time.monotonic()
            try:
                answer = await http.post(
                    f"{web_url}/webhook",
                    json=update,
                    headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                )
                chat.status = answer.status_code
            except httpx.HTTPError:
                chat.status = 0
            done = time.monotonic()
            chat.ack_seconds = done - chat.sent_at
            if chat.status == 200:
                chat.accepted_at = done

        start = time.monotonic()
        tasks = []
        for i, chat in enumerate(chats):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the offered rate itself
            tasks.append(asyncio.create_task(one(chat)))
        await asyncio.gather(*tasks)


async def wait_answered(
    double: BotApiDouble, chats: list[Chat], limit_s: float, settle: float
) -> None:
    """Until every accepted chat has a reply (or `timeout`), then `settle` seconds for strays."""
    wanted = {c.chat_id for c in chats if c.accepted_at is not None}
    deadline = time.monotonic() + limit_s
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        answered = {
            int(c.params["chat_id"])
            for c in double.calls
            if c.method == "sendMessage"
            and c.status == 200
            and is_reply(str(c.params.get("text", "")))
        }
        if wanted <= answered:
            break
        if time.monotonic() - last_report > 15:
            print(f"  … {len(wanted & answered)}/{len(wanted)} answered", flush=True)
            last_report = time.monotonic()
        await asyncio.sleep(0.5)  # polling a bench's progress, bounded by the deadline
    await asyncio.sleep(settle)  # late duplicates, if any, arrive here


def analyse(chats: list[Chat], double: BotApiDouble, started: float, ended: float) -> Report:
    report = Report()
    by_chat: dict[int, list[Any]] = defaultdict(list)
    for call in double.calls:
        chat_id = call.params.get("chat_id")
        if isinstance(chat_id, int) or (isinstance(chat_id, str) and chat_id.lstrip("-").isdigit()):
            by_chat[int(chat_id)].append(call)
    acks = [c.ack_seconds for c in chats]
    first_typing, first_sign, latency = [], [], []
    lost = duplicated = notices = declined = 0
    for chat in chats:
        if chat.accepted_at is None:
            continue
        calls = by_chat.get(chat.chat_id, [])
        typing = [c.at for c in calls if c.method == "sendChatAction" and c.at >= chat.sent_at]
        if typing:
            first_typing.append(min(typing) - chat.accepted_at)
        sent = [c for c in calls if c.method == "sendMessage" and c.status == 200]
        said = [str(c.params.get("text", "")) for c in sent]
        notices += sum(1 for text in said if is_notice(text))
        # The user's first sign that the bot saw the message: typing, a busy notice, or a reply.
        if typing or sent:
            first_sign.append(min([*typing, *(c.at for c in sent)]) - chat.accepted_at)
        if texts.OVERLOADED in said:
            declined += 1  # answered: politely declined, nothing generated
            continue
        replies = [c for c, text in zip(sent, said, strict=True) if is_reply(text)]
        if not replies:
            lost += 1
            continue
        counts = Counter(str(c.params.get("text")) for c in replies)
        if any(n > 1 for n in counts.values()):
            duplicated += 1
        latency.append(max(c.at for c in replies) - chat.accepted_at)
    span = max(ended - started, 1e-9)
    report.figures = {
        "users": len(chats),
        "webhook_ack_p50_s": percentile(acks, 50),
        "webhook_ack_p99_s": percentile(acks, 99),
        "webhook_non_2xx": sum(1 for c in chats if not 200 <= c.status < 300),
        "first_typing_p50_s": percentile(first_typing, 50),
        "first_typing_p95_s": percentile(first_typing, 95),
        "chats_with_typing": len(first_typing),
        "first_sign_p50_s": percentile(first_sign, 50),
        "first_sign_p95_s": percentile(first_sign, 95),
        "reply_latency_p50_s": percentile(latency, 50),
        "reply_latency_p95_s": percentile(latency, 95),
        "reply_latency_max_s": max(latency, default=float("nan")),
        "lost": lost,
        "duplicated": duplicated,
        "busy_notices": notices,
        "declined": declined,
        "bot_api_calls": len(double.calls),
        "bot_api_calls_per_reply": len(double.calls) / max(len(chats) - lost, 1),
        "bot_api_calls_per_s_mean": len(double.calls) / span,
        "bot_api_calls_per_s_max_1s": max_per_window(c.at for c in double.calls),
        "run_seconds": span,
    }
    methods: dict[str, list[float]] = defaultdict(list)
    for call in double.calls:
        methods[call.method].append(call.at)
    report.calls_per_method = {
        method: {
            "calls": len(times),
            "per_s_mean": len(times) / span,
            "per_s_max_1s": max_per_window(times),
        }
        for method, times in sorted(methods.items())
    }
    return report


async def baseline(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """llama-server -np ML_PARALLEL alone, the same persona, texts, max_tokens and threads."""
    binary, why = llama_server_binary(build=not args.no_build)
    if binary is None:
        return {"skipped": why}
    from bench.ml import server_request

    port = free_port()
    n_ctx = args.n_ctx
    threads = args.threads or (os.cpu_count() or 2)
    command = [
        str(binary), "-m", str(args.model), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(args.ml_parallel), "-c", str(n_ctx * args.ml_parallel), "-t", str(threads),
        "-tb", str(threads), "--no-webui",
    ]  # fmt: skip
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220 - started once, before the measurement
    url = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(timeout=600.0, limits=limits) as http:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    return {"skipped": "llama-server exited: " + log.read().decode()[-500:]}
                try:
                    await server_request(http, url, messages(texts[0]), 4, time.perf_counter())
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        return {"skipped": "llama-server did not come up in 120 s"}
                    await asyncio.sleep(0.3)  # waiting for it to load, bounded
            gate = asyncio.Semaphore(args.ml_parallel)
            started = time.perf_counter()

            async def one(text: str) -> int:
                async with gate:
                    sample = await server_request(
                        http, url, messages(text), args.max_tokens, started
                    )
                    return sample.tokens

            tokens = sum(await asyncio.gather(*(one(t) for t in texts)))
            seconds = time.perf_counter() - started
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    return {
        "tokens_per_s": tokens / seconds,
        "requests": len(texts),
        "tokens": tokens,
        "seconds": seconds,
    }


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": DEFAULT_PERSONA}, {"role": "user", "content": text}]


async def run(args: argparse.Namespace) -> Report:
    run_id = uuid.uuid4().hex[:8]
    name = f"aiconv_soak_{run_id}"
    database_url = urlsplit(ADMIN_DATABASE_URL)._replace(path=f"/{name}").geturl()
    prefix = f"aiconv-soak-{run_id}:"
    await ensure_database(database_url)
    await apply_migrations(database_url)
    workdir = Path(tempfile.mkdtemp(prefix="aiconv-soak-"))
    chats = [Chat(FIRST_CHAT_ID + i, TOPICS[i % len(TOPICS)]) for i in range(args.users)]
    processes: list[Process] = []
    try:
        async with BotApiDouble() as double:
            web_port = free_port()
            env = process_env(args, database_url, prefix, double, web_port)
            for mode in ("ml", "worker", "web"):
                mode_env = {
                    **env,
                    "PORT": str(web_port if mode == "web" else free_port()),
                    "METRICS_PORT": str(free_port()),
                }
                processes.append(Process(mode, mode_env, workdir / f"{mode}.log"))
            ml, _worker, web = processes
            async with httpx.AsyncClient(timeout=5.0) as http:
                for process in processes:
                    process.start()
                for process in processes:
                    await process.ready(http)
                print(
                    f"processes ready; sending {args.users} messages at {args.rate}/s", flush=True
                )
                double.calls.clear()
                token_samples: list[tuple[float, float]] = []
                stop_watch = asyncio.Event()
                watcher = asyncio.create_task(
                    watch_tokens(http, ml.ops_url, token_samples, stop_watch)
                )
                with Sampler(processes):
                    # CPU of the run only: start-up (imports, model load) is not per message.
                    cpu_before = [p.tree_cpu_seconds() for p in processes]
                    started = time.monotonic()
                    await send_all(args, web.web_url, double, chats)
                    print("all sent; waiting for the replies", flush=True)
                    await wait_answered(double, chats, args.timeout, args.settle)
                    ended = time.monotonic()
                    for process, before in zip(processes, cpu_before, strict=True):
                        process.cpu_seconds = process.tree_cpu_seconds() - before
                stop_watch.set()
                await watcher
            for process in reversed(processes):
                process.stop()
            report = analyse(chats, double, started, ended)
    finally:
        for process in processes:
            process.stop()
        await drop(name, prefix, args.cluster)
    for process in processes:
        report.processes[process.mode] = {
            "peak_rss_mb": process.peak_rss_kib / 1024,
            "cpu_seconds": process.cpu_seconds,
        }
    answered = max(args.users - report.figures["lost"], 1)
    report.figures["web_worker_cpu_ms_per_message"] = (
        1000
        * (report.processes["web"]["cpu_seconds"] + report.processes["worker"]["cpu_seconds"])
        / answered
    )
    report.ml["aiconv_tokens_per_s"] = busy_throughput(token_samples)
    if not args.no_baseline:
        sample = [c.text for c in chats][: max(args.ml_parallel * 8, 32)]
        report.ml["llama_server"] = await baseline(args, sample)
    return report


async def drop(name: str, prefix: str, cluster: str | None = None) -> None:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    async with await psycopg.AsyncConnection.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    redis: Redis | RedisCluster
    if cluster:
        nodes = [
            ClusterNode(h, int(p)) for h, _, p in (n.rpartition(":") for n in cluster.split(","))
        ]
        redis = RedisCluster(startup_nodes=nodes)
    else:
        redis = Redis.from_url(REDIS_URL)
    try:
        batch = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
        async with redis.pipeline(transaction=False) as pipe:  # keys of many slots: one DEL each
            for key in batch:
                pipe.delete(key)
            await pipe.execute()
    finally:
        await redis.aclose()


def print_report(args: argparse.Namespace, report: Report) -> None:
    f = report.figures
    print()
    print(f"soak: {f['users']} users at {args.rate}/s, MAX_TOKENS={args.max_tokens}, "
          f"ML_PARALLEL={args.ml_parallel}, load average before: {args.load_before}, "
          + (f"Redis Cluster {args.cluster} with {args.shards} shards" if args.cluster
             else "one Redis"))  # fmt: skip
    for key, value in f.items():
        print(f"  {key:34}{value:12.3f}" if isinstance(value, float) else f"  {key:34}{value:12}")
    print("  Bot API calls by method:               calls   mean/s  max/s (any 1 s)")
    for method, row in report.calls_per_method.items():
        print(f"    {method:32}{row['calls']:8} {row['per_s_mean']:8.2f} {row['per_s_max_1s']:8}")
    print("  processes:                     peak RSS MB   CPU s")
    for mode, row in report.processes.items():
        print(f"    {mode:30}{row['peak_rss_mb']:10.1f} {row['cpu_seconds']:8.1f}")
    server = report.ml.get("llama_server", {"skipped": "--no-baseline"})
    if "tokens_per_s" in server:
        print_table(
            "ml throughput while busy (completion tokens/s)",
            [Row("aiconv web+worker+ml", report.ml["aiconv_tokens_per_s"], server["tokens_per_s"],
                 "tok/s", baseline_name=f"llama-server -np {args.ml_parallel}")],
        )  # fmt: skip
    else:
        print(f"  ml throughput: {report.ml['aiconv_tokens_per_s']:.1f} tok/s "
              f"(llama-server baseline skipped: {server['skipped']})")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    from aiconv.config import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second offered")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--ml-parallel", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="N_THREADS (0: aiconv's default)")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up waiting (s)")
    parser.add_argument("--settle", type=float, default=10.0, help="wait for strays (s)")
    parser.add_argument("--fast-pacing", action="store_true", help="short human-pace delays")
    parser.add_argument("--no-baseline", action="store_true", help="skip llama-server")
    parser.add_argument("--no-build", action="store_true", help="never build llama-server")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--cluster",
        default="",
        help="host:port,... of a Redis Cluster to run on (default: one Redis)",
    )
    parser.add_argument("--shards", type=int, default=3, help="REDIS_SHARDS with --cluster")
    args = parser.parse_args(argv)
    args.model = args.model or default_model_path()
    args.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report = asyncio.run(run(args))
    print_report(args, report)
    if args.json:
        args.json.write_text(json.dumps(report.__dict__, indent=2, default=str))


if __name__ == "__main__":
    main()
