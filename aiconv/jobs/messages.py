"""The jobs passed between stages, typed: one encode/decode pair per kind.

A stream entry's `job` field holds one of these as JSON. `kind` says which; Telegram updates carry
no kind (they are written by the web and the poller, and came first). Ids are integers in Python and
may arrive as strings from Lua (`cjson` would round large chat ids), so decoding converts them.

A chat turn's jobs all carry the turn's identity (`turn`, e.g. `123:456:7` = chat 123, answering up
to message 456, the chat's 7th turn): every effect of the turn is keyed by it, and only the turn
that owns its conversation (worker/turns.py) may hand its work on.

A *conversation* is a chat, or one forum topic of it: turns are per conversation, so two topics of
one forum are answered side by side, each from its own history. Its id is the chat id, with
`/<topic>` for a topic (`-100123/42`), and a turn's id starts with it (`-100123/42:456:7`), so every
job of a turn names its conversation without another field, and the ids of turns outside topics
are what they were before topics had turns of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

TurnMode = Literal["active", "final"]


class InvalidJob(ValueError):
    """A stream entry that is not a job of the expected kind."""


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise InvalidJob(f"not an integer: {value!r}")
    try:
        return int(value)
    except ValueError as error:
        raise InvalidJob(f"not an integer: {value!r}") from error


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class UpdateJob:
    """One Telegram update, as received (web or poller)."""

    update_id: int
    chat_id: int | None
    received_at: float
    update: dict[str, Any]

    @property
    def key(self) -> str:
        return f"update:{self.update_id}"

    def to_payload(self) -> dict[str, Any]:
        return {"key": self.key, **_shallow(self)}

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> UpdateJob:
        update = p.get("update")
        if not isinstance(update, dict):
            raise InvalidJob("update job without an update")
        return cls(
            update_id=_int(p.get("update_id")),
            chat_id=_opt_int(p.get("chat_id")),
            received_at=float(p.get("received_at") or 0.0),
            update=update,
        )


@dataclass(frozen=True)
class TurnJob:
    """A claimed chat turn (written by the claim script in worker/turns.py, in Lua)."""

    turn: str
    chat_id: int
    reply_to: int
    covers: int  # how many of the chat's messages had been noted when the turn was claimed
    mode: TurnMode
    first_at: float  # Redis time of the oldest message the turn answers

    @property
    def key(self) -> str:
        return f"turn:{self.turn}"

    @property
    def topic(self) -> int | None:
        """The forum topic the turn answers in (None outside topics)."""
        return turn_topic(self.turn)

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> TurnJob:
        mode = p.get("mode")
        if p.get("kind") != "turn" or mode not in ("active", "final"):
            raise InvalidJob("not a turn job")
        return cls(
            turn=str(p["turn"]),
            chat_id=_int(p.get("chat_id")),
            reply_to=_int(p.get("reply_to")),
            covers=_int(p.get("covers")),
            mode=mode,
            first_at=float(p.get("first_at") or 0.0),
        )


@dataclass(frozen=True)
class GenerateJob:
    """A chat's history for the model, on behalf of one turn."""

    turn: str
    chat_id: int
    chat_type: str
    user_id: int | None
    reply_to_message_id: int
    started_at: float
    turns: list[tuple[str, str]]  # (role, text), oldest first
    # The chat's own system prompt (/persona); None: ml's PERSONA setting. Carried in the job
    # so the ml stage needs no database, and a persona set mid-turn applies from the next turn.
    persona: str | None = None
    kind: Literal["chat"] = "chat"

    @property
    def key(self) -> str:
        return f"gen:{self.turn}"

    def to_payload(self) -> dict[str, Any]:
        payload = _shallow(self)
        payload["turns"] = [list(t) for t in self.turns]
        return {"key": self.key, **payload}

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> GenerateJob:
        raw_turns = p.get("turns") or []
        if not isinstance(raw_turns, list):
            raise InvalidJob("turns must be a list")
        return cls(
            turn=str(p["turn"]),
            chat_id=_int(p.get("chat_id")),
            chat_type=str(p.get("chat_type") or "private"),
            user_id=_opt_int(p.get("user_id")),
            reply_to_message_id=_int(p.get("reply_to_message_id")),
            started_at=float(p.get("started_at") or 0.0),
            turns=[(str(role), str(text)) for role, text in raw_turns],
            persona=_opt_str(p.get("persona")),
        )


@dataclass(frozen=True)
class ReplyJob:
    """Text for a chat: a turn's generated answer (paced), or a fixed reply (unpaced)."""

    key: str  # reply:<turn> for a turn; reply:<chat>:<message> or sorry:<turn> for fixed texts
    chat_id: int
    chat_type: str
    user_id: int | None
    reply_to_message_id: int | None
    started_at: float
    paced: bool
    text: str
    turn: str | None = None  # set when the reply belongs to a turn, which it settles
    cancelled: bool = False  # the turn was superseded before its text was written
    stats: dict[str, Any] = field(default_factory=dict)
    # The forum topic to answer in. None: outside topics, or (a turn's reply) the topic of the
    # message it answers, which delivery looks up.
    message_thread_id: int | None = None
    notice: bool = False  # a courtesy (busy:...): sent once, answers nothing, not in history
    markdown: bool = False  # the model's Markdown: sent rendered as entities (fixed texts: not)
    kind: Literal["reply"] = "reply"

    def to_payload(self) -> dict[str, Any]:
        return _shallow(self)

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> ReplyJob:
        stats = p.get("stats")
        return cls(
            key=str(p["key"]),
            chat_id=_int(p.get("chat_id")),
            chat_type=str(p.get("chat_type") or "private"),
            user_id=_opt_int(p.get("user_id")),
            reply_to_message_id=_opt_int(p.get("reply_to_message_id")),
            started_at=float(p.get("started_at") or 0.0),
            paced=bool(p.get("paced")),
            text=str(p.get("text") or ""),
            turn=_opt_str(p.get("turn")),
            cancelled=bool(p.get("cancelled")),
            stats=stats if isinstance(stats, dict) else {},
            message_thread_id=_opt_int(p.get("message_thread_id")),
            notice=bool(p.get("notice")),
            markdown=bool(p.get("markdown")),
        )


def conversation_id(chat_id: int | str, topic: int | None = None) -> str:
    """The id of a chat's conversation (`topic` None: outside forum topics)."""
    return str(chat_id) if topic is None else f"{chat_id}/{topic}"


def parse_conversation(conversation: str | bytes) -> tuple[int, int | None]:
    """(chat, topic) of a conversation id."""
    text = conversation.decode() if isinstance(conversation, bytes) else conversation
    chat, _, topic = text.partition("/")
    return int(chat), int(topic) if topic else None


def turn_conversation(turn: str) -> str:
    """The conversation id a turn id starts with (`-100123/42:456:7` -> `-100123/42`)."""
    return turn.partition(":")[0]


def turn_topic(turn: str) -> int | None:
    """The forum topic of a turn (None outside topics, and for an id that names none: a turn
    id that is not one of ours owns nothing, whatever conversation it is looked up in)."""
    _, slash, topic = turn_conversation(turn).partition("/")
    return int(topic) if slash and topic.isdigit() else None


def chat_of(payload: dict[str, Any]) -> int | None:
    """The chat a job belongs to, for per-chat lanes and dead-letter handling."""
    try:
        return _opt_int(payload.get("chat_id"))
    except InvalidJob:
        return None


def conversation_of(payload: dict[str, Any]) -> str | None:
    """The conversation a job belongs to (its lane: a conversation's jobs run in order): its
    turn's, else its chat's, in the job's forum topic if it names one."""
    turn = payload.get("turn")
    if isinstance(turn, str) and turn:
        return turn_conversation(turn)
    chat_id = chat_of(payload)
    if chat_id is None:
        return None
    try:
        topic = _opt_int(payload.get("message_thread_id"))
    except InvalidJob:
        topic = None
    return conversation_id(chat_id, topic)


def _shallow(job: Any) -> dict[str, Any]:
    """A job's fields as a dict, values shared, not copied: `dataclasses.asdict` deep-copies
    the whole Telegram update on every webhook request, only for it to be JSON-encoded at once."""
    return {f.name: getattr(job, f.name) for f in fields(job)}
