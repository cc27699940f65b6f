"""`aiconv all`: web, worker and ml in one process, sharing one set of clients (resources.py).

For development and the smallest installs; the web app is served in process (one granian
server on the event loop) instead of granian's worker processes.
"""

from __future__ import annotations

import argparse

from aiconv.config import Settings
from aiconv.modes.process import IN_PROCESS_MODES, run_until_signalled


def main(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_bot_token()
    return run_until_signalled(settings, IN_PROCESS_MODES)
