"""Free TCP ports on loopback, for servers a test starts (the caller binds the port next)."""

from __future__ import annotations

from aiconv.testing.botapi import free_port

__all__ = ["free_port"]
