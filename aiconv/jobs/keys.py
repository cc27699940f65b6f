"""Every Redis key aiconv uses, named in one place, under one prefix (installs and test runs never
collide).

All keys of one chat carry the same hash tag, `{c:<chat id>}`, so a Lua script that touches
several keys of one chat stays within one Redis Cluster slot. Global keys (the streams, the due
sets, the bot-wide rate limit) have no tag. No module builds a key by string concatenation, and
no Lua script builds one at run time: scripts receive their keys through KEYS.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Stream -> the consumer group that works it. A job is alive while its entry is unacknowledged
# in that group (read and pending, or not read yet).
UPDATES_GROUP = "worker"
GENERATE_GROUP = "ml"
REPLIES_GROUP = "delivery"


@dataclass(frozen=True)
class Keys:
    prefix: str = "aiconv:"

    # --- streams -------------------------------------------------------------------------------

    @property
    def updates(self) -> str:
        """Telegram updates (web, poller) and claimed chat turns (turn scheduler) for the worker."""
        return f"{self.prefix}updates"

    @property
    def generate(self) -> str:
        return f"{self.prefix}generate"

    @property
    def openai_generate(self) -> str:
        """Generation jobs of the OpenAI-compatible API (/v1), for ml: a stream of their own, so
        that API traffic is seen, bounded, trimmed and dead-lettered apart from chat turns."""
        return f"{self.prefix}generate:openai"

    @property
    def replies(self) -> str:
        return f"{self.prefix}replies"

    @property
    def job_streams(self) -> tuple[str, ...]:
        """Every stream a consumer group works: trimmed, measured, replayable from the DLQ."""
        return (self.updates, self.generate, self.openai_generate, self.replies)

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    def group_of(self, stream: str) -> str:
        """The consumer group of one of the job streams."""
        return {
            self.updates: UPDATES_GROUP,
            self.generate: GENERATE_GROUP,
            # The same stage works both generation streams; a group name is per stream, so
            # sharing it costs nothing and keeps ml's consumer names and claims alike.
            self.openai_generate: GENERATE_GROUP,
            self.replies: REPLIES_GROUP,
        }[stream]

    def label(self, key: str) -> str:
        """A key without the install's prefix: metrics labels ("updates", "generate", ...)."""
        return key.removeprefix(self.prefix)

    # --- idempotency ---------------------------------------------------------------------------

    def done(self, idempotency_key: str) -> str:
        """Marker that the job with this key has already handed its effect on."""
        return f"{self.prefix}done:{idempotency_key}"

    # --- per chat (hash tag {c:ID}) ------------------------------------------------------------

    def chat_tag(self, chat_id: int | str) -> str:
        return f"{self.prefix}{{c:{chat_id}}}"

    def chat_state(self, chat_id: int | str) -> str:
        """Hash: the chat's turn state (noted/covered/answered counters, its turn in flight)."""
        return f"{self.chat_tag(chat_id)}:turn"

    def chat_noted(self, chat_id: int | str) -> str:
        """Sorted set: message ids already noted for a turn (a redelivered update is ignored)."""
        return f"{self.chat_tag(chat_id)}:noted"

    def chat_live(self, chat_id: int | str) -> str:
        """String: the id of the chat's turn until something supersedes it (ml then cancels)."""
        return f"{self.chat_tag(chat_id)}:live"

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

    # --- turns (global) ------------------------------------------------------------------------

    @property
    def turns_due(self) -> str:
        """Chats with unanswered messages and no turn in flight, scored by when a turn may start."""
        return f"{self.prefix}turns:due"

    @property
    def turns_held(self) -> str:
        """Chats with a turn in flight, scored by when its lease ends unless renewed."""
        return f"{self.prefix}turns:held"

    # --- typing --------------------------------------------------------------------------------

    @property
    def typing_due(self) -> str:
        return f"{self.prefix}typing:due"

    @property
    def typing_deadline(self) -> str:
        return f"{self.prefix}typing:deadline"

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

    def api_response(self, request_id: str) -> str:
        return f"{self.prefix}oai:{request_id}"

    def api_cancel(self, request_id: str) -> str:
        return f"{self.prefix}oai:{request_id}:cancel"

    def openai_reader_wake(self, reader_id: str) -> str:
        """Stream: one web process's wake-up call to its /v1 result reader (a new waiter)."""
        return f"{self.prefix}oai-wake:{reader_id}"

    def api_in_flight(self, api_key: str) -> str:
        """How many /v1 requests one API key has open (named by a digest, never the key)."""
        return f"{self.prefix}oai-in-flight:{_digest(api_key)}"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]
