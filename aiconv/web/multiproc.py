"""Metrics shared between `aiconv web`'s processes through files (prometheus_client multiprocess).

The granian workers (which count requests) and the main process (which serves the ops port and
registers the webhook) are separate processes; their metrics meet in files under
PROMETHEUS_MULTIPROC_DIR, merged by the ops port. prometheus_client picks its storage when it is
first imported, so this runs before anything imports it: this module imports nothing of aiconv's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def share_metrics_between_workers() -> None:
    if VARIABLE not in os.environ:
        made = tempfile.mkdtemp(prefix="aiconv-metrics-")
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        os.environ[VARIABLE] = made
    folder = Path(os.environ[VARIABLE])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # left by an earlier run: its counts are not ours
        stale.unlink()
