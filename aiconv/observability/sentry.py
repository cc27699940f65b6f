"""Sentry error reporting, when SENTRY_DSN is set and the `sentry` extra is installed."""

from __future__ import annotations

import structlog

from aiconv.config import Settings

log = structlog.get_logger(__name__)


def init_sentry(settings: Settings) -> bool:
    if not settings.sentry_dsn:
        return False
    try:
        import sentry_sdk
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is missing: pip install 'aiconv[sentry]'")
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or settings.environment,
        send_default_pii=False,  # message text and user names stay out of error reports
        traces_sample_rate=0.0,
    )
    return True
