"""HS256 JSON Web Tokens for the admin API, on the standard library alone.

Only what the admin API needs, and strictly: the header must say ``alg: HS256`` (``none`` and
every other algorithm are refused before anything else is looked at), the signature is checked
in constant time before the claims are parsed, ``exp`` is required, and ``nbf``/``iat`` must not
lie in the future. A small leeway absorbs clock skew between the minting and the serving host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

ALGORITHM = "HS256"
DEFAULT_LEEWAY_SECONDS = 30
MAX_TOKEN_CHARS = 4096
MAX_TTL_SECONDS = 366 * 86400

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_TTL = re.compile(r"([0-9]{1,9})([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidToken(Exception):
    """The token is malformed, wrongly signed, expired or not yet valid; the text says which."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes:
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidToken("malformed token")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise InvalidToken("malformed token")
    return result


def _no_constants(name: str) -> Any:
    raise InvalidToken("malformed token")  # NaN, Infinity: not JSON numbers


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(
            _b64decode(segment).decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise InvalidToken("malformed token") from error
    if not isinstance(value, dict):
        raise InvalidToken("malformed token")
    return value


def _key_bytes(key: str | bytes) -> bytes:
    data = key.encode("utf-8") if isinstance(key, str) else key
    if not data:
        raise ValueError("the signing key is empty")
    return data


def _sign(signing_input: bytes, key: bytes) -> str:
    return _b64encode(hmac.new(key, signing_input, hashlib.sha256).digest())


def encode(claims: Mapping[str, Any], key: str | bytes) -> str:
    """Sign the claims as an HS256 JWT (compact serialisation)."""
    header = _b64encode(
        json.dumps({"alg": ALGORITHM, "typ": "JWT"}, separators=(",", ":")).encode()
    )
    payload = _b64encode(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{_sign(signing_input.encode('ascii'), _key_bytes(key))}"


def mint(key: str | bytes, subject: str, ttl_seconds: int, now: float | None = None) -> str:
    """A token for ``subject`` valid from now for ``ttl_seconds``."""
    if not subject:
        raise ValueError("the subject is empty")
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be between 1 second and {MAX_TTL_SECONDS // 86400} days")
    issued = int(time.time() if now is None else now)
    return encode({"sub": subject, "iat": issued, "nbf": issued, "exp": issued + ttl_seconds}, key)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    # bool is an int in Python but not a NumericDate
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"claim {name} is not a number")
    return float(value)


def decode(
    token: str,
    key: str | bytes,
    *,
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY_SECONDS,
) -> dict[str, Any]:
    """Verify an HS256 token and return its claims; raises InvalidToken otherwise."""
    secret = _key_bytes(key)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidToken("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token")
    header_segment, payload_segment, signature_segment = parts
    header = _json_object(header_segment)
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("unsupported algorithm")
    if "crit" in header:
        raise InvalidToken("unsupported critical header")
    if not _SEGMENT.fullmatch(payload_segment) or not _SEGMENT.fullmatch(signature_segment):
        raise InvalidToken("malformed token")
    # The expected signature, base64url-encoded, against the given text: constant time, and a
    # non-canonical encoding of the right bytes is refused too.
    expected = _sign(f"{header_segment}.{payload_segment}".encode("ascii"), secret)
    if not hmac.compare_digest(expected.encode("ascii"), signature_segment.encode("ascii")):
        raise InvalidToken("bad signature")
    claims = _json_object(payload_segment)

    current = time.time() if now is None else now
    expires = _numeric_date(claims, "exp")
    if expires is None:
        raise InvalidToken("claim exp is required")
    if current > expires + leeway:
        raise InvalidToken("token expired")
    not_before = _numeric_date(claims, "nbf")
    if not_before is not None and current + leeway < not_before:
        raise InvalidToken("token not yet valid")
    issued = _numeric_date(claims, "iat")
    if issued is not None and current + leeway < issued:
        raise InvalidToken("token issued in the future")
    if issued is not None and issued > expires:
        raise InvalidToken("token expires before it was issued")
    return claims


def parse_ttl(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` → seconds; ValueError if malformed or too long."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 7d)")
    seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)]
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be between 1 second and {MAX_TTL_SECONDS // 86400} days")
    return seconds
