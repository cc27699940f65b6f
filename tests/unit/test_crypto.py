"""Encryption at rest: AES-GCM round trips, rotation, and tampering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiconv.store.crypto import DecryptionError, TextCipher

OLD = "old-key-0123456789abcdef0123456789"
NEW = "new-key-fedcba9876543210fedcba9876"


@given(st.text())
def test_round_trip(text: str) -> None:
    cipher = TextCipher([NEW])
    sealed = cipher.encrypt(text)
    assert sealed.startswith("enc1:") and sealed != text
    assert cipher.decrypt(sealed) == text


def test_rotation_reads_old_text_and_writes_with_the_new_key() -> None:
    before = TextCipher([OLD]).encrypt("hello")
    rotated = TextCipher([NEW, OLD])
    assert rotated.decrypt(before) == "hello"
    after = rotated.encrypt("hello")
    assert TextCipher([NEW]).decrypt(after) == "hello"
    with pytest.raises(DecryptionError, match="not configured"):
        TextCipher([NEW]).decrypt(before)


def test_plain_text_from_before_encryption_stays_readable() -> None:
    assert TextCipher([NEW]).decrypt("written in the clear") == "written in the clear"


def test_tampering_is_detected() -> None:
    sealed = TextCipher([NEW]).encrypt("pay 10")
    forged = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(DecryptionError):
        TextCipher([NEW]).decrypt(forged)
