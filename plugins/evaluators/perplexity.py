"""Perplexity over a JSONL file of ``{"text": ...}`` rows.

Every token of a text is scored after the backend's prefix token (BOS, else
EOS, as lm-eval does). A text longer than the context is scored in windows,
as lm-eval's ``loglikelihood_rolling`` does (disjoint windows by default; set
``stride`` below the window for overlapping ones, each token then conditioned
on more of the text before it).

Metrics, all from the summed negative log-likelihood (NLL) of every text:

* ``perplexity``: ``exp(NLL / tokens)``, the primary metric;
* ``token_nll``: mean NLL per token (nats);
* ``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``: lm-eval's
  definitions (words split on whitespace, UTF-8 bytes), which do not depend on
  the tokenizer and so compare across model families.

Each text's NLL, token, word and byte counts are stored as its sample.
"""

from __future__ import annotations

import math
import re

from pydantic import Field

import harness
from harness import Backend, DataRow, EvalResult, ItemId, Metric, Sample, read_jsonl


class TextRow(DataRow):
    text: str = Field(min_length=1)
    id: ItemId | None = None


class PerplexityOptions(harness.Options):
    limit: int | None = Field(default=None, gt=0, description="score only the first N texts")
    stride: int | None = Field(
        default=None, gt=0,
        description="tokens predicted per window for texts longer than the context "
                    "(default: the whole window, as lm-eval)")


def count_words(text: str) -> int:
    """Words as lm-eval counts them for ``word_perplexity``."""
    return len(re.split(r"\s+", text))


class PerplexityEvaluator(harness.Evaluator):
    Options = PerplexityOptions
    Rows = TextRow  # every row is read when the suite is validated

    def evaluate(self, backend: Backend) -> EvalResult:
        rows = [row for _, row in read_jsonl(self.spec.data, TextRow)][: self.options.limit]
        scores = backend.score_texts([row.text for row in rows], stride=self.options.stride)
        total_nll = total_tokens = total_bytes = total_words = 0.0
        samples = []
        for index, (row, score) in enumerate(zip(rows, scores)):
            nll = -sum(score.logprobs)
            tokens, words = len(score.logprobs), count_words(row.text)
            total_nll += nll
            total_tokens += tokens
            total_bytes += score.num_bytes
            total_words += words
            samples.append(Sample(
                index=index, item_id=row.id, target=row.text, score=nll / tokens,
                logprobs=score.logprobs,
                extra={"nll": nll, "tokens": tokens, "words": words, "bytes": score.num_bytes,
                       "perplexity": math.exp(nll / tokens)},
            ))
        token_nll = total_nll / total_tokens
        n = len(rows)
        lower = {"higher_is_better": False}
        return EvalResult(
            metrics=[
                Metric("perplexity", math.exp(token_nll), n, primary=True, **lower),
                Metric("token_nll", token_nll, n, **lower),
                Metric("word_perplexity", math.exp(total_nll / total_words), n, **lower),
                Metric("byte_perplexity", math.exp(total_nll / total_bytes), n, **lower),
                Metric("bits_per_byte", total_nll / (math.log(2) * total_bytes), n, **lower),
            ],
            samples=samples,
            # a text's score is its mean NLL per token: the paired tests' and gate's unit
            info={"item_score": "nll_per_token"},
        )


@harness.hookimpl
def harness_register_evaluators(register):
    register("perplexity", PerplexityEvaluator)
