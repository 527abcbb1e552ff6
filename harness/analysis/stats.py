"""Paired tests between a variant and its base on the same evaluator's items.

Both cells scored the same items, so the comparison is paired, item by item, on the
per-item scores the evaluators store (``samples.score``: right/wrong for benchmarks,
NLL per token for perplexity, unsafe 0/1 for safety, ...). ``delta`` is always the mean
per-item difference, variant minus base, in the units of that score.

* Every score 0 or 1 on both sides (``"mcnemar-midp"``): only the discordant items carry
  information, ``lost`` (base 1, variant 0) and ``gained`` (base 0, variant 1). The
  p-value is McNemar's test with the mid-p correction (Fagerland, Lydersen & Laake 2013,
  BMC Medical Research Methodology 13:91), which keeps close to the nominal level while
  being less conservative than the exact binomial test. The 95% interval of ``delta``
  is Agresti & Min's adjusted Wald interval for matched proportions (2005, Statistics
  in Medicine 24:729-740): half an item added to each cell of the 2x2 table.
* Otherwise (``"paired-t"``): Student's paired t-test on the differences (Student 1908,
  Biometrika 6:1-25; scipy's ``ttest_rel``), its two-sided p-value and 95% interval of
  the mean difference. For a few hundred items or more the mean difference is close to
  normal whatever the shape of the per-item scores, which is what the t-test needs.
  When every item moved by the same amount there is no spread to test against: the
  interval is the point ``delta`` and p is 1 when that is 0 (or there is a single
  item), else 0.

``sd`` is the sample standard deviation of the per-item differences; with ``n``,
``delta`` and (for 0/1 scores) ``lost``/``gained`` it is all that
:mod:`harness.analysis.gate` needs to redo the test at another level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedTest:
    test: str  # "mcnemar-midp" or "paired-t"
    n: int  # items scored by both cells
    delta: float  # mean(variant - base) over the items
    ci_low: float  # 95% interval of delta
    ci_high: float
    p_value: float  # two-sided, H0: no difference
    sd: float  # sample standard deviation (ddof=1) of the differences; 0.0 when n < 2
    lost: int | None  # 0/1 scores only: items base 1, variant 0
    gained: int | None  # 0/1 scores only: items base 0, variant 1


def paired_test(base: Sequence[float], variant: Sequence[float]) -> PairedTest:
    """Test ``variant`` against ``base``, the two cells' scores on the same items in the
    same order (see the module docstring for which test and why)."""
    import numpy as np

    b = np.asarray(base, dtype=float)
    v = np.asarray(variant, dtype=float)
    if b.shape != v.shape or b.ndim != 1 or b.size == 0:
        raise ValueError("paired scores need the same, non-zero number of items")
    n = int(b.size)
    diff = v - b
    # all differences equal (all 0 included): sd is exactly 0 and the mean that one value,
    # not rounding noise (the mean of three 0.1s computes as 0.10000000000000002)
    constant = bool(np.ptp(diff) == 0)
    delta = float(diff[0]) if constant else float(diff.mean())
    sd = 0.0 if n < 2 or constant else float(diff.std(ddof=1))
    if _binary(b, v):
        lost = int(np.sum((b == 1) & (v == 0)))
        gained = int(np.sum((b == 0) & (v == 1)))
        low, high, _ = agresti_min(n, lost, gained, 0.95)
        return PairedTest("mcnemar-midp", n, delta, low, high, mcnemar_midp(lost, gained), sd,
                          lost, gained)
    if n < 2 or constant:
        # no spread to test against: nothing changed (p = 1), or every item moved by the
        # same amount, which no amount of noise explains (p = 0); a point interval either way
        p_value = 1.0 if n < 2 or delta == 0 else 0.0
        return PairedTest("paired-t", n, delta, delta, delta, p_value, sd, None, None)
    from scipy.stats import ttest_rel

    result = ttest_rel(v, b)
    interval = result.confidence_interval(0.95)
    return PairedTest("paired-t", n, delta, float(interval.low), float(interval.high),
                      float(result.pvalue), sd, None, None)


def mcnemar_midp(lost: int, gained: int) -> float:
    """Two-sided mid-p McNemar test on the discordant counts (Fagerland et al. 2013).

    Under "no difference" each of the ``lost + gained`` discordant items is as likely to
    go either way, so the smaller count ``k`` is X ~ Binomial(lost + gained, 1/2). The
    exact test doubles P(X <= k); the mid-p version counts the observed outcome itself
    only half: ``p = 2 * (P(X <= k) - P(X = k) / 2)``, capped at 1. No discordant items
    (nothing to test) or as many lost as gained: p = 1.
    """
    from scipy.stats import binom

    discordant = lost + gained
    if lost == gained:  # no discordant items, or as many each way: p = 1 exactly
        return 1.0
    k = min(lost, gained)
    p = 2 * (binom.cdf(k, discordant, 0.5) - 0.5 * binom.pmf(k, discordant, 0.5))
    return float(min(1.0, p))


def agresti_min(n: int, lost: int, gained: int, confidence: float) -> tuple[float, float, float]:
    """Agresti & Min's (2005) adjusted Wald interval of the paired difference of two
    proportions, (gained - lost) / n; returns ``(low, high, se)``.

    Half an item is added to each of the four cells of the 2x2 table (so n' = n + 2,
    b' = lost + 0.5, c' = gained + 0.5), then the plain Wald interval is taken on that
    table: d' = (c' - b') / n', se = sqrt((b' + c') - (c' - b')^2 / n') / n', and
    d' +- z * se with z the normal quantile for ``confidence``, clipped to [-1, 1]. The
    added half items keep the interval from collapsing to a point when no item changed.
    scipy has no interval for matched proportions, so it is written out here.
    """
    from scipy.stats import norm

    n_adj = n + 2
    b_adj, c_adj = lost + 0.5, gained + 0.5
    d_adj = (c_adj - b_adj) / n_adj
    se = math.sqrt((b_adj + c_adj) - (c_adj - b_adj) ** 2 / n_adj) / n_adj
    z = float(norm.ppf(0.5 + confidence / 2))
    return max(-1.0, d_adj - z * se), min(1.0, d_adj + z * se), se


def _binary(*arrays) -> bool:
    import numpy as np

    return all(np.isin(a, (0.0, 1.0)).all() for a in arrays)
