"""``example/json-match``: does the model answer with the expected JSON object?

Each row is a prompt and the object the answer must contain, for example
``{"prompt": "Give the city and country of the Eiffel Tower as JSON with keys city and
country.", "expected": {"city": "Paris", "country": "France"}}``. The model answers
greedily; the first JSON object in its answer is parsed and compared with ``expected``.

Metrics: ``exact_match`` (the object equals ``expected``; primary), ``valid_json`` (an
object could be parsed at all) and ``field_accuracy`` (the share of expected keys whose
values match).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

import harness
from harness import Backend, DataRow, EvalResult, ItemId, Metric, Sample, read_jsonl


class JsonRow(DataRow):
    prompt: str = Field(min_length=1)
    expected: dict[str, Any] = Field(min_length=1)
    id: ItemId | None = None


class JsonMatchOptions(harness.Options):
    max_new_tokens: int = Field(default=64, gt=0)
    chat_template: bool = Field(default=True, description="ask in the model's chat template")


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (models often wrap it in prose or code fences)."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char == "{":
            try:
                value, _ = decoder.raw_decode(text[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


class JsonMatchEvaluator(harness.Evaluator):
    Options = JsonMatchOptions
    Rows = JsonRow  # harness reads every row at validation: a bad one stops with its line
    default_role = "target"

    def evaluate(self, backend: Backend) -> EvalResult:
        rows = [row for _, row in read_jsonl(self.spec.data, JsonRow)]
        prompts = [backend.chat_prompt(r.prompt) if self.options.chat_template else r.prompt
                   for r in rows]
        outputs = backend.generate(prompts, max_new_tokens=self.options.max_new_tokens)
        samples = []
        for index, (row, output) in enumerate(zip(rows, outputs)):
            parsed = first_json_object(output)
            fields = sum(parsed is not None and parsed.get(k) == v for k, v in row.expected.items())
            samples.append(Sample(
                index=index, item_id=row.id, prompt=row.prompt,
                target=json.dumps(row.expected, sort_keys=True), output=output,
                score=float(parsed == row.expected),
                extra={"parsed": parsed, "valid_json": parsed is not None,
                       "field_accuracy": fields / len(row.expected)},
            ))
        n = len(samples)
        return EvalResult(
            metrics=[
                Metric("exact_match", sum(s.score for s in samples) / n, n, primary=True),
                Metric("valid_json", sum(s.extra["valid_json"] for s in samples) / n, n),
                Metric("field_accuracy", sum(s.extra["field_accuracy"] for s in samples) / n, n),
            ],
            samples=samples,
        )
