"""Encryption at rest of message text and job payloads: AES-256-GCM, with key rotation.

ENCRYPTION_KEY holds one or more keys, comma-separated, newest first. New text is encrypted with
the first; any listed key decrypts. To rotate: put the new key first and keep the old one after
it until what it encrypted is purged.

Keys. A key is 32 random bytes written as hex or base64 (standard or URL-safe, padded or not):
`openssl rand -base64 32`, `openssl rand -hex 32` or `secrets.token_urlsafe(32)`. Production
accepts nothing else as the encrypting key (config.py, which parses keys with `key_bytes` here).
Anything else, which development tolerates, is a passphrase: it is stretched with scrypt
(salted with aiconv's own salt, so a table computed for other software does not apply), never
with one plain hash.

Ciphertexts name no key. Each value is tried with the configured keys, newest first (AES-GCM
tells which one fits); a key id derived from the key would let a stolen row test guesses of a
passphrase without any decryption. Every ciphertext is bound to where it is stored (associated
data: the message's chat and idempotency key, or the stream of a job), so a value copied onto
another row or stream does not decrypt.

Whether a value is encrypted is stated next to it, never guessed from its text: a message row
says so in `messages.text_sealed` (see `aiconv.store.repository`), a job payload carries a prefix
JSON cannot start with. Rows written before that column existed (NULL) follow the old format
(`enc1:<key id>:<base64>`, keys hashed with SHA-256) and stay readable with the same keys; text
there that does not parse as that format is plain text.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# scrypt for passphrases (development only): ~32 MiB and ~0.1 s per key, once per process.
_KDF_SALT = b"aiconv/ENCRYPTION_KEY/passphrase/v2"
_KDF_N, _KDF_R, _KDF_P = 2**15, 8, 1

LEGACY_PREFIX = "enc1:"
_LEGACY = re.compile(r"enc1:([0-9a-f]{8}):([A-Za-z0-9+/]+={0,2})")


class DecryptionError(Exception):
    """Stored text cannot be read with the configured keys (or was altered)."""


def key_bytes(text: str) -> bytes | None:
    """The bytes of a key written as hex or as base64 (standard or URL-safe, padded or not);
    None when it is neither. Only 32 bytes make a key; a caller checks the length."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]+", text) and len(text) % 2 == 0:
        return bytes.fromhex(text)
    if re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", text):
        unpadded = text.rstrip("=").replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
        except (ValueError, binascii.Error):
            return None
    return None


def is_random_key(text: str) -> bool:
    """Written as a 32-byte key (hex or base64), not as a passphrase."""
    raw = key_bytes(text)
    return raw is not None and len(raw) == KEY_BYTES


@functools.lru_cache(maxsize=16)
def _stretch(passphrase: str) -> bytes:
    return hashlib.scrypt(
        passphrase.encode(),
        salt=_KDF_SALT,
        n=_KDF_N,
        r=_KDF_R,
        p=_KDF_P,
        maxmem=64 * 1024 * 1024,
        dklen=KEY_BYTES,
    )


def derive_key(material: str) -> bytes:
    """The AES-256 key for one ENCRYPTION_KEY entry."""
    raw = key_bytes(material)
    if raw is not None and len(raw) == KEY_BYTES:
        return raw
    return _stretch(material.strip())


def _legacy_key(material: str) -> bytes:
    """The old format's key: a padded URL-safe base64 32-byte key as is, else SHA-256."""
    try:
        raw = base64.urlsafe_b64decode(material.encode())
        if len(raw) == KEY_BYTES:
            return raw
    except ValueError:
        pass
    return hashlib.sha256(material.encode()).digest()


def _legacy_id(key: bytes) -> str:
    return hashlib.sha256(b"aiconv-key-id" + key).hexdigest()[:8]


def message_context(chat_id: int, idempotency_key: str) -> bytes:
    """Associated data of a message's text: its chat and its idempotency key (unique per row)."""
    return f"aiconv/message/{chat_id}/{idempotency_key}".encode()


class TextCipher:
    def __init__(self, key_materials: list[str]) -> None:
        materials = [material.strip() for material in key_materials if material.strip()]
        if not materials:
            raise ValueError("at least one key is needed")
        self._aeads = [AESGCM(derive_key(material)) for material in materials]
        self._legacy: dict[str, AESGCM] = {}
        for material in materials:
            key = _legacy_key(material)
            self._legacy.setdefault(_legacy_id(key), AESGCM(key))

    @classmethod
    def from_setting(cls, value: str | None) -> TextCipher | None:
        return cls(value.split(",")) if value else None

    def seal(self, data: bytes, context: bytes) -> bytes:
        """nonce + ciphertext + tag of `data` under the newest key, bound to `context`."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aeads[0].encrypt(nonce, data, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError("the stored value is too short to be a ciphertext")
        nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, body, context)
            except InvalidTag:
                continue
        raise DecryptionError(
            "no configured key opens it (a key missing from ENCRYPTION_KEY, or an altered value)"
        )

    def encrypt(self, text: str, context: bytes) -> str:
        """Text as stored: base64 of the sealed UTF-8."""
        return base64.b64encode(self.seal(text.encode(), context)).decode()

    def decrypt(self, stored: str, context: bytes) -> str:
        try:
            raw = base64.b64decode(stored, validate=True)
        except (ValueError, binascii.Error):
            raise DecryptionError("the stored value is not base64") from None
        try:
            return self.open(raw, context).decode()
        except UnicodeDecodeError:  # authenticated, so not altered: written so by a bug
            raise DecryptionError("the decrypted value is not UTF-8") from None

    def decrypt_legacy(self, stored: str) -> str | None:
        """Text written in the old format (`enc1:`), or None when `stored` is not in it."""
        match = _LEGACY.fullmatch(stored)
        if match is None:
            return None
        key_id, blob = match.groups()
        try:
            raw = base64.b64decode(blob, validate=True)
        except (ValueError, binascii.Error):
            return None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            return None
        aead = self._legacy.get(key_id)
        if aead is None:
            raise DecryptionError(f"text encrypted with key {key_id}, which is not configured")
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], key_id.encode()).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise DecryptionError(f"text under key {key_id} failed authentication") from None


def read_message_text(
    cipher: TextCipher | None, stored: str, sealed: bool | None, chat_id: int, key: str
) -> str:
    """A message's text from its row: `sealed` is the row's `text_sealed` (NULL: old row).

    Raises DecryptionError when the text is encrypted and cannot be read.
    """
    if sealed is False:
        return stored  # plain, whatever it looks like
    if sealed:
        if cipher is None:
            raise DecryptionError("the text is encrypted and ENCRYPTION_KEY is not set")
        return cipher.decrypt(stored, message_context(chat_id, key))
    # Written before text_sealed existed: the old format, recognised by its exact shape.
    if not stored.startswith(LEGACY_PREFIX):
        return stored
    if cipher is None:
        return stored  # as these rows were always read without a key
    text = cipher.decrypt_legacy(stored)
    return stored if text is None else text
