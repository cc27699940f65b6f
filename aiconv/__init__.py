"""aiconv: a self-hosted AI conversation service for Telegram."""

__version__ = "0.1.0"
