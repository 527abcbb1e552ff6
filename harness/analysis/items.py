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


def item_text(prompt: str | None, target: str | None, extra: dict[str, Any] | None = None,
              query: str | None = None) -> str:
    """What an item says: its decontamination query when it has one (``samples.query``;
    lm-eval's ``doc_to_decontamination_query``, the question without its few-shot
    context), else the one stores before schema 9 kept in ``extra``, else the prompt and
    the target."""
    for candidate in (query, (extra or {}).get("decontamination_query")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return " ".join(part for part in (prompt, target) if part)
