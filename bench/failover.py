"""bench/failover: `kill -9` a Redis Cluster primary under steady traffic, and count the cost.

    python -m bench.failover                          # 50 users, 2 messages/s in all
    python -m bench.failover --users 10 --rate 1 --warmup 15 --after 20 --modes all

It starts a Redis Cluster of its own (3 primaries + 3 replicas: `.ci/redis-cluster start 7201
<folder>`, never the tests' 7101-7106), the Bot API double (in this process) and real aiconv
processes (`web`, `worker`, `ml`; `--modes all` for one process) with REDIS_CLUSTER_ENABLED,
REDIS_SHARDS=3 (one shard per primary), a short recovery sweep and a database of their own.
Users write steadily through the webhook; an update the webhook refuses is posted again, as
Telegram does. After the warm-up the primary that owns shard 0's hash slot is killed with
SIGKILL; its replica is promoted (node timeout 2 s) while traffic goes on. Then the bench waits
until every stored message is answered and nothing is left queued (or the deadline), restarts
the killed node (it must rejoin as a replica) and tears everything down.

Printed: messages sent (accepted by the webhook), stored (in PostgreSQL), answered, lost (of
those: never stored), duplicated reply parts, time to promotion, and how long ingest and delivery
paused (the longest gap between accepted updates, and between parts Telegram accepted, from the
kill to the end of traffic, beside the longest gap before the kill).

What the kill may cost, and only that (README "Scaling"): replication is asynchronous, so the
last writes the old primary acknowledged may never reach its replica. PostgreSQL is the truth: a
stored message whose turn state or jobs were lost is answered by the recovery sweep. An update
acknowledged (webhook 200) but not yet stored lived only in Redis: it can be lost. A part Telegram
accepted whose record in Redis was lost can be sent again. Both can only concern writes
acknowledged *before* the kill; the report lists any that were not, and the fault test
(tests/faults/test_cluster_failover.py) asserts there are none and that every stored message is
answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from aiconv.jobs.keys import Keys
from aiconv.store.migrate import apply_migrations, ensure_database
from aiconv.testing.botapi import BotApiDouble
from bench.common import inherited_env
from bench.soak import ADMIN_DATABASE_URL, Process, free_port, is_reply

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / ".ci" / "redis-cluster"
SECRET = "failover-webhook-secret-0123456789abcdef"
FIRST_CHAT_ID = 8_200_000_000  # far from the ids the tests and the soak bench use
TELEGRAM_RETRY_SECONDS = 0.5  # how soon "Telegram" posts a refused update again
TOPICS = (
    "Hi! How is your day going?",
    "What should I read next?",
    "Tell me a fun fact about the moon.",
    "Any tips for a rainy weekend?",
    "What is a good breakfast?",
)


# ---- the cluster -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    node_id: str
    port: int
    flags: frozenset[str]
    slots: tuple[tuple[int, int], ...]

    @property
    def serving_primary(self) -> bool:
        return "master" in self.flags and not self.flags & {"fail", "fail?", "noaddr"}

    def owns(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


def parse_nodes(text: str) -> list[Node]:
    """`CLUSTER NODES` output: id, address, flags, ..., then the slot ranges it serves."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@")[0]
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being migrated: not served here yet
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            Node(fields[0], int(address.rsplit(":", 1)[1]), frozenset(fields[2].split(",")),
                 tuple(slots))
        )  # fmt: skip
    return nodes


class Cluster:
    """A loopback cluster of six nodes from `first_port`, run by .ci/redis-cluster."""

    def __init__(self, first_port: int, folder: Path) -> None:
        self.first_port = first_port
        self.folder = folder
        self.ports = [first_port + i for i in range(6)]

    @property
    def nodes(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    async def _script(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            "bash", str(CLUSTER_SCRIPT), *args, stdout=asyncio.subprocess.DEVNULL
        )
        if await asyncio.wait_for(process.wait(), 120) != 0:
            raise RuntimeError(f".ci/redis-cluster {' '.join(args)} failed")

    async def start(self) -> None:
        await self._script("start", str(self.first_port), str(self.folder))

    async def stop(self) -> None:
        await self._script("stop", str(self.first_port), str(self.folder))

    async def restart_node(self, port: int) -> None:
        await self._script("restart-node", str(self.first_port), str(self.folder), str(port))

    async def _cli(self, port: int, *command: str) -> str:
        """redis-cli's answer, or "" when the node does not answer (in 5 s)."""
        process = await asyncio.create_subprocess_exec(
            "redis-cli", "-p", str(port), *command,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
            return ""
        return out.decode() if process.returncode == 0 else ""

    async def table(self, asking: int) -> list[Node]:
        return parse_nodes(await self._cli(asking, "cluster", "nodes"))

    async def owner(self, slot: int, asking: int) -> Node | None:
        """The primary that serves `slot` as the node on port `asking` sees it."""
        owners = [n for n in await self.table(asking) if n.serving_primary and n.owns(slot)]
        return owners[0] if len(owners) == 1 else None

    async def state_ok(self, port: int) -> bool:
        return "cluster_state:ok" in await self._cli(port, "cluster", "info")

    def kill(self, port: int) -> None:
        pid = int((self.folder / str(port) / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)


# ---- what Telegram saw -------------------------------------------------------------------------


@dataclass
class Message:
    chat: int
    message_id: int
    text: str
    first_posted_at: float = 0.0  # time.monotonic()
    posted_at: float = 0.0  # the last post of the update: the one acknowledged
    accepted_at: float | None = None  # when the webhook answered it 200


@dataclass(frozen=True)
class Part:
    chat: int
    message_id: int  # the id the double gave the part
    at: float  # when the double accepted it (before answering)
    text: str


class Parts:
    """Every part the double accepted, with the message id it gave it (the double's calls do not
    keep those ids, which tie a part to the row delivery stored): its sendMessage is wrapped."""

    def __init__(self, double: BotApiDouble) -> None:
        self.parts: list[Part] = []
        original = double._send_message

        async def send_message(params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            at = time.monotonic()
            status, body = await original(params)
            if status == 200:
                result = body["result"]
                self.parts.append(
                    Part(result["chat"]["id"], result["message_id"], at, result["text"])
                )
            return status, body

        double._send_message = send_message  # type: ignore[method-assign]


async def post_until_accepted(double: BotApiDouble, message: Message, give_up_at: float) -> None:
    """POST the update until the webhook answers 200, as Telegram retries a refused update."""
    update = double.make_update(message.chat, message.text)
    message.message_id = int(update["message"]["message_id"])
    update_id = update["update_id"]
    message.first_posted_at = time.monotonic()
    while time.monotonic() < give_up_at:
        message.posted_at = time.monotonic()
        with contextlib.suppress(httpx.HTTPError):  # web unreachable: Telegram would retry
            await double.deliver(update)
        statuses = [status for uid, status in double.webhook_responses if uid == update_id]
        if statuses and statuses[-1] == 200:
            message.accepted_at = time.monotonic()
            return
        await asyncio.sleep(TELEGRAM_RETRY_SECONDS)  # Telegram's retry pace, bounded above


# ---- the figures -------------------------------------------------------------------------------


@dataclass
class Report:
    offered: int = 0  # user messages posted
    sent: int = 0  # updates the webhook accepted
    stored: int = 0  # of those, stored in PostgreSQL as user messages
    answered: int = 0  # covered by a reply part sent after them
    lost: list[tuple[int, int]] = field(default_factory=list)  # (chat, message) never answered
    unstored: list[tuple[int, int]] = field(default_factory=list)  # accepted, never stored
    unstored_after_kill: list[tuple[int, int]] = field(default_factory=list)
    unanswered_stored: list[tuple[int, int]] = field(default_factory=list)
    duplicated: int = 0  # parts Telegram accepted again (same text, no row of their own)
    duplicated_after_kill: list[tuple[int, str]] = field(default_factory=list)
    accepted_after_promotion: int = 0
    killed_port: int = 0
    promotion_seconds: float | None = None
    ingest_pause_seconds: float = 0.0
    delivery_pause_seconds: float = 0.0
    ingest_gap_before_seconds: float = 0.0
    delivery_gap_before_seconds: float = 0.0
    rejoined_as_replica: bool = False
    settled: bool = False
    logs: str = ""  # the tail of each process's log
    workdir: str = ""  # where the logs are

    def lines(self) -> list[str]:
        promotion = f"{self.promotion_seconds:.1f}" if self.promotion_seconds is not None else "-"
        return [
            f"  messages sent (webhook 200)      {self.sent} of {self.offered}",
            f"  stored in PostgreSQL             {self.stored}",
            f"  answered                         {self.answered}",
            f"  lost (never answered)            {len(self.lost)}",
            f"    of which never stored          {len(self.unstored)}"
            f" (acknowledged after the kill: {len(self.unstored_after_kill)})",
            f"    stored but unanswered          {len(self.unanswered_stored)}",
            f"  duplicated reply parts           {self.duplicated}"
            f" (first sent after the kill: {len(self.duplicated_after_kill)})",
            f"  killed primary                   127.0.0.1:{self.killed_port}",
            f"  time to promotion                {promotion} s",
            f"  ingest pause (longest gap)       {self.ingest_pause_seconds:.1f} s"
            f" (before the kill: {self.ingest_gap_before_seconds:.1f} s)",
            f"  delivery pause (longest gap)     {self.delivery_pause_seconds:.1f} s"
            f" (before the kill: {self.delivery_gap_before_seconds:.1f} s)",
            f"  accepted after the promotion     {self.accepted_after_promotion}",
            f"  everything settled               {self.settled}",
            f"  killed node rejoined as replica  {self.rejoined_as_replica}",
            f"  process logs                     {self.workdir}",
        ]


def longest_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without an event."""
    inside = sorted(t for t in times if start < t <= end)
    edges = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(edges))


async def rows(database_url: str, role: str, chats: list[int]) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT chat_id, telegram_message_id, reply_to_message_id FROM messages "
            "WHERE role = %s AND chat_id = ANY(%s)",
            (role, chats),
        )
        return list(await cursor.fetchall())


async def count(
    database_url: str, messages: list[Message], parts: list[Part], killed_at: float
) -> Report:
    """Which messages are stored and answered, and which parts went out twice."""
    report = Report()
    chats = sorted({m.chat for m in messages})
    replies = await rows(database_url, "assistant", chats)
    users = await rows(database_url, "user", chats)
    stored_ids = {(chat, tid) for chat, tid, _ in users}
    # chat -> {Telegram id of a stored part: the newest user message its turn answered}
    covers: dict[int, dict[int, int]] = defaultdict(dict)
    for chat, tid, reply_to in replies:
        if tid is not None and reply_to is not None:
            covers[chat][tid] = reply_to
    by_chat: dict[int, list[Part]] = defaultdict(list)
    for part in parts:
        by_chat[part.chat].append(part)
    report.offered = len(messages)
    for message in messages:
        if message.accepted_at is None:
            continue
        report.sent += 1
        key = (message.chat, message.message_id)
        stored = key in stored_ids
        report.stored += stored
        answered = any(
            p.at > message.first_posted_at and covers[message.chat].get(p.message_id, 0) >= key[1]
            for p in by_chat[message.chat]
        )
        if answered:
            report.answered += 1
            continue
        report.lost.append(key)
        if stored:
            report.unanswered_stored.append(key)
        else:
            report.unstored.append(key)
            # Only an update acknowledged by the old primary can have been lost with it: one
            # whose (last) post came after the kill went to a live primary.
            if message.posted_at >= killed_at:
                report.unstored_after_kill.append(key)
    for chat, chat_parts in by_chat.items():
        same_text: dict[str, list[Part]] = defaultdict(list)
        for part in chat_parts:
            if is_reply(part.text):
                same_text[part.text].append(part)
        for group in same_text.values():
            recorded = [p for p in group if p.message_id in covers[chat]]
            copies = len(group) - len(recorded)
            if not recorded or not copies:
                continue  # (a small model repeats itself: texts alone prove nothing)
            report.duplicated += copies
            # A part is recorded in Redis right after Telegram accepts it: only a record the
            # old primary acknowledged, so a part first accepted before the kill, can have been
            # lost and the part sent again.
            if min(p.at for p in group) >= killed_at:
                report.duplicated_after_kill.append((chat, group[0].text))
    return report


# ---- the run -----------------------------------------------------------------------------------


def process_env(
    args: argparse.Namespace, cluster: Cluster, database_url: str, prefix: str,
    double: BotApiDouble, web_port: int,
) -> dict[str, str]:  # fmt: skip
    env = inherited_env()
    env.update(
        DATABASE_URL=database_url,
        REDIS_CLUSTER_ENABLED="true",
        REDIS_CLUSTER_NODES=cluster.nodes,
        REDIS_SHARDS=str(args.shards),
        REDIS_KEY_PREFIX=prefix,
        TELEGRAM_BOT_TOKEN=double.token,
        TELEGRAM_API_URL=double.url,
        TELEGRAM_WEBHOOK_URL=f"http://127.0.0.1:{web_port}/webhook",
        TELEGRAM_WEBHOOK_SECRET=SECRET,
        ENVIRONMENT="dev",  # the bench's cluster runs without persistence, on purpose
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
        MAX_TOKENS=str(args.max_tokens),
        TEMPERATURE="0",
        # What the kill left behind is found soon: a stored message without a reply, a job
        # whose consumer's connection broke.
        SCHEDULE_RECOVERY_SECONDS=str(args.recovery_seconds),
        JOB_VISIBILITY_TIMEOUT_SECONDS="5",
        TYPING_CHARS_PER_SECOND="300",
        TYPING_READ_PAUSE_SECONDS="0.2",
        TYPING_MIN_DELAY_SECONDS="0.2",
        TYPING_MAX_DELAY_SECONDS="1",
        TURN_DEBOUNCE_SECONDS="0.3",
    )
    if args.threads:
        env["N_THREADS"] = str(args.threads)
    return env


async def settled(cluster: Cluster, keys: Keys) -> bool:
    """Nothing queued or in flight: every job acknowledged, no turn due or held."""
    client = RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in cluster.ports],
        decode_responses=True,
    )
    try:
        busy = 0
        for stream in keys.job_streams:
            with contextlib.suppress(RedisError):  # a stream never written has no groups
                for group in await client.xinfo_groups(stream):
                    busy += int(group["pending"]) + int(group.get("lag") or 0)
        for shard in keys.all_shards:
            busy += await client.zcard(keys.turns_due(shard))
            busy += await client.zcard(keys.turns_held(shard))
        return busy == 0
    except RedisError:
        return False
    finally:
        await client.aclose()


async def wait_until_done(
    args: argparse.Namespace, cluster: Cluster, keys: Keys, database_url: str,
    messages: list[Message], parts: Parts, killed_at: float,
) -> Report:  # fmt: skip
    """Until every stored message is answered and nothing is left queued, or the deadline."""
    deadline = time.monotonic() + args.timeout
    last_note = time.monotonic()
    while True:
        report = await count(database_url, messages, parts.parts, killed_at)
        # Done once every stored message is answered and nothing is queued or in flight that
        # could still store or answer one (what is lost by then is lost for good).
        if not report.unanswered_stored and await settled(cluster, keys):
            report = await count(database_url, messages, parts.parts, killed_at)
            if not report.unanswered_stored:
                report.settled = True
                return report
        if time.monotonic() > deadline:
            return report
        if time.monotonic() - last_note > 15:
            print(f"  … {report.answered}/{report.sent} answered", flush=True)
            last_note = time.monotonic()
        await asyncio.sleep(1.0)  # polling PostgreSQL and Redis, bounded by the deadline


async def kill_primary(
    cluster: Cluster, keys: Keys, report: Report
) -> tuple[float, asyncio.Task[None]]:
    """SIGKILL the primary of shard 0's slot; a task that times its replica's promotion."""
    slot = key_slot(keys.updates(0).encode())
    owner = await cluster.owner(slot, cluster.first_port)
    if owner is None:
        raise RuntimeError(f"no primary serves slot {slot}")
    survivor = next(p for p in cluster.ports if p != owner.port)
    report.killed_port = owner.port
    cluster.kill(owner.port)
    killed_at = time.monotonic()

    async def promotion() -> None:
        while time.monotonic() - killed_at < 120:
            new = await cluster.owner(slot, survivor)
            if new is not None and new.port != owner.port and await cluster.state_ok(new.port):
                report.promotion_seconds = time.monotonic() - killed_at
                return
            await asyncio.sleep(0.1)  # polling the cluster's view, bounded above

    return killed_at, asyncio.create_task(promotion())


async def rejoin(cluster: Cluster, port: int, limit_s: float = 60) -> bool:
    """Restart the killed node; True once the cluster lists it as a connected replica."""
    await cluster.restart_node(port)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for node in await cluster.table(port):
            if node.port == port and "slave" in node.flags and "myself" in node.flags:
                return True
        await asyncio.sleep(0.5)  # polling the node's view of itself, bounded
    return False


async def run(args: argparse.Namespace, workdir: Path | None = None) -> Report:
    run_id = uuid.uuid4().hex[:8]
    workdir = workdir or Path(tempfile.mkdtemp(prefix="aiconv-failover-"))
    name = f"aiconv_failover_{run_id}"
    database_url = urlsplit(ADMIN_DATABASE_URL)._replace(path=f"/{name}").geturl()
    prefix = f"aiconv-failover-{run_id}:"
    keys = Keys(prefix, args.shards)
    cluster = Cluster(args.first_port, workdir / "cluster")
    processes: list[Process] = []
    await ensure_database(database_url)
    await apply_migrations(database_url)
    try:
        await cluster.start()
        async with BotApiDouble() as double, httpx.AsyncClient(timeout=5.0) as http:
            parts = Parts(double)
            web_port = free_port()
            env = process_env(args, cluster, database_url, prefix, double, web_port)
            for mode in args.modes.split(","):
                serves = mode in ("web", "all")
                processes.append(
                    Process(
                        mode,
                        {**env, "PORT": str(web_port if serves else free_port()),
                         "METRICS_PORT": str(free_port())},
                        workdir / f"{mode}.log",
                    )
                )  # fmt: skip
            for process in processes:
                process.start()
            for process in processes:
                await process.ready(http)
            await ready_for_webhooks(double, http, web_port)
            print(f"processes ready ({args.modes}); {args.users} users, {args.rate}/s", flush=True)

            chats = [FIRST_CHAT_ID + i for i in range(args.users)]
            messages: list[Message] = []
            report = Report()
            started = time.monotonic()
            traffic_end = started + args.warmup + args.after
            give_up = traffic_end + args.timeout
            senders: list[asyncio.Task[None]] = []
            killed_at: float | None = None
            promotion: asyncio.Task[None] | None = None
            n = 0
            while (at := started + n / args.rate) < traffic_end:
                if killed_at is None and at >= started + args.warmup:
                    killed_at, promotion = await kill_primary(cluster, keys, report)
                    print(f"killed the primary on port {report.killed_port}", flush=True)
                await asyncio.sleep(max(0.0, at - time.monotonic()))  # the offered rate itself
                message = Message(chats[n % len(chats)], 0, TOPICS[n % len(TOPICS)])
                messages.append(message)
                senders.append(asyncio.create_task(post_until_accepted(double, message, give_up)))
                n += 1
            assert killed_at is not None and promotion is not None
            await promotion
            await asyncio.gather(*senders)
            print("traffic over; waiting for the replies", flush=True)
            final = await wait_until_done(
                args, cluster, keys, database_url, messages, parts, killed_at
            )
            final.killed_port = report.killed_port
            final.promotion_seconds = report.promotion_seconds
            accepted = [m.accepted_at for m in messages if m.accepted_at is not None]
            sent_parts = [p.at for p in parts.parts]
            promoted_at = killed_at + (final.promotion_seconds or float("inf"))
            final.accepted_after_promotion = sum(1 for t in accepted if t > promoted_at)
            final.ingest_pause_seconds = longest_gap(accepted, killed_at, traffic_end)
            final.delivery_pause_seconds = longest_gap(sent_parts, killed_at, traffic_end)
            before = started + args.warmup / 2  # after the first replies came
            final.ingest_gap_before_seconds = longest_gap(accepted, before, killed_at)
            final.delivery_gap_before_seconds = longest_gap(sent_parts, before, killed_at)
            final.rejoined_as_replica = await rejoin(cluster, final.killed_port)
            final.workdir = str(workdir)
            for process in reversed(processes):
                process.stop()
            final.logs = "\n".join(
                f"--- {p.mode} ---\n{p.log.read_text(errors='replace')[-3000:]}" for p in processes
            )
            return final
    finally:
        for process in processes:
            process.stop()
        with contextlib.suppress(RuntimeError, TimeoutError):
            await cluster.stop()
        await drop(name)


async def ready_for_webhooks(double: BotApiDouble, http: httpx.AsyncClient, port: int) -> None:
    """Until the web answers /health and aiconv has told "Telegram" its webhook."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            healthy = (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
            if healthy and double.webhook_url is not None:
                return
        await asyncio.sleep(0.2)  # polling readiness, bounded by the deadline
    raise TimeoutError("the webhook was not set up in 120 s")


async def drop(name: str) -> None:
    async with await psycopg.AsyncConnection.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="messages per second, all users")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the kill")
    parser.add_argument("--after", type=float, default=30.0, help="seconds of traffic after it")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting (s)")
    parser.add_argument("--modes", default="web,worker,ml", help="aiconv modes, one process each")
    parser.add_argument("--shards", type=int, default=3, help="REDIS_SHARDS")
    parser.add_argument("--first-port", type=int, default=7201, help="the cluster's first port")
    parser.add_argument("--recovery-seconds", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="N_THREADS (0: aiconv's default)")
    args = parser.parse_args(argv)
    if args.first_port <= 7106 and args.first_port + 5 >= 7101:
        parser.error("ports 7101-7106 are the tests' cluster: choose other ones")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    print(f"\nfailover: {args.users} users at {args.rate}/s, REDIS_SHARDS={args.shards}, "
          f"kill after {args.warmup:.0f} s, {args.after:.0f} s of traffic after it")  # fmt: skip
    print("\n".join(report.lines()))
    if report.lost:
        print(f"  lost (chat, message): {report.lost[:20]}")
    sys.exit(0 if not report.unanswered_stored else 1)


if __name__ == "__main__":
    main()
