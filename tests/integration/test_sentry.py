"""Sentry reports carry no secret: the bot token of httpx breadcrumbs, nor any configured secret.

A capturing transport keeps every envelope the SDK would send; the whole serialised envelope is
searched, so a secret anywhere in it (breadcrumbs, messages, exception values, extra data) fails.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import sentry_sdk
import sentry_sdk.logger  # a submodule: imported explicitly, not left to sentry_sdk.init
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from aiconv.config import Settings
from aiconv.observability.sentry import Scrubber, init_sentry
from aiconv.telegram.client import BotClient
from aiconv.testing.botapi import BotApiDouble

TOKEN_SECRET = "AAHk3lvS9x-QzT7pW2mYbN4cR8dLfGj1eUo"
TOKEN = f"7123456789:{TOKEN_SECRET}"
WEBHOOK_SECRET = "q7Yc2LkP9sRt4VwXz8BnM3hJ6fGd1eA5uTyK0iOp"
JWT_KEY = "Zr8tQw3Ey6Ui9Op2As5Df8Gh1Jk4Lz7Xc0Vb3Nm6Qw9Er2Ty"
API_KEY = "sk-aiconv-Lk29dQp7Rz4Vx1Mn8Bc5Hy3Tg6Jw0Fs"
DB_PASSWORD = "pg-Wd83kLq2Zx7Rv5Nt"
SECRETS = (TOKEN, TOKEN_SECRET, WEBHOOK_SECRET, JWT_KEY, API_KEY, DB_PASSWORD)


class CapturingTransport(Transport):
    """Keeps the envelopes instead of sending them."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def sent(self) -> str:
        return b"".join(e.serialize() for e in self.envelopes).decode("utf-8", "replace")


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env(
        {
            "SENTRY_DSN": "https://public@sentry.invalid/1",
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "JWT_SECRET_KEY": JWT_KEY,
            "OPENAI_API_KEYS": API_KEY,
            "DATABASE_URL": f"postgresql://aiconv:{DB_PASSWORD}@db:5432/aiconv",
        }
    )


@pytest.fixture
def transport(settings: Settings) -> Iterator[CapturingTransport]:
    capture = CapturingTransport()
    assert init_sentry(settings, transport=capture)
    yield capture
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
async def bot() -> AsyncIterator[BotClient]:
    async with BotApiDouble(token=TOKEN) as double, httpx.AsyncClient(timeout=10.0) as http:
        yield BotClient(http, double.url, TOKEN)


async def test_the_bot_token_of_httpx_breadcrumbs_never_reaches_sentry(
    transport: CapturingTransport, bot: BotClient
) -> None:
    with sentry_sdk.isolation_scope():
        await bot.get_me()  # httpx records a breadcrumb with the URL: …/bot<token>/getMe
        try:
            raise RuntimeError("boom")
        except RuntimeError as error:
            sentry_sdk.capture_exception(error)
    sentry_sdk.flush()
    sent = transport.sent()
    assert "/bot[Filtered]/getMe" in sent  # the breadcrumb was sent, scrubbed
    assert TOKEN_SECRET not in sent


async def test_no_configured_secret_reaches_sentry_from_messages_or_exceptions(
    transport: CapturingTransport,
) -> None:
    url = f"https://api.telegram.org/bot{TOKEN}/sendMessage"
    with sentry_sdk.isolation_scope() as scope:
        scope.set_extra("request", {"url": url, "headers": {"x-secret": WEBHOOK_SECRET}})
        sentry_sdk.add_breadcrumb(category="custom", message=f"keys {API_KEY} {JWT_KEY}")
        try:
            raise ValueError(f"cannot reach postgresql://aiconv:{DB_PASSWORD}@db/aiconv at {url}")
        except ValueError as error:
            sentry_sdk.capture_exception(error)
        sentry_sdk.capture_message(f"token {TOKEN_SECRET} and secret {WEBHOOK_SECRET}")
    sentry_sdk.flush()
    sent = transport.sent()
    assert "cannot reach postgresql://aiconv:[Filtered]@db/aiconv" in sent
    assert "token [Filtered] and secret [Filtered]" in sent
    for secret in SECRETS:
        assert secret not in sent


def test_local_variables_are_not_sent(transport: CapturingTransport) -> None:
    # Built at run time: the source context Sentry sends must not be what finds it.
    message_text = "".join(reversed("egassem etavirp s'resu a"))
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        sentry_sdk.capture_exception(error)
    sentry_sdk.flush()
    assert "boom" in transport.sent()
    assert message_text not in transport.sent()


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("https://api.telegram.org/bot123:abc-DEF/getMe", "https://api.telegram.org/bot[Filtered]/getMe"),
        ("POST /bot123%3Aabc/sendMessage", "POST /bot[Filtered]/sendMessage"),
        ("url ends at /bot123:abc", "url ends at /bot[Filtered]"),
        ("/botanything-here/getUpdates", "/bot[Filtered]/getUpdates"),
        ("redis://:hunter2@cache:6379/0", "redis://:[Filtered]@cache:6379/0"),
        ("a /bottle of water", "a /bottle of water"),
    ],
)  # fmt: skip
def test_scrubber_patterns(text: str, scrubbed: str) -> None:
    assert Scrubber([]).text(text) == scrubbed


def test_scrubber_replaces_secrets_in_nested_values_and_url_encoded_forms() -> None:
    scrub = Scrubber(["p@ss/word:long"])
    event = {"a": [{"b": ("x p@ss/word:long y", "p%40ss%2Fword%3Along")}], "n": 3}
    assert scrub.event(event) == {"a": [{"b": ["x [Filtered] y", "[Filtered]"]}], "n": 3}


def test_forwarded_log_records_are_scrubbed_too(settings: Settings) -> None:
    # Issue 13, item 8: with Sentry's log forwarding on, log records skipped every scrubber.
    capture = CapturingTransport()
    assert init_sentry(settings, transport=capture, enable_logs=True)
    try:
        url = f"https://api.telegram.org/bot{TOKEN}/getMe"
        sentry_sdk.logger.warning(f"cannot reach {url} with {WEBHOOK_SECRET}")
        logging.getLogger("aiconv.test").error("db at postgresql://aiconv:%s@db/x", DB_PASSWORD)
        sentry_sdk.flush()
        sent = capture.sent()
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
    assert "/bot[Filtered]/getMe" in sent  # the record was sent, scrubbed
    for secret in SECRETS:
        assert secret not in sent
