"""Where the harness keeps caches, run artifacts and results."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return the cache root: $BENCH_CACHE_DIR, else ~/.cache/bitbench."""
    configured = os.environ.get("BENCH_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "bitbench"


def runs_dir() -> Path:
    """Return where training checkpoints and quantized artifacts are kept between runs."""
    return cache_dir() / "runs"
