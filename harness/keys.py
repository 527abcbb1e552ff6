"""Content hashes: what keys a cell, a variant and an analysis, so that nothing finished is
ever computed again and anything whose inputs changed is."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

#: ``lm_eval:hellaswag``-style references name data (or a model) instead of a path; they are
#: passed to the component as they are and hashed by name
NAMED_REFERENCE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?:(?!/)")


def content_hash(payload: Any) -> str:
    """SHA-256 of a JSON payload (keys sorted): cell and variant keys, analysis keys."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_hash(reference: str) -> str:
    """Hash a data file or folder by content; a named reference (``lm_eval:x``) by name."""
    if NAMED_REFERENCE.match(reference):
        return content_hash(reference)
    path = Path(reference)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()
