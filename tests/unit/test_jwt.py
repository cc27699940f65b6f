"""HS256 tokens of the admin API: what verifies, and everything that must not."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from aiconv.web import jwt

KEY = "unit-test-signing-key-of-decent-length"
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: str = KEY) -> str:
    """A token assembled by hand, signed with HMAC-SHA256 whatever its header says."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_round_trip() -> None:
    token = jwt.mint(KEY, "ops", 3600, now=NOW)
    claims = jwt.decode(token, KEY, now=NOW + 10)
    assert claims == {"sub": "ops", "iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 3600}
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}


def test_a_hand_made_token_verifies_too() -> None:
    token = forge({"alg": "HS256"}, {"sub": "x", "exp": NOW + 60})
    assert jwt.decode(token, KEY, now=NOW)["sub"] == "x"


def test_expired_beyond_the_leeway_is_refused() -> None:
    token = jwt.mint(KEY, "ops", 60, now=NOW)
    assert jwt.decode(token, KEY, now=NOW + 60 + jwt.DEFAULT_LEEWAY_SECONDS)  # within leeway
    with pytest.raises(jwt.InvalidToken, match="expired"):
        jwt.decode(token, KEY, now=NOW + 61 + jwt.DEFAULT_LEEWAY_SECONDS)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "x"}, "exp is required"),
        ({"sub": "x", "exp": "2000000000"}, "exp is not a number"),
        ({"sub": "x", "exp": True}, "exp is not a number"),
        ({"sub": "x", "exp": None}, "exp is not a number"),
        ({"sub": "x", "exp": NOW + 60, "nbf": NOW + 3600}, "not yet valid"),
        ({"sub": "x", "exp": NOW + 9999, "iat": NOW + 3600}, "issued in the future"),
        ({"sub": "x", "exp": NOW + 60, "iat": NOW + 61 - 100}, None),
        ({"sub": "x", "exp": NOW + 10, "iat": NOW + 20}, "expires before"),
        ({"sub": "x", "exp": NOW + 60, "nbf": "soon"}, "nbf is not a number"),
    ],
)
def test_time_claims_are_checked(claims: dict[str, Any], reason: str | None) -> None:
    token = forge({"alg": "HS256", "typ": "JWT"}, claims)
    if reason is None:
        assert jwt.decode(token, KEY, now=NOW) == claims
        return
    with pytest.raises(jwt.InvalidToken, match=reason):
        jwt.decode(token, KEY, now=NOW)


def test_a_tampered_payload_or_signature_is_refused() -> None:
    header, payload, signature = jwt.mint(KEY, "ops", 3600, now=NOW).split(".")
    admin = b64(json.dumps({"sub": "root", "exp": NOW + 3600}).encode())
    for token in (
        f"{header}.{admin}.{signature}",
        f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
        f"{header}.{payload}.{signature[:-1]}",
        f"{header}.{payload}.",
    ):
        with pytest.raises(jwt.InvalidToken):
            jwt.decode(token, KEY, now=NOW)


def test_a_non_canonical_signature_encoding_is_refused() -> None:
    header, payload, signature = jwt.mint(KEY, "ops", 3600, now=NOW).split(".")
    # 32 bytes are 43 base64 characters: the last one carries 2 unused bits. Flipping them
    # decodes to the same bytes, but only the canonical text is accepted.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    variant = signature[:-1] + alphabet[last ^ 1]
    assert base64.urlsafe_b64decode(variant + "=") == base64.urlsafe_b64decode(signature + "=")
    with pytest.raises(jwt.InvalidToken, match="signature"):
        jwt.decode(f"{header}.{payload}.{variant}", KEY, now=NOW)


def test_another_key_is_refused() -> None:
    token = jwt.mint("another-key", "ops", 3600, now=NOW)
    with pytest.raises(jwt.InvalidToken, match="signature"):
        jwt.decode(token, KEY, now=NOW)


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS256", "ES256", "hs256", "", None, 256])
def test_another_algorithm_is_refused_even_when_correctly_signed(alg: object) -> None:
    token = forge({"alg": alg, "typ": "JWT"}, {"sub": "x", "exp": NOW + 60})
    with pytest.raises(jwt.InvalidToken, match="algorithm"):
        jwt.decode(token, KEY, now=NOW)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_the_none_algorithm_is_refused(alg: str) -> None:
    claims = b64(json.dumps({"sub": "x", "exp": NOW + 60}).encode())
    header = b64(json.dumps({"alg": alg}).encode())
    for token in (f"{header}.{claims}.", f"{header}.{claims}"):
        with pytest.raises(jwt.InvalidToken):
            jwt.decode(token, KEY, now=NOW)


def test_a_missing_alg_and_critical_headers_are_refused() -> None:
    with pytest.raises(jwt.InvalidToken, match="algorithm"):
        jwt.decode(forge({"typ": "JWT"}, {"exp": NOW + 60}), KEY, now=NOW)
    with pytest.raises(jwt.InvalidToken, match="critical"):
        jwt.decode(forge({"alg": "HS256", "crit": ["b64"]}, {"exp": NOW + 60}), KEY, now=NOW)


def _signed_raw(header: bytes, payload: bytes) -> str:
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = hmac.new(KEY.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "...",
        "a..c",
        "!!!.???.***",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        "eyJhbGciOiJIUzI1NiJ9.e30.x.y",
        "é.é.é",
        "A" * 5000,
        "x" * 4097 + ".a.b",
        # a header that is not JSON, JSON but not an object, not UTF-8
        f"{b64(b'nope')}.{b64(b'{}')}.sig",
        f"{b64(b'[1]')}.{b64(b'{}')}.sig",
        f"{b64(bytes([0xFF, 0xFE]))}.{b64(b'{}')}.sig",
        # a base64 length no encoder produces
        "eyJhbGciOiJIUzI1NiJ9A.e30.sig",
        # correctly signed, but the claims are not a JSON object / not JSON / duplicate / NaN
        _signed_raw(b'{"alg":"HS256"}', b"[1, 2]"),
        _signed_raw(b'{"alg":"HS256"}', b"not json"),
        _signed_raw(b'{"alg":"HS256"}', b'{"exp": 1, "exp": 99999999999}'),
        _signed_raw(b'{"alg":"HS256"}', b'{"exp": NaN}'),
        _signed_raw(b'{"alg":"HS256"}', b'{"exp": Infinity}'),
        _signed_raw(b'{"alg":"HS256", "alg":"none"}', b'{"exp": 99999999999}'),
        _signed_raw(b'{"alg":"HS256"}', b"[" * 2900),
    ],
)
def test_garbage_is_refused_with_invalid_token(token: str) -> None:
    with pytest.raises(jwt.InvalidToken):
        jwt.decode(token, KEY, now=NOW)


def test_an_empty_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        jwt.mint("", "ops", 60)
    with pytest.raises(ValueError):
        jwt.decode(jwt.mint(KEY, "ops", 60), "")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1H", 3600), (" 7d ", 604800)],
)
def test_ttl_parsing(text: str, seconds: int) -> None:
    assert jwt.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1w", "-1h", "0", "0h", "1.5h", "1 h", "367d", "٣h"])
def test_bad_ttls_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        jwt.parse_ttl(text)
