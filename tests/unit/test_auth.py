"""aiconv.web.auth: the admin API's HS256 tokens (PyJWT), what verifies and everything that must
not; and the OpenAI-compatible API's keys.

Tokens are minted relative to the real clock (PyJWT reads it), with margins of many seconds."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt as pyjwt
import pytest

from aiconv.web import auth

KEY = "unit-test-signing-key-of-decent-length"
OLD_KEY = "an-older-signing-key-being-rotated-out"
MISSING = object()  # a claim or header left out of a hand-made token
# Time claims in the parameters below are offsets from the moment the test runs (PyJWT reads the
# real clock); `at_now` turns them into times, and fills in the claims every token needs.
TIME_CLAIMS = ("exp", "nbf", "iat")
DEFAULT_CLAIMS: dict[str, Any] = {"aud": auth.ADMIN_AUDIENCE, "scope": "read", "iat": 0}


def at_now(claims: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    return {
        k: now + v if k in TIME_CLAIMS and type(v) in (int, float) else v
        for k, v in {**DEFAULT_CLAIMS, **claims}.items()
        if v is not MISSING
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: str = KEY) -> str:
    """A token assembled by hand, signed with HMAC-SHA256 whatever its header says; the header
    names the key (`kid`) unless told otherwise."""
    header = {k: v for k, v in {"kid": auth.key_id(key), **header}.items() if v is not MISSING}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_round_trip() -> None:
    now = int(time.time())
    token = auth.mint(KEY, "ops", 3600, now=now)
    claims = auth.decode(token, KEY)
    assert claims == {
        "sub": "ops",
        "aud": "aiconv-admin",
        "scope": "read",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT", "kid": auth.key_id(KEY)}
    assert KEY not in header["kid"] and len(header["kid"]) == 16


def test_a_hand_made_token_verifies_too() -> None:
    token = forge({"alg": "HS256"}, at_now({"sub": "x", "exp": 60}))
    assert auth.decode(token, KEY)["sub"] == "x"


def test_expired_beyond_the_leeway_is_refused() -> None:
    leeway = auth.DEFAULT_LEEWAY_SECONDS
    within = auth.mint(KEY, "ops", 60, now=time.time() - 60 - leeway + 10)  # expired 20 s ago
    assert auth.decode(within, KEY)["sub"] == "ops"
    beyond = auth.mint(KEY, "ops", 60, now=time.time() - 60 - leeway - 10)
    with pytest.raises(auth.InvalidToken, match="expired"):
        auth.decode(beyond, KEY)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "x"}, "exp is required"),
        ({"exp": 60}, "no subject"),
        ({"sub": "", "exp": 60}, "no subject"),
        ({"sub": 7, "exp": 60}, "no subject"),
        ({"sub": "x", "exp": "2000000000"}, "exp is not a number"),
        ({"sub": "x", "exp": True}, "exp is not a number"),
        ({"sub": "x", "exp": None}, "exp is not a number"),
        ({"sub": "x", "exp": 60, "nbf": 3600}, "not yet valid"),
        ({"sub": "x", "exp": 9999, "iat": 3600}, "issued in the future"),
        ({"sub": "x", "exp": 60, "iat": -39}, None),
        ({"sub": "x", "exp": 60, "iat": 20}, None),  # within the leeway
        ({"sub": "x", "exp": 10, "iat": 20}, "expires before"),
        ({"sub": "x", "exp": 60, "iat": "now"}, "iat is not a number"),
        ({"sub": "x", "exp": 60, "nbf": "soon"}, "nbf is not a number"),
        ({"sub": "x", "exp": 60, "iat": MISSING}, "iat is required"),
        ({"sub": "x", "exp": 86400 + 100, "iat": 0}, "lives longer"),
        ({"sub": "x", "exp": 86400 - 100, "iat": 0}, None),
        ({"sub": "x", "exp": 60, "aud": MISSING}, "aud is required"),
        ({"sub": "x", "exp": 60, "aud": "someone-else"}, "not for the admin API"),
        ({"sub": "x", "exp": 60, "aud": ["aiconv-admin"]}, "not for the admin API"),
        ({"sub": "x", "exp": 60, "scope": MISSING}, "scope is required"),
        ({"sub": "x", "exp": 60, "scope": ["read"]}, "scope is not a string"),
    ],
)
def test_time_claims_are_checked(claims: dict[str, Any], reason: str | None) -> None:
    claims = at_now(claims)
    token = forge({"alg": "HS256", "typ": "JWT"}, claims)
    if reason is None:
        assert auth.decode(token, KEY) == claims
        return
    with pytest.raises(auth.InvalidToken, match=reason):
        auth.decode(token, KEY)


def test_a_tampered_payload_or_signature_is_refused() -> None:
    header, payload, signature = auth.mint(KEY, "ops", 3600).split(".")
    admin = b64(json.dumps(at_now({"sub": "root", "exp": 3600})).encode())
    for token in (
        f"{header}.{admin}.{signature}",
        f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
        f"{header}.{payload}.{signature[:-1]}",
        f"{header}.{payload}.",
    ):
        with pytest.raises(auth.InvalidToken):
            auth.decode(token, KEY)


def test_a_non_canonical_signature_encoding_is_refused() -> None:  # PyJWT >= 2.15
    header, payload, signature = auth.mint(KEY, "ops", 3600).split(".")
    # 32 bytes are 43 base64 characters: the last one carries 2 unused bits. Flipping them
    # decodes to the same bytes, but only the canonical text is accepted.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    variant = signature[:-1] + alphabet[last ^ 1]
    assert base64.urlsafe_b64decode(variant + "=") == base64.urlsafe_b64decode(signature + "=")
    with pytest.raises(auth.InvalidToken):
        auth.decode(f"{header}.{payload}.{variant}", KEY)


def test_another_key_is_refused() -> None:
    token = auth.mint("another-key-of-32-or-more-characters", "ops", 3600)
    with pytest.raises(auth.InvalidToken, match="unknown key id"):
        auth.decode(token, KEY)
    # claiming the right key id does not help: the signature is checked with the right key
    relabelled = forge(
        {"alg": "HS256", "kid": auth.key_id(KEY)}, at_now({"sub": "x", "exp": 60}), OLD_KEY
    )
    with pytest.raises(auth.InvalidToken, match="signature"):
        auth.decode(relabelled, KEY)


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS256", "ES256", "hs256", "", None, 256])
def test_another_algorithm_is_refused_even_when_correctly_signed(alg: object) -> None:
    token = forge({"alg": alg, "typ": "JWT"}, at_now({"sub": "x", "exp": 60}))
    with pytest.raises(auth.InvalidToken, match="algorithm"):
        auth.decode(token, KEY)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_the_none_algorithm_is_refused(alg: str) -> None:
    claims = b64(json.dumps(at_now({"sub": "x", "exp": 60})).encode())
    header = b64(json.dumps({"alg": alg}).encode())
    for token in (f"{header}.{claims}.", f"{header}.{claims}"):
        with pytest.raises(auth.InvalidToken):
            auth.decode(token, KEY)


def test_a_missing_alg_and_critical_headers_are_refused() -> None:
    with pytest.raises(auth.InvalidToken, match="algorithm"):
        auth.decode(forge({"typ": "JWT"}, at_now({"sub": "x", "exp": 60})), KEY)
    for header in ({"alg": "HS256", "crit": ["b64"]}, {"alg": "HS256", "crit": ["exp"]}):
        with pytest.raises(auth.InvalidToken, match="critical"):
            auth.decode(forge(header, at_now({"sub": "x", "exp": 60})), KEY)


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
        _signed_raw(b'{"alg":"HS256"}', b'{"sub": "x", "exp": 1, "exp": 99999999999}'),
        _signed_raw(b'{"alg":"HS256"}', b'{"exp": NaN}'),
        _signed_raw(b'{"alg":"HS256"}', b'{"exp": Infinity}'),
        _signed_raw(b'{"alg":"HS256", "alg":"none"}', b'{"exp": 99999999999}'),
        _signed_raw(b'{"alg":"HS256"}', b"[" * 2900),
    ],
)
def test_garbage_is_refused_with_invalid_token(token: str) -> None:
    with pytest.raises(auth.InvalidToken):
        auth.decode(token, KEY)


def test_an_empty_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        auth.mint("", "ops", 60)
    with pytest.raises(ValueError):
        auth.decode(auth.mint(KEY, "ops", 60), "")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1H", 3600), (" 1d ", 86400)],
)
def test_ttl_parsing(text: str, seconds: int) -> None:
    assert auth.parse_ttl(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "h", "1w", "-1h", "0", "0h", "1.5h", "1 h", "25h", "2d", "367d", "٣h"]
)
def test_bad_ttls_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        auth.parse_ttl(text)


def test_the_claims_and_header_are_what_pyjwt_reads() -> None:
    token = auth.mint(KEY, "ops", 60)
    assert pyjwt.get_unverified_header(token)["kid"] == auth.key_id(KEY)
    claims = pyjwt.decode(token, KEY, algorithms=["HS256"], audience="aiconv-admin")
    assert claims["sub"] == "ops"


def test_the_key_id_picks_the_key_and_rotation_keeps_old_tokens_until_the_key_goes() -> None:
    old = auth.mint(OLD_KEY, "ops", 60)
    new = auth.mint(f"{KEY},{OLD_KEY}", "ops", 60)  # signed with the first key
    assert pyjwt.get_unverified_header(new)["kid"] == auth.key_id(KEY)
    for token in (old, new):
        assert auth.decode(token, f"{KEY},{OLD_KEY}")["sub"] == "ops"
    assert auth.decode(new, KEY)["sub"] == "ops"
    with pytest.raises(auth.InvalidToken, match="unknown key id"):
        auth.decode(old, KEY)  # the old key removed: its tokens are gone with it


def test_a_token_must_name_a_known_key() -> None:
    claims = at_now({"sub": "x", "exp": 60})
    with pytest.raises(auth.InvalidToken, match="no key id"):
        auth.decode(forge({"alg": "HS256", "kid": MISSING}, claims), KEY)
    with pytest.raises(auth.InvalidToken, match="no key id"):
        auth.decode(forge({"alg": "HS256", "kid": 7}, claims), KEY)
    with pytest.raises(auth.InvalidToken, match="unknown key id"):
        auth.decode(forge({"alg": "HS256", "kid": auth.key_id(OLD_KEY)}, claims), KEY)
    # the right kid with another key's signature is still a bad signature
    with pytest.raises(auth.InvalidToken, match="signature"):
        auth.decode(forge({"alg": "HS256", "kid": auth.key_id(KEY)}, claims, OLD_KEY), KEY)


@pytest.mark.parametrize(
    ("scopes", "granted"),
    [
        (("read",), {"read"}),
        (("write",), {"read", "write"}),
        (("read", "write"), {"read", "write"}),
    ],
)
def test_scopes(scopes: tuple[str, ...], granted: set[str]) -> None:
    assert auth.scopes_of(auth.decode(auth.mint(KEY, "ops", 60, scopes=scopes), KEY)) == granted


@pytest.mark.parametrize("scopes", [(), ("admin",), ("read", "root")])
def test_unknown_scopes_are_refused(scopes: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        auth.mint(KEY, "ops", 60, scopes=scopes)


@pytest.mark.parametrize(
    ("header", "credential"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_credentials(header: str | None, credential: str | None) -> None:
    assert auth.bearer(header) == credential


def test_api_keys_accept_only_a_configured_key() -> None:
    keys = auth.ApiKeys(["sk-one", "sk-two"])
    assert keys and keys.accepts("sk-one") and keys.accepts("sk-two")
    for wrong in ("sk-on", "sk-one ", "sk-onex", "", None):
        assert not keys.accepts(wrong)
    assert not auth.ApiKeys([]) and not auth.ApiKeys([]).accepts("")
