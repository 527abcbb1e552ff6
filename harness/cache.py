"""Where harness keeps what it derives once and reuses: converted models, fingerprints."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models and other derived files live (``HARNESS_CACHE``)."""
    root = os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
