"""What the web, the worker and ml agree on about generation jobs: kinds, Redis key names.

Kept free of llama.cpp imports: the web mode uses it without loading a model.

API requests (kind "openai"): the web enqueues on `Keys.openai_generate` a job
`{"kind": "openai", "key": "oai:<id>", "id", "reader", "messages", "max_tokens", "temperature",
"top_p", "stop", "seed", "created", "deadline"}`; ml answers on the stream
`Keys.api_response(reader, id)` (in the hash slot of the web process's result reader `reader`)
with entries whose one field `event` is JSON: `{"type": "start", "attempt"}`, then
`{"type": "delta", "text"}`..., then `{"type": "done", "finish_reason", "prompt_tokens",
"completion_tokens", "cached_tokens"}` or `{"type": "error", "status", "code", "message"}`. The
stream expires after RESPONSE_TTL_SECONDS. The web sets `Keys.api_cancel(id)` when its client
goes away.

A request's messages are checked by one validator, `validate_messages`, on both sides: the web
answers 400 before anything is queued, and ml checks again what it takes off the stream (a job
may come from an older web, or be replayed from the dead letters by hand).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiconv.telegram.models import clean_text

API_KIND = "openai"
RESPONSE_TTL_SECONDS = 600
MAX_MESSAGES = 256
MAX_CHARACTERS = 200_000  # all messages' content together
ROLES = frozenset({"system", "user", "assistant"})


class InvalidMessages(ValueError):
    """The messages of a request cannot be run; `code` names why (OpenAI's error codes)."""

    def __init__(self, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.code = code


def validate_messages(raw: Any) -> list[dict[str, str]]:
    """`[{"role", "content"}]` cleaned (no NUL, no lone surrogates), within the caps; or
    InvalidMessages. Content may be a string or OpenAI's text parts; "developer" is "system"."""
    if not isinstance(raw, list) or not raw:
        raise InvalidMessages("messages must be a non-empty array")
    if len(raw) > MAX_MESSAGES:
        raise InvalidMessages(f"at most {MAX_MESSAGES} messages", "too_many_messages")
    messages = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidMessages("each message must be an object")
        role = item.get("role")
        role = "system" if role == "developer" else role
        if role not in ROLES:
            raise InvalidMessages(f"unsupported message role {role!r}")
        messages.append({"role": str(role), "content": clean_text(_content(item.get("content")))})
    if sum(len(m["content"]) for m in messages) > MAX_CHARACTERS:
        raise InvalidMessages(
            f"the messages hold over {MAX_CHARACTERS} characters", "context_length_exceeded"
        )
    return messages


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidMessages("only text content parts are supported")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise InvalidMessages("message content must be a string or text parts")


def served_model_id(model_path: Path) -> str:
    """The model's name for API clients: its GGUF file name without `.gguf`."""
    return model_path.name.removesuffix(".gguf")
