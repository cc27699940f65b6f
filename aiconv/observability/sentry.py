"""Sentry error reporting, when SENTRY_DSN is set and the `sentry` extra is installed.

Nothing secret leaves the process in a report. The bot token is part of every Bot API URL, and
httpx breadcrumbs, exception messages and stack frames all carry URLs, so every event and every
breadcrumb is scrubbed before it is kept: the path segment after ``/bot`` (``/bot<token>/getMe``
becomes ``/bot[Filtered]/getMe``), the password of any ``scheme://user:password@`` URL, and the
value of every configured secret wherever it appears. Local variables are not sent at all: they
hold message text and secrets under names no scrubber can guess.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote

import structlog

from aiconv.config import Settings

log = structlog.get_logger(__name__)

FILTERED = "[Filtered]"
# A secret shorter than this is not searched for: it would blank every occurrence of a common
# substring. Production refuses secrets that short anyway (see Settings.check_secrets).
MIN_SCRUBBED_CHARS = 6
_MAX_DEPTH = 64

# "/bot" followed by a token: a segment that starts with the bot's numeric id, or any segment
# that another path segment follows (`/bot<token>/getMe`).
_BOT_PATH = re.compile(r"/bot(?:[0-9][^/\s'\"<>]*|[^/\s'\"<>]+(?=/))")
# The password of a URL with credentials: postgresql://user:password@host, redis://:pw@host.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")


class Scrubber:
    """Replace the bot token, URL passwords and the given secret values in any event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            for form in (secret, quote(secret, safe=""), unquote(secret)):
                if len(form) >= MIN_SCRUBBED_CHARS:
                    variants.add(form)
        # Longest first, so a secret containing another is replaced whole.
        ordered = sorted(variants, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, value: str) -> str:
        if self._secrets is not None:
            value = self._secrets.sub(FILTERED, value)
        value = _BOT_PATH.sub("/bot" + FILTERED, value)
        return _URL_PASSWORD.sub(r"\g<head>" + FILTERED + "@", value)

    def value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if depth > _MAX_DEPTH:
            return value
        if isinstance(value, dict):
            return {key: self.value(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item, depth + 1) for item in value]
        return value

    def event(self, event: dict[str, Any], hint: Any = None) -> dict[str, Any]:
        return dict(self.value(event))

    def breadcrumb(self, crumb: dict[str, Any], hint: Any = None) -> dict[str, Any]:
        return dict(self.value(crumb))

    def log(self, record: dict[str, Any], hint: Any = None) -> dict[str, Any]:
        """A log record forwarded to Sentry (`enable_logs`): its body and attributes."""
        return dict(self.value(record))


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold, and the parts of them that travel on their own
    (the settings declared secret in aiconv/config.py, so a new one is scrubbed too)."""
    return settings.secret_values()


def sentry_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of sentry_sdk.init for these settings."""
    scrubber = Scrubber(secrets_of(settings))
    before: Callable[[dict[str, Any], Any], dict[str, Any]] = scrubber.event
    options = {
        "dsn": settings.sentry_dsn,
        "environment": settings.sentry_environment or settings.environment,
        "send_default_pii": False,  # message text and user names stay out of error reports
        "include_local_variables": False,  # so do the locals that hold them, and secrets
        "traces_sample_rate": 0.0,
        "before_send": before,
        "before_send_transaction": before,
        "before_breadcrumb": scrubber.breadcrumb,
    }
    if _supports("before_send_log"):  # sentry-sdk >= 2.35: log records, when enable_logs is on
        options["before_send_log"] = scrubber.log
    return options


def _supports(option: str) -> bool:
    try:
        from sentry_sdk.consts import ClientConstructor
    except ImportError:
        return False
    return option in inspect.signature(ClientConstructor.__init__).parameters


def init_sentry(settings: Settings, **overrides: Any) -> bool:
    """Start Sentry when SENTRY_DSN is set; `overrides` replace options (tests: a transport)."""
    if not settings.sentry_dsn:
        return False
    try:
        import sentry_sdk
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is missing: pip install 'aiconv[sentry]'")
        return False
    sentry_sdk.init(**{**sentry_options(settings), **overrides})
    return True
