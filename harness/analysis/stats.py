"""Paired tests between a variant and its base on the same evaluator's items.

Both cells scored the same items, so the comparison is paired, item by item, on the
per-item scores the evaluators store (``samples.score``: right/wrong for benchmarks,
NLL per token for perplexity, unsafe 0/1 for safety, ...):

* every score 0 or 1: McNemar's exact test (a two-sided binomial test on the
  discordant pairs, scipy's ``binomtest``);
* otherwise: a paired bootstrap of the mean difference; the p-value is twice the
  smaller share of bootstrap means on either side of 0, counted as (k + 1) / (B + 1)
  so that it never reads 0.

Either way the 95% confidence interval of the mean difference (variant minus base)
comes from scipy's ``bootstrap`` (percentile method) over the paired differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedTest:
    test: str  # "mcnemar" or "bootstrap"
    n: int
    delta: float  # mean(variant) - mean(base)
    ci_low: float
    ci_high: float
    p_value: float


def paired_test(base: Sequence[float], variant: Sequence[float], *, seed: int = 0,
                resamples: int = 2000) -> PairedTest:
    import numpy as np
    from scipy.stats import binomtest, bootstrap

    b = np.asarray(base, dtype=float)
    v = np.asarray(variant, dtype=float)
    if b.shape != v.shape or b.size == 0:
        raise ValueError("paired scores need the same, non-zero number of items")
    diff = v - b
    delta = float(diff.mean())
    if np.all(diff == 0):
        return PairedTest("mcnemar" if _binary(b, v) else "bootstrap", int(b.size), 0.0, 0.0,
                          0.0, 1.0)
    rng = np.random.default_rng(seed)
    interval = bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=resamples,
                         method="percentile", rng=rng)
    low, high = float(interval.confidence_interval.low), float(interval.confidence_interval.high)
    if _binary(b, v):
        lost = int(np.sum((b == 1) & (v == 0)))
        gained = int(np.sum((b == 0) & (v == 1)))
        p_value = float(binomtest(gained, lost + gained, 0.5).pvalue)
        return PairedTest("mcnemar", int(b.size), delta, low, high, p_value)
    means = interval.bootstrap_distribution
    # (count + 1) / (resamples + 1): a bootstrap cannot show a p-value below its resolution
    below, above = (float(np.sum(means <= 0)) + 1, float(np.sum(means >= 0)) + 1)
    p_value = min(1.0, 2 * min(below, above) / (len(means) + 1))
    return PairedTest("bootstrap", int(b.size), delta, low, high, p_value)


def _binary(*arrays) -> bool:
    import numpy as np

    return all(np.isin(a, (0.0, 1.0)).all() for a in arrays)
