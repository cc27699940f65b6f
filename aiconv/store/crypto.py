"""Encryption at rest of message text: AES-256-GCM, with key rotation.

ENCRYPTION_KEY holds one or more keys, comma-separated, newest first. New text is encrypted with
the first; any listed key decrypts (each ciphertext names its key by a short fingerprint). To
rotate: put the new key first and keep the old one after it until old messages are purged or
re-encrypted. Text stored before encryption was enabled stays readable as it is.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc1:"
NONCE_BYTES = 12


class DecryptionError(Exception):
    """Stored text cannot be read with the configured keys."""


def _key_bytes(material: str) -> bytes:
    # A 32-byte key in URL-safe base64 is used as is; any other string is hashed to 32 bytes,
    # so the guide's "32-character encryption key" works too.
    try:
        raw = base64.urlsafe_b64decode(material.encode())
        if len(raw) == 32:
            return raw
    except ValueError:
        pass
    return hashlib.sha256(material.encode()).digest()


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"aiconv-key-id" + key).hexdigest()[:8]


class TextCipher:
    def __init__(self, key_materials: list[str]) -> None:
        keys = [_key_bytes(material) for material in key_materials if material.strip()]
        if not keys:
            raise ValueError("at least one key is needed")
        self._current = (_fingerprint(keys[0]), AESGCM(keys[0]))
        self._by_id = {_fingerprint(key): AESGCM(key) for key in keys}

    @classmethod
    def from_setting(cls, value: str | None) -> TextCipher | None:
        return cls(value.split(",")) if value else None

    def encrypt(self, text: str) -> str:
        key_id, aead = self._current
        nonce = os.urandom(NONCE_BYTES)
        sealed = aead.encrypt(nonce, text.encode(), key_id.encode())
        return f"{PREFIX}{key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before encryption was enabled
        key_id, _, blob = stored[len(PREFIX) :].partition(":")
        aead = self._by_id.get(key_id)
        if aead is None:
            raise DecryptionError(f"text encrypted with key {key_id}, which is not configured")
        raw = base64.b64decode(blob)
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], key_id.encode()).decode()
        except Exception as error:  # InvalidTag: tampered or truncated
            raise DecryptionError(f"text under key {key_id} failed authentication") from error
