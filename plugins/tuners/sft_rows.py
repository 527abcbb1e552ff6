"""Supervised rows for every SFT-style tuner: ``messages`` or ``prompt``/``completion``.

Rows become trl's conversational prompt/completion form, so the chat template
comes from the tokenizer and the loss falls on the completion only (trl masks
the prompt). A ``messages`` row is split before its last assistant turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from harness.data import DataRow, read_jsonl
from harness.errors import DataError


class Message(DataRow):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class SFTRow(DataRow):
    messages: list[Message] | None = None
    prompt: str | None = None
    completion: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> SFTRow:
        if self.messages is not None:
            if self.prompt is not None or self.completion is not None:
                raise ValueError("give either 'messages' or 'prompt'/'completion', not both")
            if not self.messages or self.messages[-1].role != "assistant":
                raise ValueError("'messages' must end with an assistant message")
            if len(self.messages) < 2:
                raise ValueError("'messages' needs a prompt turn before the assistant turn")
        elif self.prompt is None or self.completion is None:
            raise ValueError("a row needs 'messages', or both 'prompt' and 'completion'")
        elif not self.prompt.strip() or not self.completion.strip():
            raise ValueError("'prompt' and 'completion' must not be empty")
        return self

    def as_prompt_completion(self) -> dict[str, list[dict[str, str]]]:
        if self.messages is not None:
            turns = [{"role": m.role, "content": m.content} for m in self.messages]
            return {"prompt": turns[:-1], "completion": turns[-1:]}
        return {
            "prompt": [{"role": "user", "content": self.prompt}],
            "completion": [{"role": "assistant", "content": self.completion}],
        }


def load_sft_dataset(path: Path):
    """Read and check every row first (nothing trains on a bad file), then build a Dataset."""
    from datasets import Dataset

    rows = read_jsonl(path, SFTRow)
    if len(rows) < 1:
        raise DataError(path, None, "no rows")
    return Dataset.from_list([row.as_prompt_completion() for _, row in rows])
