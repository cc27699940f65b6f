"""Encryption at rest: AES-GCM round trips, rotation, tampering, and the findings of issue 13,
item 4 (keys, key ids, row binding, explicit marking, the old format, job payloads)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from aiconv.jobs.codec import SEALED_PREFIX, JobCodec
from aiconv.store.crypto import (
    DecryptionError,
    TextCipher,
    derive_key,
    message_context,
    read_message_text,
)

OLD = base64.b64encode(bytes(range(32))).decode()
NEW = bytes(range(100, 132)).hex()
ROW = message_context(7, "in:7:1")


@given(st.text())
def test_round_trip(text: str) -> None:
    cipher = TextCipher([NEW])
    sealed = cipher.encrypt(text, ROW)
    assert sealed != text or text == ""
    assert cipher.decrypt(sealed, ROW) == text


def test_rotation_reads_old_text_and_writes_with_the_new_key() -> None:
    before = TextCipher([OLD]).encrypt("hello", ROW)
    rotated = TextCipher([NEW, OLD])
    assert rotated.decrypt(before, ROW) == "hello"
    after = rotated.encrypt("hello", ROW)
    assert TextCipher([NEW]).decrypt(after, ROW) == "hello"
    with pytest.raises(DecryptionError, match="no configured key"):
        TextCipher([NEW]).decrypt(before, ROW)


def test_tampering_is_detected() -> None:
    sealed = TextCipher([NEW]).encrypt("pay 10", ROW)
    raw = bytearray(base64.b64decode(sealed))
    raw[-1] ^= 1
    with pytest.raises(DecryptionError):
        TextCipher([NEW]).decrypt(base64.b64encode(bytes(raw)).decode(), ROW)


@pytest.mark.parametrize(
    "written",
    [
        lambda raw: raw.hex(),  # openssl rand -hex 32
        lambda raw: base64.b64encode(raw).decode(),  # openssl rand -base64 32
        lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="),  # token_urlsafe(32)
        lambda raw: base64.b64encode(raw).decode().rstrip("="),
    ],
)
def test_a_32_byte_key_in_hex_or_any_base64_is_the_key_itself(written: object) -> None:
    # Regression: hex and unpadded base64 keys were hashed, so config and crypto disagreed on
    # what a key is.
    raw = os.urandom(32)
    material = written(raw)  # type: ignore[operator]
    assert derive_key(material) == raw
    sealed = TextCipher([material]).encrypt("hi", ROW)
    blob = base64.b64decode(sealed)
    assert AESGCM(raw).decrypt(blob[:12], blob[12:], ROW) == b"hi"


def test_token_urlsafe_keys_work() -> None:
    material = secrets.token_urlsafe(32)
    assert len(derive_key(material)) == 32
    assert derive_key(material) == base64.urlsafe_b64decode(material + "=")


def test_a_passphrase_is_stretched_not_hashed_once() -> None:
    # Regression: one unsalted SHA-256 let a stolen row test 10^9 guesses a second.
    phrase = "correct horse battery"
    key = derive_key(phrase)
    assert key != hashlib.sha256(phrase.encode()).digest()
    assert key == hashlib.scrypt(
        phrase.encode(),
        salt=b"aiconv/ENCRYPTION_KEY/passphrase/v2",
        n=2**15,
        r=8,
        p=1,
        maxmem=64 * 1024 * 1024,
        dklen=32,
    )


def test_a_ciphertext_names_no_key() -> None:
    # Regression: every row carried a fingerprint of its key (a guess checker for passphrases).
    cipher = TextCipher([NEW, OLD])
    sealed = cipher.encrypt("four", ROW)
    assert len(base64.b64decode(sealed, validate=True)) == 12 + 4 + 16  # nonce, text, tag only
    for material in (NEW, OLD):
        fingerprint = hashlib.sha256(b"aiconv-key-id" + derive_key(material)).hexdigest()[:8]
        assert fingerprint not in sealed


def test_a_ciphertext_is_bound_to_its_row() -> None:
    cipher = TextCipher([NEW])
    sealed = cipher.encrypt("mine", message_context(7, "in:7:1"))
    for other in (message_context(8, "in:7:1"), message_context(7, "in:7:2")):
        with pytest.raises(DecryptionError):
            cipher.decrypt(sealed, other)


def old_format(material: str, text: str) -> str:
    """What the previous release stored: enc1:<key id>:<base64>, the key hashed with SHA-256."""
    key = hashlib.sha256(material.encode()).digest()
    key_id = hashlib.sha256(b"aiconv-key-id" + key).hexdigest()[:8]
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, text.encode(), key_id.encode())
    return f"enc1:{key_id}:{base64.b64encode(nonce + sealed).decode()}"


def test_rows_of_the_previous_format_stay_readable() -> None:
    phrase = "an-older-passphrase-key"
    stored = old_format(phrase, "from last year")
    cipher = TextCipher([NEW, phrase])
    assert read_message_text(cipher, stored, None, 7, "in:7:1") == "from last year"
    with pytest.raises(DecryptionError, match="not configured"):
        read_message_text(TextCipher([NEW]), stored, None, 7, "in:7:1")


@pytest.mark.parametrize(
    "text",
    [
        "enc1:deadbeef:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # looks like a ciphertext
        "enc1: how do I decode this?",
        "enc1:",
    ],
)
def test_plain_text_that_looks_encrypted_is_read_as_plain(text: str) -> None:
    # Regression: text starting with the prefix was decrypted (an error) whatever it was.
    cipher = TextCipher([NEW])
    assert read_message_text(cipher, text, False, 7, "k") == text
    assert read_message_text(None, text, False, 7, "k") == text


@pytest.mark.parametrize("text", ["enc1: how do I decode this?", "enc1:", "plain"])
def test_old_rows_that_do_not_parse_as_ciphertext_are_plain(text: str) -> None:
    assert read_message_text(TextCipher([NEW]), text, None, 7, "k") == text


@pytest.mark.parametrize("stored", ["", "not base64 !", "AAAA", "enc1:x", "A" * 64])
def test_a_malformed_sealed_value_is_a_decryption_error(stored: str) -> None:
    # Never another exception (which the web would turn into a 500).
    with pytest.raises(DecryptionError):
        read_message_text(TextCipher([NEW]), stored, True, 7, "k")
    with pytest.raises(DecryptionError):
        read_message_text(None, stored, True, 7, "k")


# --- job payloads ----------------------------------------------------------------------------


def test_job_payloads_are_sealed_with_a_key() -> None:
    codec = JobCodec(TextCipher([NEW]))
    payload = {"key": "gen:1", "turns": [["user", "my secret plan"]]}
    raw = codec.encode("p:generate", payload)
    assert raw.startswith(SEALED_PREFIX) and "secret" not in raw and "gen:1" not in raw
    assert codec.decode("p:generate", raw) == payload
    assert codec.decode("p:generate", raw.encode()) == payload


def test_a_sealed_job_is_bound_to_its_stream_and_key() -> None:
    raw = JobCodec(TextCipher([NEW])).encode("p:generate", {"a": 1})
    assert JobCodec(TextCipher([NEW])).decode("p:replies", raw) is None
    assert JobCodec(TextCipher([OLD])).decode("p:generate", raw) is None
    assert JobCodec().decode("p:generate", raw) is None


def test_plain_jobs_stay_readable_with_a_key() -> None:
    # The turn claim script (Lua) writes plain JSON; so did every producer before the key.
    codec = JobCodec(TextCipher([NEW]))
    assert codec.decode("s", json.dumps({"kind": "turn"})) == {"kind": "turn"}
    assert JobCodec().encode("s", {"a": 1}) == '{"a": 1}'


@pytest.mark.parametrize("raw", [None, "", "[1]", "{", "sealed1:", "sealed1:!!", "[" * 5000])
def test_unreadable_job_entries_decode_to_none(raw: str | None) -> None:
    assert JobCodec(TextCipher([NEW])).decode("s", raw) is None
