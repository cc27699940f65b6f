"""How a job's payload is written into its stream entry: JSON, sealed when ENCRYPTION_KEY is set.

Jobs carry user text (updates, histories, replies, dead letters), so with a key they are stored
in Redis (and its AOF and RDB files) encrypted: `sealed1:` + base64 of AES-256-GCM over the JSON,
bound to the stream it is written to (see `aiconv.store.crypto`). Reading accepts plain JSON as
well: jobs written by Lua scripts (a claimed turn carries no user text) and jobs queued before the
key was set. An entry that cannot be read (no key, another key, altered) decodes to None, which
the consumer dead-letters as unreadable; it is never an exception.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiconv.store.crypto import DecryptionError, TextCipher

SEALED_PREFIX = "sealed1:"  # JSON objects start with "{": the two cannot be confused


def job_context(stream: str) -> bytes:
    return f"aiconv/job/{stream}".encode()


class JobCodec:
    def __init__(self, cipher: TextCipher | None = None) -> None:
        self.cipher = cipher

    @classmethod
    def from_setting(cls, value: str | None) -> JobCodec:
        return cls(TextCipher.from_setting(value))

    @property
    def sealing(self) -> bool:
        return self.cipher is not None

    def encode(self, stream: str, payload: dict[str, Any]) -> str:
        text = json.dumps(payload)
        if self.cipher is None:
            return text
        sealed = self.cipher.seal(text.encode(), job_context(stream))
        return SEALED_PREFIX + base64.b64encode(sealed).decode()

    def decode(self, stream: str, raw: str | bytes | None) -> dict[str, Any] | None:
        """The payload, or None when the entry is not a readable JSON object."""
        if raw is None:
            return None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if text.startswith(SEALED_PREFIX):
            if self.cipher is None:
                return None
            try:
                blob = base64.b64decode(text[len(SEALED_PREFIX) :], validate=True)
                text = self.cipher.open(blob, job_context(stream)).decode()
            except (DecryptionError, ValueError, binascii.Error):
                return None
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return payload if isinstance(payload, dict) else None


PLAIN = JobCodec()
