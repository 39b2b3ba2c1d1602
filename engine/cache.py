"""Where pagebatch keeps what it makes once: converted GGUF checkpoints, fetched and demo models.

One root for every reader, the engine's GGUF conversions and the service's settings alike:
``$PAGEBATCH_CACHE_DIR`` when set, else ``~/.cache/pagebatch``. The engine has no settings object of its
own (it is a library), so this is the one place it reads the environment.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "PAGEBATCH_CACHE_DIR"


def cache_root() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "pagebatch"
