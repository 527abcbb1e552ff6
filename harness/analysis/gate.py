"""The forgetting gate: did tuning cost more than we allow on an evaluator?

For every (variant, evaluator) pair the gate asks one question of the paired item scores
against the root base: is the *loss* (how much worse the variant is, in the evaluator's
own per-item units) larger than the allowed ``max_loss``? It answers with one of three
decisions:

* ``NO-GO``: the loss is significant and larger than ``max_loss``: the one-sided p-value
  for "loss > 0", Holm-adjusted across every pair passed to one :func:`decide` call, is
  below ``alpha``, and the estimated loss is above ``max_loss``.
* ``GO``: non-inferiority is shown: the upper end of the two-sided (1 - alpha) interval
  of the loss is at most ``max_loss``.
* ``INCONCLUSIVE``: neither; the items are too few or too noisy to tell. The reason then
  names the minimum detectable effect (MDE): the loss these items would detect with 80%
  power, ``(z[1 - alpha/2] + z[0.80]) * se``, se being the standard error behind the
  interval. An MDE above ``max_loss`` says more items are needed, not that all is well.

The functions work on sufficient statistics (n, mean difference, standard deviation, and
the lost/gained counts for 0/1 scores, as :func:`harness.analysis.stats.paired_test`
gives them), so they are pure and need no store. The tests and their references:

* 0/1 scores: one-sided mid-p McNemar (Fagerland, Lydersen & Laake 2013, BMC Medical
  Research Methodology 13:91) and the Agresti & Min (2005, Statistics in Medicine
  24:729-740) interval;
* other scores: one-sided paired t-test (Student 1908, Biometrika 6:1-25) and its
  t interval;
* the family: Holm's step-down adjustment (Holm 1979, Scandinavian Journal of
  Statistics 6:65-70);
* recipes across seeds: Welch's t-test (Welch 1947, Biometrika 34:28-35), :func:`welch`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.analysis.stats import agresti_min

GO, NO_GO, INCONCLUSIVE = "GO", "NO-GO", "INCONCLUSIVE"
#: the power the MDE is stated at
POWER = 0.80


@dataclass(frozen=True)
class GateInput:
    """One (variant, evaluator) pair against the root base, as a paired test gives it."""

    variant: str
    evaluator: str
    metric: str
    higher_is_better: bool  # orientation of the item scores (that of the primary metric)
    test: str  # "mcnemar-midp" (0/1 scores) or "paired-t"
    n: int  # items scored by both
    delta: float  # mean(variant - base) of the item scores
    sd: float  # sample standard deviation (ddof=1) of the per-item differences
    lost: int | None  # 0/1 scores: items base 1, variant 0 (None for paired-t)
    gained: int | None  # 0/1 scores: items base 0, variant 1 (None for paired-t)
    max_loss: float  # the largest loss allowed, in the units of the item scores


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer for one pair. ``loss`` and its interval are oriented: positive
    means worse than the base (``-delta`` when higher is better, ``delta`` otherwise)."""

    variant: str
    evaluator: str
    metric: str
    test: str
    n: int
    loss: float
    ci_low: float  # two-sided (1 - alpha) interval of the loss
    ci_high: float
    p_value: float  # one-sided, H0: loss <= 0
    p_holm: float  # p_value Holm-adjusted across the whole family passed to decide()
    max_loss: float
    mde: float  # the loss these items detect with 80% power at this alpha
    decision: str  # "GO", "NO-GO" or "INCONCLUSIVE"
    reason: str  # one short sentence


@dataclass(frozen=True)
class _LossTest:
    loss: float
    ci_low: float
    ci_high: float
    p_value: float
    se: float


def decide(inputs: Sequence[GateInput], alpha: float = 0.05) -> list[GateDecision]:
    """The gate's decision for every pair, in input order.

    All of ``inputs`` form one family for Holm's adjustment: pass every variant and
    evaluator of a run together, so that testing many pairs does not make a NO-GO more
    likely by chance. A pair that cannot be tested (a paired t-test on fewer than 2
    items) counts in the family with p = 1.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie between 0 and 1, not {alpha}")
    if not inputs:  # a run with no variants: no scipy import (0.4 s) for nothing
        return []
    from scipy.stats import norm

    results = [_loss_test(item, alpha) for item in inputs]
    adjusted = holm([r.p_value for r in results])
    mde_factor = float(norm.ppf(1 - alpha / 2) + norm.ppf(POWER))
    level = f"{100 * (1 - alpha):g}%"
    decisions = []
    for item, r, p_holm in zip(inputs, results, adjusted):
        mde = mde_factor * r.se
        if item.test == "paired-t" and item.n < 2:
            decision, reason = INCONCLUSIVE, "fewer than 2 items"
        elif p_holm < alpha and r.loss > item.max_loss:
            decision = NO_GO
            reason = (f"loss {r.loss:.3g} is above max_loss {item.max_loss:.3g} and significant "
                      f"(Holm-adjusted one-sided p = {p_holm:.3g} < {alpha:g})")
        elif r.ci_high <= item.max_loss:
            decision = GO
            reason = (f"the {level} interval of the loss ends at {r.ci_high:.3g}, "
                      f"within max_loss {item.max_loss:.3g}")
        else:
            decision = INCONCLUSIVE
            reason = (f"the {level} interval of the loss reaches {r.ci_high:.3g}, above max_loss "
                      f"{item.max_loss:.3g}; {item.n} items detect a loss of {mde:.3g} "
                      f"with {POWER:.0%} power")
        decisions.append(GateDecision(item.variant, item.evaluator, item.metric, item.test,
                                      item.n, r.loss, r.ci_low, r.ci_high, r.p_value, p_holm,
                                      item.max_loss, mde, decision, reason))
    return decisions


def variant_decisions(decisions: Iterable[Any],
                      key: Callable[[Any], Hashable] = lambda d: d.variant) -> dict[Any, str]:
    """One decision per variant over its evaluators: NO-GO if any evaluator says NO-GO,
    GO if every one says GO, else INCONCLUSIVE. Variants keep their first-seen order;
    ``key`` says which variant a decision is of (a stored row: its model and name)."""
    by_variant: dict[Any, list[str]] = {}
    for d in decisions:
        by_variant.setdefault(key(d), []).append(d.decision)
    overall = {}
    for variant, found in by_variant.items():
        if NO_GO in found:
            overall[variant] = NO_GO
        elif all(x == GO for x in found):
            overall[variant] = GO
        else:
            overall[variant] = INCONCLUSIVE
    return overall


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in input order.

    Sort the m p-values ascending; the i-th smallest (i = 1..m) is multiplied by
    m - i + 1 and capped at 1, and an adjusted value is never smaller than the one before
    it: ``p_adj(i) = max over j <= i of min(1, (m - j + 1) * p(j))``. Rejecting where
    ``p_adj < alpha`` keeps the chance of any false rejection in the family below alpha.
    scipy has no Holm step-down (statsmodels has, but is not a dependency), so it is
    written out here.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running_max = 0.0
    for rank, i in enumerate(order):  # rank 0 is the smallest p, multiplied by m
        running_max = max(running_max, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running_max
    return adjusted


def _loss_test(item: GateInput, alpha: float) -> _LossTest:
    """The one-sided test of "loss > 0" and the (1 - alpha) interval of the loss."""
    if item.test == "mcnemar-midp":
        return _binary_loss(item, alpha)
    if item.test == "paired-t":
        return _paired_t_loss(item, alpha)
    raise ValueError(f"unknown paired test {item.test!r} for {item.variant}/{item.evaluator}")


def _binary_loss(item: GateInput, alpha: float) -> _LossTest:
    """0/1 scores. An item is a loss when it moves the bad way: base 1 to variant 0 when
    higher is better (a right answer lost), base 0 to variant 1 when lower is better (a
    safe answer turned unsafe). With no change in expectation each of the ``bad + good``
    discordant items is a coin flip, so bad ~ Binomial(bad + good, 1/2); the one-sided
    mid-p is P(X > bad) + P(X = bad) / 2."""
    from scipy.stats import binom

    if item.lost is None or item.gained is None:
        raise ValueError(f"{item.variant}/{item.evaluator}: mcnemar-midp needs lost and gained")
    bad, good = (item.lost, item.gained) if item.higher_is_better else (item.gained, item.lost)
    discordant = bad + good
    p_value = 1.0 if discordant == 0 else float(
        binom.sf(bad, discordant, 0.5) + 0.5 * binom.pmf(bad, discordant, 0.5))
    # the interval is of delta = (gained - lost) / n; orienting it to the loss flips it
    # when higher is better
    low, high, se = agresti_min(item.n, item.lost, item.gained, 1 - alpha)
    if item.higher_is_better:
        return _LossTest(0.0 - item.delta, 0.0 - high, 0.0 - low, p_value, se)  # no -0.0
    return _LossTest(item.delta, low, high, p_value, se)


def _paired_t_loss(item: GateInput, alpha: float) -> _LossTest:
    """Other scores: the paired t-test from n, the mean and sd of the differences.
    t = loss / (sd / sqrt(n)) with n - 1 degrees of freedom; the interval is
    loss +- t[1 - alpha/2, n - 1] * sd / sqrt(n). With sd = 0 there is no noise to test
    against: a point interval, p = 1 for no loss and p = 0 for any loss."""
    from scipy.stats import t as t_dist

    loss = 0.0 - item.delta if item.higher_is_better else item.delta
    if item.n < 2:
        return _LossTest(loss, -math.inf, math.inf, 1.0, math.inf)
    if item.sd == 0:
        return _LossTest(loss, loss, loss, 1.0 if loss <= 0 else 0.0, 0.0)
    se = item.sd / math.sqrt(item.n)
    p_value = float(t_dist.sf(loss / se, item.n - 1))
    half = float(t_dist.ppf(1 - alpha / 2, item.n - 1)) * se
    return _LossTest(loss, loss - half, loss + half, p_value, se)


@dataclass(frozen=True)
class WelchTest:
    """Two recipes compared on their per-seed results (one number per seed)."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float  # sample standard deviations (ddof=1)
    sd_b: float
    diff: float  # mean_a - mean_b
    t: float
    df: float  # Welch-Satterthwaite degrees of freedom
    p_value: float  # two-sided, H0: equal means


def welch(a: Sequence[float], b: Sequence[float]) -> WelchTest | None:
    """Welch's (1947) t-test: does the difference between two recipes exceed the
    seed-to-seed variation? Each side is one number per seed; the two sides may have
    different spreads. t and p come from scipy's ``ttest_ind(equal_var=False)``; the
    degrees of freedom are Welch-Satterthwaite's
    ``(s1²/n1 + s2²/n2)² / ((s1²/n1)² / (n1 - 1) + (s2²/n2)² / (n2 - 1))``.

    Needs at least 2 seeds a side, else returns None. With 3 seeds a side only large
    differences come out significant: a p above 0.05 is no evidence of "no difference".
    When neither side varies at all (both sds 0) there is no seed noise to compare with:
    a few seeds that happen to agree (common on a small right/wrong evaluator) are no
    evidence that seeds never disagree, so the test returns None (untestable).
    """
    import numpy as np
    from scipy.stats import ttest_ind

    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < 2 or xb.size < 2:
        return None
    n_a, n_b = int(xa.size), int(xb.size)
    # a side whose values are all equal has that value as its mean and sd exactly 0, not
    # rounding noise (the mean of three 0.1s computes as 0.10000000000000002)
    flat_a, flat_b = bool(np.ptp(xa) == 0), bool(np.ptp(xb) == 0)
    mean_a = float(xa[0]) if flat_a else float(xa.mean())
    mean_b = float(xb[0]) if flat_b else float(xb.mean())
    sd_a = 0.0 if flat_a else float(xa.std(ddof=1))
    sd_b = 0.0 if flat_b else float(xb.std(ddof=1))
    diff = mean_a - mean_b
    if sd_a == 0 and sd_b == 0:
        return None
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    with warnings.catch_warnings():
        # a flat side (say three seeds all at 0.62) makes scipy warn of precision loss in
        # its variance; that variance is 0 up to rounding, which is what the test needs
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        result = ttest_ind(xa, xb, equal_var=False)
    return WelchTest(n_a, n_b, mean_a, mean_b, sd_a, sd_b, diff, float(result.statistic), df,
                     float(result.pvalue))
