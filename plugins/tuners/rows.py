"""Training rows for every tuner, read and checked before anything trains.

* SFT rows: ``messages`` (ending with an assistant turn) or ``prompt``/``completion``.
* Preference rows: ``prompt``/``chosen``/``rejected`` as text, or ``prompt`` as a
  list of messages with ``chosen``/``rejected`` as assistant message lists.
* Prompt rows (for PPO and GRPO): ``prompt`` as text or as a list of messages.

Rows become trl's *conversational* form, so the chat template comes from the
tokenizer and trl masks the prompt: the loss falls on completions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from harness import DataRow, read_jsonl

Turns = list[dict[str, str]]


class Message(DataRow):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


def _turns(messages: list[Message]) -> Turns:
    return [{"role": m.role, "content": m.content} for m in messages]


def _user(text: str) -> Turns:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> Turns:
    return [{"role": "assistant", "content": text}]


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

    def conversational(self) -> dict[str, Turns]:
        """Split before the last assistant turn: ``{"prompt": [...], "completion": [...]}``."""
        if self.messages is not None:
            turns = _turns(self.messages)
            return {"prompt": turns[:-1], "completion": turns[-1:]}
        return {"prompt": _user(self.prompt), "completion": _assistant(self.completion)}


class PreferenceRow(DataRow):
    prompt: str | list[Message]
    chosen: str | list[Message]
    rejected: str | list[Message]

    @model_validator(mode="after")
    def _check(self) -> PreferenceRow:
        for name in ("prompt", "chosen", "rejected"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                raise ValueError(f"'{name}' must not be empty")
            if isinstance(value, list) and not value:
                raise ValueError(f"'{name}' must not be empty")
        for name in ("chosen", "rejected"):
            value = getattr(self, name)
            if isinstance(value, list) and any(m.role != "assistant" for m in value):
                raise ValueError(f"'{name}' messages must all be assistant messages")
        if self.chosen == self.rejected:
            raise ValueError("'chosen' and 'rejected' are the same")
        return self

    def conversational(self) -> dict[str, Turns]:
        def side(value: str | list[Message], wrap) -> Turns:
            return wrap(value) if isinstance(value, str) else _turns(value)

        return {"prompt": side(self.prompt, _user), "chosen": side(self.chosen, _assistant),
                "rejected": side(self.rejected, _assistant)}


class PromptRow(DataRow):
    prompt: str | list[Message]

    @model_validator(mode="after")
    def _check(self) -> PromptRow:
        if isinstance(self.prompt, str) and not self.prompt.strip():
            raise ValueError("'prompt' must not be empty")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("'prompt' must not be empty")
        return self

    def conversational(self) -> dict[str, Turns]:
        return {"prompt": _user(self.prompt) if isinstance(self.prompt, str) else _turns(self.prompt)}


def load_rows(path: Path, schema: type[SFTRow] | type[PreferenceRow] | type[PromptRow]) -> Any:
    """Check every row (a bad one stops everything, naming file, line and field),
    then build a ``datasets.Dataset`` in trl's conversational form."""
    from datasets import Dataset

    rows = read_jsonl(path, schema)
    return Dataset.from_list([row.conversational() for _, row in rows])
