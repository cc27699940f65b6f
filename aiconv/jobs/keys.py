"""Every Redis key aiconv uses, named in one place, under one prefix (installs and test runs never
collide), laid out so that the same code runs on one Redis or on a Redis Cluster.

Invariant: no Lua script and no MULTI touches keys of two hash slots. The conversation path is
split into `shards` (REDIS_SHARDS; 1 on a single Redis): a chat belongs to one shard (a stable
hash of its id), and every key of that chat *and* every structure its scripts touch together
with it (the stage streams, their idempotency markers and dead letters, the turn and typing due
sets) carries the shard's hash tag (`{s<n>}`, see `_shard_tags`). So a turn's claim, hand-overs
and finish each stay one atomic script on one node, and throughput grows with the shards spread
over the cluster's primaries. Keys that stand alone (the bot-wide rate limit, leases, the
scheduler's slots) need no tag; groups of keys used together outside the conversation path have
tags of their own (`{ml}` for the capacity index, `{oai:<reader>}` for one web process's /v1
results).

No module builds a key by string concatenation, and no Lua script builds one at run time:
scripts receive their keys through KEYS.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from dataclasses import dataclass
from typing import Literal

from redis.crc import REDIS_CLUSTER_HASH_SLOTS as SLOTS
from redis.crc import key_slot

# Stream -> the consumer group that works it. A job is alive while its entry is unacknowledged
# in that group (read and pending, or not read yet).
UPDATES_GROUP = "worker"
GENERATE_GROUP = "ml"
REPLIES_GROUP = "delivery"

Stage = Literal["updates", "generate", "replies"]
STAGES: tuple[Stage, ...] = ("updates", "generate", "replies")
_GROUPS: dict[str, str] = {
    "updates": UPDATES_GROUP,
    "generate": GENERATE_GROUP,
    # The same stage works both generation streams; a group name is per stream, so sharing it
    # costs nothing and keeps ml's consumer names and claims alike.
    "generate:openai": GENERATE_GROUP,
    "replies": REPLIES_GROUP,
}
# A hash tag at the start of a label: "{s3}:updates" -> "updates" (metrics name stages, not shards).
_TAG = re.compile(r"^\{[^}]*\}:")


@dataclass(frozen=True)
class Keys:
    prefix: str = "aiconv:"
    shards: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be at least 1")
        if "{" in self.prefix or "}" in self.prefix:
            # A brace in the prefix would become every key's hash tag: one slot for everything.
            raise ValueError("the key prefix may not contain { or }")

    # --- shards --------------------------------------------------------------------------------

    def shard_of(self, chat_id: int | str | None) -> int:
        """The shard of a chat (stable across processes and restarts); shard 0 for no chat."""
        if chat_id is None or self.shards == 1:
            return 0
        return zlib.crc32(str(chat_id).encode()) % self.shards

    @property
    def all_shards(self) -> range:
        return range(self.shards)

    def shard_tag(self, shard: int) -> str:
        return f"{self.prefix}{{{_shard_tags(self.shards)[shard]}}}"

    # --- streams -------------------------------------------------------------------------------

    def stream(self, stage: Stage, shard: int) -> str:
        return f"{self.shard_tag(shard)}:{stage}"

    def stream_for(self, stage: Stage, chat_id: int | str | None) -> str:
        """The stage's stream in the chat's shard (shard 0 for no chat)."""
        return self.stream(stage, self.shard_of(chat_id))

    def updates(self, shard: int) -> str:
        """Telegram updates (web, poller) and claimed chat turns (turn scheduler) for the worker."""
        return self.stream("updates", shard)

    def generate(self, shard: int) -> str:
        return self.stream("generate", shard)

    def replies(self, shard: int) -> str:
        return self.stream("replies", shard)

    def stage_streams(self, stage: Stage) -> tuple[str, ...]:
        """One stage's stream in every shard: what its consumers read."""
        return tuple(self.stream(stage, shard) for shard in self.all_shards)

    @property
    def openai_generate(self) -> str:
        """Generation jobs of the OpenAI-compatible API (/v1), for ml: a stream of their own, so
        that API traffic is seen, bounded, trimmed and dead-lettered apart from chat turns."""
        return f"{self.prefix}{{oai}}:generate"

    @property
    def job_streams(self) -> tuple[str, ...]:
        """Every stream a consumer group works: trimmed, measured, replayable from the DLQ."""
        return (
            *self.stage_streams("updates"),
            *self.stage_streams("generate"),
            self.openai_generate,
            *self.stage_streams("replies"),
        )

    def dlq(self, stream: str) -> str:
        """The dead letters of one job stream, in its hash slot (dead-lettering is one script
        with the acknowledgement of the source entry)."""
        return f"{stream}:dlq"

    @property
    def dlqs(self) -> tuple[str, ...]:
        return tuple(self.dlq(stream) for stream in self.job_streams)

    def group_of(self, stream: str) -> str:
        """The consumer group of one of the job streams."""
        return _GROUPS[self.label(stream)]

    def label(self, key: str) -> str:
        """A key without the install's prefix and shard: metrics labels ("updates",
        "generate", "generate:openai", "replies", "updates:dlq", ...)."""
        rest = key.removeprefix(self.prefix)
        if rest.startswith("{oai}:generate"):
            return "generate:openai" + rest.removeprefix("{oai}:generate")
        return _TAG.sub("", rest)

    # --- idempotency ---------------------------------------------------------------------------

    def done(self, stream: str, idempotency_key: str) -> str:
        """Marker that the job with this key has already been added to `stream` (kept in the
        stream's hash slot: the marker and the XADD are one script)."""
        return f"{stream}:done:{idempotency_key}"

    # --- per chat (the chat's shard tag) -------------------------------------------------------

    def chat_tag(self, chat_id: int | str) -> str:
        return f"{self.shard_tag(self.shard_of(chat_id))}:c:{chat_id}"

    def conversation_tag(self, chat_id: int | str, topic: int | None = None) -> str:
        """A chat's keys, or (forum topic `topic`) one topic's: in the chat's shard either way,
        so the topics of one chat share a slot."""
        tag = self.chat_tag(chat_id)
        return tag if topic is None else f"{tag}:t:{topic}"

    def chat_state(self, chat_id: int | str, topic: int | None = None) -> str:
        """Hash: the conversation's turn state (noted/covered/answered counters, its turn in
        flight); one per chat, and one per forum topic (`topic`)."""
        return f"{self.conversation_tag(chat_id, topic)}:turn"

    def chat_noted(self, chat_id: int | str) -> str:
        """Sorted set: message ids already noted for a turn (a redelivered update is ignored).
        Per chat: message ids are, whatever the topic."""
        return f"{self.chat_tag(chat_id)}:noted"

    def chat_live(self, chat_id: int | str, topic: int | None = None) -> str:
        """String: the id of the conversation's turn until something supersedes it (ml then
        cancels)."""
        return f"{self.conversation_tag(chat_id, topic)}:live"

    def chat_topics(self, chat_id: int | str) -> str:
        """Set: the forum topics of the chat that have turn state (/reset forgets them all)."""
        return f"{self.chat_tag(chat_id)}:topics"

    def sent_parts(self, chat_id: int | str, turn_id: str) -> str:
        """Hash: part index -> Telegram message id, written right after Telegram accepts a part."""
        return f"{self.chat_tag(chat_id)}:sent:{turn_id}"

    def chat_rate(self, chat_id: int | str) -> str:
        """GCRA state of the chat's own send limit (about one message a second)."""
        return f"{self.chat_tag(chat_id)}:rate"

    def group_rate(self, chat_id: int | str) -> str:
        """GCRA state of a group's send limit (20 a minute)."""
        return f"{self.chat_tag(chat_id)}:grouprate"

    def access_notice(self, chat_id: int | str, user_id: int | str, reason: str) -> str:
        """String, set once until it expires: a refusal ("refused", "quota") already told to
        this user in this chat today, or a burst warning ("burst") this minute."""
        return f"{self.chat_tag(chat_id)}:notice:{reason}:{user_id}"

    def user_burst(self, chat_id: int | str, user_id: int | str) -> str:
        """Sorted set: the user's message ids in this chat over the last minute, scored by time."""
        return f"{self.chat_tag(chat_id)}:burst:{user_id}"

    def chat_admin(self, chat_id: int | str, user_id: int | str) -> str:
        """String "1"/"0", expiring: whether the user is an administrator of this chat, as
        getChatMember said lately (changing a group's /persona is for its admins)."""
        return f"{self.chat_tag(chat_id)}:admin:{user_id}"

    def chat_draft(self, chat_id: int | str, topic: int | None = None) -> str:
        """Hash: the text so far of the conversation's reply being generated
        (REPLY_STYLE=draft), and how much of it was shown (aiconv/worker/drafts.py)."""
        return f"{self.conversation_tag(chat_id, topic)}:draft"

    # --- turns and typing (per shard) ----------------------------------------------------------

    def turns_due(self, shard: int) -> str:
        """The shard's conversations (messages.conversation_id) with unanswered messages and
        no turn in flight, scored by when a turn may start."""
        return f"{self.shard_tag(shard)}:turns:due"

    def turns_held(self, shard: int) -> str:
        """The shard's conversations with a turn in flight, scored by when its lease ends unless
        renewed."""
        return f"{self.shard_tag(shard)}:turns:held"

    def typing_due(self, shard: int) -> str:
        return f"{self.shard_tag(shard)}:typing:due"

    def typing_deadline(self, shard: int) -> str:
        return f"{self.shard_tag(shard)}:typing:deadline"

    def drafts_due(self, shard: int) -> str:
        """The shard's chats with draft text not shown yet, scored by when the next may be."""
        return f"{self.shard_tag(shard)}:drafts:due"

    # --- ml capacity ---------------------------------------------------------------------------

    # Tagged {ml}: the publishing script writes an instance's hash and the index together.

    def ml_capacity(self, instance: str) -> str:
        """Hash: what one ml instance measured (slots, busy, speed); expires when it stops."""
        return f"{self.prefix}{{ml}}:capacity:{instance}"

    @property
    def ml_instances(self) -> str:
        """Sorted set: ml instances that published capacity, scored by when (Redis time)."""
        return f"{self.prefix}{{ml}}:instances"

    # --- rate limits, scheduler, poller, gauges ------------------------------------------------

    @property
    def global_rate(self) -> str:
        """GCRA state of the bot-wide send limit (about 30 messages a second)."""
        return f"{self.prefix}ratelimit:global"

    @property
    def scheduler_leader(self) -> str:
        return f"{self.prefix}scheduler:leader"

    def scheduler_slot(self, job: str, slot: int) -> str:
        """Taken once per scheduled run, so a leadership hand-over still runs a slot once."""
        return f"{self.prefix}scheduler:{job}:{slot}"

    def poller_lock(self, bot_token: str) -> str:
        # The token itself is a secret; only a digest of it may appear in Redis.
        return f"{self.prefix}poller:{_digest(bot_token)}:lock"

    def poller_offset(self, bot_token: str) -> str:
        return f"{self.prefix}poller:{_digest(bot_token)}:offset"

    @property
    def business_gauges(self) -> str:
        """Hash of business figures computed by the scheduler, exported by every process."""
        return f"{self.prefix}gauges:business"

    # --- OpenAI-compatible API -----------------------------------------------------------------

    # One web process's result reader XREADs its waiters' response streams and its wake stream
    # in one call: they share the reader's tag {oai:<reader>}, so one slot.

    def api_response(self, reader_id: str, request_id: str) -> str:
        return f"{self.prefix}{{oai:{reader_id}}}:{request_id}"

    def openai_reader_wake(self, reader_id: str) -> str:
        """Stream: one web process's wake-up call to its /v1 result reader (a new waiter)."""
        return f"{self.prefix}{{oai:{reader_id}}}:wake"

    def api_cancel(self, request_id: str) -> str:
        return f"{self.prefix}oai:{request_id}:cancel"

    def api_in_flight(self, api_key: str) -> str:
        """How many /v1 requests one API key has open (named by a digest, never the key)."""
        return f"{self.prefix}oai-in-flight:{_digest(api_key)}"


@functools.cache
def _shard_tags(shards: int) -> tuple[str, ...]:
    """Hash tags whose slots are spread evenly over the 16384 slots: shard n's slot lies in the
    n-th of `shards` equal ranges, so a cluster whose primaries own equal slot ranges (as
    `redis-cli --cluster create` makes them) carries equal numbers of shards when `shards` is a
    multiple of its primaries. ("s3", "s3.1", ...: the first whose slot falls in its range.)"""
    tags = []
    for shard in range(shards):
        low, high = shard * SLOTS // shards, (shard + 1) * SLOTS // shards
        tag, attempt = f"s{shard}", 0
        while not low <= key_slot(tag.encode()) < high:
            attempt += 1
            tag = f"s{shard}.{attempt}"
        tags.append(tag)
    return tuple(tags)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]
