"""Who may call the web app's APIs: one module for both kinds of credential.

- The admin API takes bearer JWTs signed with JWT_SECRET_KEY, verified by PyJWT: the algorithm is
  pinned to HS256 (``none`` and every other algorithm are refused, whatever the header says);
  ``exp``, ``iat``, ``sub``, ``aud`` (ADMIN_AUDIENCE) and ``scope`` are required; the time claims
  are checked with a small leeway for clock skew between the minting and the serving host. A
  token lives at most MAX_TTL_SECONDS. ``scope`` is ``read`` (GET) or ``read write`` (everything).
  JWT_SECRET_KEY may list keys, ``new,old``: tokens are signed with the first, and each names its
  key in the ``kid`` header (a digest of the key, see `key_id`), so a rotation keeps the old key's
  tokens valid until the old key is removed.
- The OpenAI-compatible API takes static bearer keys (OPENAI_API_KEYS), compared in constant time
  with every configured key.

Before PyJWT sees a token, its shape is checked strictly, which PyJWT is lenient about: at most
MAX_TOKEN_CHARS ASCII characters in three segments; header and claims JSON objects without
duplicate names (``{"exp": 1, "exp": 9e9}``) or NaN/Infinity; no ``crit`` header (PyJWT accepts
``crit: ["b64"]``, which this API has no use for); time claims that are numbers, not strings or
booleans. What is verified, and how, is PyJWT's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Iterable
from typing import Any

import jwt as pyjwt
from jwt.exceptions import InvalidSubjectError
from jwt.utils import base64url_decode

ALGORITHM = "HS256"
ADMIN_AUDIENCE = "aiconv-admin"
DEFAULT_LEEWAY_SECONDS = 30
MAX_TOKEN_CHARS = 4096
MAX_TTL_SECONDS = 86400
REQUIRED_CLAIMS = ["exp", "iat", "sub", "aud", "scope"]
TIME_CLAIMS = ("exp", "nbf", "iat")
READ, WRITE = "read", "write"
SCOPES = (READ, WRITE)

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_TTL = re.compile(r"([0-9]{1,9})([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidToken(Exception):
    """The token is malformed, wrongly signed, expired or not yet valid; the text says which."""


def bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, or None."""
    scheme, _, credential = (authorization or "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


# --- admin API: JWTs ------------------------------------------------------------------------


def signing_keys(setting: str) -> list[str]:
    """The keys of JWT_SECRET_KEY (``new,old``), newest first."""
    keys = [key.strip() for key in setting.split(",") if key.strip()]
    if not keys:
        raise ValueError("the signing key is empty")
    return keys


def key_id(key: str) -> str:
    """The ``kid`` of a signing key: a digest that names the key without revealing it."""
    return hashlib.sha256(b"aiconv-admin-kid:" + key.encode()).hexdigest()[:16]


def mint(
    key: str,
    subject: str,
    ttl_seconds: int,
    scopes: Iterable[str] = (READ,),
    now: float | None = None,
) -> str:
    """A token for ``subject`` with these scopes, valid from now for ``ttl_seconds``, signed with
    the first key of ``key`` (JWT_SECRET_KEY)."""
    if not subject:
        raise ValueError("the subject is empty")
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be between 1 second and {MAX_TTL_SECONDS // 3600} hours")
    granted = sorted(set(scopes) | ({READ} if WRITE in scopes else set()))
    if not granted or any(scope not in SCOPES for scope in granted):
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    signing = signing_keys(key)[0]
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": subject,
        "aud": ADMIN_AUDIENCE,
        "scope": " ".join(granted),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
    }
    return pyjwt.encode(claims, signing, algorithm=ALGORITHM, headers={"kid": key_id(signing)})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate name")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _strict_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(
            base64url_decode(segment).decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError):  # binascii.Error, UnicodeDecodeError: ValueErrors
        raise InvalidToken("malformed token") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed token")
    return value


def _check_shape(token: object) -> dict[str, Any]:
    """Refuse what PyJWT would let through or choke on (see the module's docstring); the
    (unverified) header."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidToken("malformed token")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise InvalidToken("malformed token")
    header, claims = _strict_object(parts[0]), _strict_object(parts[1])
    if "crit" in header or "b64" in header:
        raise InvalidToken("unsupported critical header")
    for name in TIME_CLAIMS:
        value = claims.get(name)
        if name in claims and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidToken(f"claim {name} is not a number")
    return header


def decode(token: str, key: str, *, leeway: float = DEFAULT_LEEWAY_SECONDS) -> dict[str, Any]:
    """Verify an admin token against the keys of ``key`` (JWT_SECRET_KEY) and return its claims;
    raises InvalidToken otherwise."""
    keys = {key_id(k): k for k in signing_keys(key)}
    header = _check_shape(token)
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidToken("token has no key id")
    secret = keys.get(kid)
    if secret is None:
        raise InvalidToken("unknown key id")
    try:
        claims: dict[str, Any] = pyjwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=ADMIN_AUDIENCE,
            options={"require": REQUIRED_CLAIMS, "strict_aud": True},
            leeway=leeway,
        )
    except pyjwt.InvalidAlgorithmError:
        raise InvalidToken("unsupported algorithm") from None
    except pyjwt.InvalidSignatureError:
        raise InvalidToken("bad signature") from None
    except pyjwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except pyjwt.ImmatureSignatureError as error:
        future = "token issued in the future" if "(iat)" in str(error) else "token not yet valid"
        raise InvalidToken(future) from None
    except pyjwt.MissingRequiredClaimError as error:
        if error.claim == "sub":
            raise InvalidToken("token has no subject") from None
        raise InvalidToken(f"claim {error.claim} is required") from None
    except InvalidSubjectError:
        raise InvalidToken("token has no subject") from None
    except pyjwt.InvalidAudienceError:
        raise InvalidToken("token is not for the admin API") from None
    except pyjwt.PyJWTError:
        raise InvalidToken("malformed token") from None
    if not claims["sub"]:
        raise InvalidToken("token has no subject")
    if not isinstance(claims["scope"], str):
        raise InvalidToken("claim scope is not a string")
    if claims["iat"] > claims["exp"]:
        raise InvalidToken("token expires before it was issued")
    if claims["exp"] - claims["iat"] > MAX_TTL_SECONDS:
        raise InvalidToken("token lives longer than allowed")
    return claims


def scopes_of(claims: dict[str, Any]) -> set[str]:
    """The scopes a verified token grants (``scope`` is space-separated, as in OAuth 2)."""
    return set(str(claims.get("scope", "")).split())


def parse_ttl(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` → seconds; ValueError if malformed or too long."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 7d)")
    seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)]
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be between 1 second and {MAX_TTL_SECONDS // 3600} hours")
    return seconds


# --- OpenAI-compatible API: static keys -----------------------------------------------------


class ApiKeys:
    """The bearer keys of OPENAI_API_KEYS; no keys: the API is off."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [key.encode() for key in keys if key]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def accepts(self, credential: str | None) -> bool:
        """Whether `credential` is one of the keys; every key is compared, so the time taken
        does not tell which matched, or how much of one."""
        given = (credential or "").encode()
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(given, key)
        return valid and credential is not None
