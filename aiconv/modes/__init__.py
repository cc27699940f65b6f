"""The modes a process runs (`aiconv MODE`): wiring only, each in a module of its own, imported
only when it runs.

Invariant: resolving a mode imports that mode's module and what it needs, nothing else. A mode
pays in memory and start-up time for every module it imports: `aiconv web` and `aiconv worker`
never load llama.cpp (about 100 MB of native code and numpy), which only `ml`, `all` and `demo`
need. So this package imports no mode at import time, and a mode module imports the others'
parts lazily, where they run (see process.py); a test holds both to it in a fresh interpreter.

Each mode module has `main(settings, args) -> int`, the exit status. What a mode wires lives in
the stage folders (web/, worker/, ml/, jobs/, store/); the modes hold no logic of their own
beyond start-up order, readiness checks and shutdown.

- web: the webhook and the HTTP APIs, granian with WEB_WORKERS processes (web.py).
- worker: conversation logic and delivery (worker.py).
- ml: the model and generation (ml.py).
- all: web, worker and ml in one process (all.py).
- demo: all of them with a Bot API double and a chat in the terminal (demo.py).
- migrate: apply the PostgreSQL migrations and exit (migrate.py).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiconv.config import Settings

ModeMain = Callable[["Settings", argparse.Namespace], int]
MODES = ("web", "worker", "ml", "all", "migrate", "demo")


def resolve(mode: str) -> ModeMain:
    """The `main` of `mode`, importing its module (and only its module) now."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    module = importlib.import_module(f"aiconv.modes.{mode}")
    main: ModeMain = module.main
    return main
