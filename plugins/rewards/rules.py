"""Rule rewards: deterministic functions of a completion's text, no model involved.

* ``length``: peaks at a target word count,
  ``r = max(0, 1 - |n - T| / T)`` with ``n = len(completion.split())`` and
  ``T = target_words``: 1 at exactly ``T`` words, 0 for an empty completion
  and for ``2T`` words or more, linear in between.
* ``contains``: ``r = 1`` if the regular expression ``pattern`` matches
  somewhere in the completion (``re.search``), else ``0``.

Prompts are ignored by both. For a literal keyword with regex characters in
it, escape them (``\\.``) or write a character class (``[.]``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field, field_validator

import harness


class LengthOptions(harness.Options):
    target_words: int = Field(
        default=50, gt=0, description="word count (whitespace-separated) at which the reward is 1")


class LengthReward(harness.Reward):
    """``max(0, 1 - |words - target_words| / target_words)``, in [0, 1]."""

    Options = LengthOptions

    def __init__(self, options: LengthOptions | None = None) -> None:
        self.options = options or LengthOptions()

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        target = self.options.target_words
        return [max(0.0, 1.0 - abs(len(text.split()) - target) / target) for text in completions]


class ContainsOptions(harness.Options):
    pattern: str = Field(min_length=1, description="a Python regular expression (re.search)")
    ignore_case: bool = Field(default=False, description="match regardless of case")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class ContainsReward(harness.Reward):
    """1.0 where ``pattern`` occurs in the completion, else 0.0."""

    Options = ContainsOptions

    def __init__(self, options: ContainsOptions) -> None:
        self.options = options
        self._regex = re.compile(options.pattern, re.IGNORECASE if options.ignore_case else 0)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [1.0 if self._regex.search(text) else 0.0 for text in completions]


@harness.hookimpl
def harness_register_rewards(register):
    register("length", LengthReward)
    register("contains", ContainsReward)
