"""Perplexity over a JSONL file of ``{"text": ...}`` rows.

Every token of a text is scored after the backend's prefix token (BOS, else
EOS, as lm-eval does), so ``token_nll`` is the mean negative log-likelihood per
token, ``perplexity`` its exponential and ``bits_per_byte`` the total NLL in
bits over the UTF-8 bytes of the texts.
"""

from __future__ import annotations

import math

from pydantic import Field

import harness
from harness.components import Backend, EvalResult, EvaluatorSpec, Metric, Options, Sample
from harness.data import DataRow, ItemId, read_jsonl


class TextRow(DataRow):
    text: str = Field(min_length=1)
    id: ItemId | None = None


class PerplexityOptions(Options):
    limit: int | None = Field(default=None, gt=0, description="score only the first N texts")


class PerplexityEvaluator:
    Options = PerplexityOptions

    def __init__(self, spec: EvaluatorSpec, options: PerplexityOptions) -> None:
        self.spec, self.options = spec, options

    def evaluate(self, backend: Backend) -> EvalResult:
        rows = [row for _, row in read_jsonl(self.spec.data, TextRow)][: self.options.limit]
        scores = backend.score_texts([row.text for row in rows])
        total_nll = total_tokens = total_bytes = 0.0
        samples = []
        for index, (row, score) in enumerate(zip(rows, scores)):
            nll = -sum(score.logprobs)
            tokens = len(score.logprobs)
            total_nll += nll
            total_tokens += tokens
            total_bytes += score.num_bytes
            samples.append(Sample(
                index=index, item_id=row.id, target=row.text, score=nll / tokens,
                logprobs=score.logprobs,
                extra={"nll": nll, "tokens": tokens, "bytes": score.num_bytes,
                       "perplexity": math.exp(nll / tokens)},
            ))
        token_nll = total_nll / total_tokens
        n = len(rows)
        return EvalResult(
            metrics=[
                Metric("perplexity", math.exp(token_nll), n, higher_is_better=False, primary=True),
                Metric("token_nll", token_nll, n, higher_is_better=False),
                Metric("bits_per_byte", total_nll / (math.log(2) * total_bytes), n,
                       higher_is_better=False),
            ],
            samples=samples,
        )


@harness.hookimpl
def harness_register_evaluators(register):
    register("perplexity", PerplexityEvaluator)
