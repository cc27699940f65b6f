"""Registering the webhook with Telegram, in the background, after the ports already answer.

Why in the background: a Telegram or egress outage at start-up must not keep /health from
answering, or the startup probe kills the pod and the outage becomes a crash loop. Until the
first setWebhook succeeds, /ready on the ops port reports `webhook` failing: a rolling update waits
for pods that reached Telegram (the old ones keep serving), and an operator sees why. The attempts
go on (with backoff, as an auxiliary loop) until one succeeds.
"""

from __future__ import annotations

import structlog

from aiconv.config import Settings
from aiconv.telegram.client import BotClient
from aiconv.worker.poller import ALLOWED_UPDATES

log = structlog.get_logger(__name__)


class WebhookNotRegistered(Exception):
    """setWebhook has not succeeded yet (the readiness check's failure)."""


class WebhookRegistration:
    def __init__(self, settings: Settings, bot: BotClient) -> None:
        assert settings.telegram_webhook_url and settings.telegram_webhook_secret
        self.url = settings.telegram_webhook_url
        self.secret = settings.telegram_webhook_secret
        self.bot = bot
        self.registered = False

    async def register(self) -> None:
        """One attempt; raises TelegramError when it fails (the caller retries)."""
        await self.bot.set_webhook(self.url, self.secret, ALLOWED_UPDATES)
        self.registered = True
        log.info("webhook registered", url=self.url)

    async def check(self) -> None:
        """Readiness: fails until the webhook is registered."""
        if not self.registered:
            raise WebhookNotRegistered
