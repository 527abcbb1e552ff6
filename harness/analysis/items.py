"""An evaluation item's text, as contamination checks and reports see it (no numpy here:
the public API exports :func:`item_text`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Item:
    """One evaluation item, as stored in ``samples``."""

    index: int
    item_id: str | None
    text: str


def item_text(prompt: str | None, target: str | None, extra: dict[str, Any] | None) -> str:
    """What an item says: lm-eval's decontamination query when the task defines one
    (the question without its few-shot context), else the prompt and the target."""
    query = (extra or {}).get("decontamination_query")
    if isinstance(query, str) and query.strip():
        return query
    return " ".join(part for part in (prompt, target) if part)
