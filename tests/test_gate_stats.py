"""The paired tests (mid-p McNemar, Agresti-Min interval, paired t), Holm's adjustment, the
forgetting gate's three decisions and Welch's t-test, each checked against arithmetic
written out here. scipy is used only for distribution quantiles and tails."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from scipy.stats import norm
from scipy.stats import t as t_dist

from harness.analysis.gate import (
    GateDecision,
    GateInput,
    decide,
    holm,
    variant_decisions,
    welch,
)
from harness.analysis.stats import agresti_min, mcnemar_midp, paired_test

Z95 = norm.ppf(0.975)  # 1.959963...
Z80 = norm.ppf(0.80)  # 0.841621...


def _table(both_right: int, lost: int, gained: int, both_wrong: int):
    """Base and variant 0/1 scores with the given 2x2 cells."""
    base = [1] * both_right + [1] * lost + [0] * gained + [0] * both_wrong
    variant = [1] * both_right + [0] * lost + [1] * gained + [0] * both_wrong
    return base, variant


def _gate_input(base, variant, *, variant_name="v", evaluator="e", higher_is_better=True,
                max_loss=0.01) -> GateInput:
    result = paired_test(base, variant)
    return GateInput(variant_name, evaluator, "acc", higher_is_better, result.test, result.n,
                     result.delta, result.sd, result.lost, result.gained, max_loss)


def _binary_input(n, lost, gained, *, higher_is_better=True, max_loss=0.01, variant="v",
                  evaluator="e") -> GateInput:
    """A 0/1 pair from its counts; delta = (gained - lost) / n (sd is not used by the gate)."""
    return GateInput(variant, evaluator, "acc", higher_is_better, "mcnemar-midp", n,
                     (gained - lost) / n, 0.0, lost, gained, max_loss)


# --- paired_test --------------------------------------------------------------------------

def test_mid_p_mcnemar_two_sided_by_hand():
    # b = 2 lost, c = 9 gained: 11 discordant items, k = min(b, c) = 2, X ~ Bin(11, 1/2)
    # P(X <= 2) = (C(11,0) + C(11,1) + C(11,2)) / 2^11 = (1 + 11 + 55) / 2048 = 67 / 2048
    # P(X = 2)  = 55 / 2048
    # p = 2 * (67/2048 - 55/2048 / 2) = 2 * 39.5 / 2048 = 79 / 2048 = 0.0385742...
    cdf = sum(math.comb(11, x) for x in range(3)) / 2**11
    pmf = math.comb(11, 2) / 2**11
    assert mcnemar_midp(2, 9) == pytest.approx(2 * (cdf - 0.5 * pmf), abs=1e-12)
    assert mcnemar_midp(2, 9) == pytest.approx(79 / 2048, abs=1e-12)
    assert mcnemar_midp(9, 2) == mcnemar_midp(2, 9)  # symmetric
    # k = n_d / 2 exactly: 2 * (P(X <= 1) - P(X = 1) / 2) with n_d = 2:
    # 2 * (3/4 - (2/4) / 2) = 1.0
    assert mcnemar_midp(1, 1) == 1.0
    # n_d = 3, k = 1: 2 * (P(X <= 1) - P(X = 1) / 2) = 2 * (4/8 - (3/8) / 2) = 0.625
    assert mcnemar_midp(1, 2) == pytest.approx(0.625, abs=1e-12)
    assert mcnemar_midp(0, 0) == 1.0


def test_agresti_min_interval_by_hand():
    # n = 10, b = 3 lost, c = 1 gained; half an item in each cell:
    # n' = 12, b' = 3.5, c' = 1.5, d' = (1.5 - 3.5) / 12 = -1/6
    # se = sqrt((3.5 + 1.5) - (-2)^2 / 12) / 12 = sqrt(5 - 1/3) / 12 = sqrt(14/3) / 12 = 0.18002
    low, high, se = agresti_min(10, 3, 1, 0.95)
    assert se == pytest.approx(math.sqrt(14 / 3) / 12, abs=1e-12)
    assert low == pytest.approx(-1 / 6 - Z95 * math.sqrt(14 / 3) / 12, abs=1e-12)  # -0.5195
    assert high == pytest.approx(-1 / 6 + Z95 * math.sqrt(14 / 3) / 12, abs=1e-12)  # 0.1862
    # n = 2, both lost: n' = 4, b' = 2.5, c' = 0.5, d' = -0.5,
    # se = sqrt(3 - 4/4) / 4 = 0.35355; -0.5 - 1.96 * 0.35355 = -1.193 -> clipped to -1
    low, high, _ = agresti_min(2, 2, 0, 0.95)
    assert low == -1.0
    assert high == pytest.approx(-0.5 + Z95 * math.sqrt(2) / 4, abs=1e-12)


def test_paired_test_on_right_wrong_items():
    # 30 items: both right 15, lost 2, gained 9, both wrong 4
    base, variant = _table(15, 2, 9, 4)
    result = paired_test(base, variant)
    assert (result.test, result.n, result.lost, result.gained) == ("mcnemar-midp", 30, 2, 9)
    assert result.delta == pytest.approx(7 / 30, abs=1e-12)  # (9 - 2) / 30
    assert result.p_value == pytest.approx(79 / 2048, abs=1e-12)  # as in the test above
    # Agresti-Min: n' = 32, b' = 2.5, c' = 9.5, d' = 7/32, se = sqrt(12 - 49/32) / 32
    se = math.sqrt(12 - 49 / 32) / 32
    assert result.ci_low == pytest.approx(7 / 32 - Z95 * se, abs=1e-12)  # 0.0206
    assert result.ci_high == pytest.approx(7 / 32 + Z95 * se, abs=1e-12)  # 0.4169
    # differences: 2 x (-1), 9 x (+1), 19 x 0; sum of squares about the mean
    # = 11 - 30 * (7/30)^2 = 11 - 49/30 = 281/30, over n - 1 = 29
    assert result.sd == pytest.approx(math.sqrt(281 / 30 / 29), abs=1e-12)


def test_identical_right_wrong_items_still_have_an_interval():
    base, variant = _table(5, 0, 0, 3)
    result = paired_test(base, variant)
    assert (result.test, result.delta, result.p_value, result.sd) == ("mcnemar-midp", 0.0, 1.0,
                                                                      0.0)
    assert (result.lost, result.gained) == (0, 0)
    # n' = 10, b' = c' = 0.5, d' = 0, se = sqrt(1 - 0) / 10
    assert result.ci_high == pytest.approx(Z95 / 10, abs=1e-12)
    assert result.ci_low == pytest.approx(-Z95 / 10, abs=1e-12)


def test_paired_t_on_continuous_scores_by_hand():
    base = [2.0, 2.5, 3.0, 2.2]
    variant = [2.3, 2.4, 3.4, 2.6]
    result = paired_test(base, variant)
    assert (result.test, result.n, result.lost, result.gained) == ("paired-t", 4, None, None)
    # differences 0.3, -0.1, 0.4, 0.4: mean 1.0 / 4 = 0.25
    # deviations 0.05, -0.35, 0.15, 0.15: squares 0.0025 + 0.1225 + 0.0225 + 0.0225 = 0.17
    sd = math.sqrt(0.17 / 3)  # 0.23805
    se = sd / math.sqrt(4)  # 0.11902
    t = 0.25 / se  # 2.1004
    assert result.delta == pytest.approx(0.25, abs=1e-12)
    assert result.sd == pytest.approx(sd, abs=1e-12)
    assert result.p_value == pytest.approx(2 * t_dist.sf(t, 3), abs=1e-12)  # 0.1267
    q = t_dist.ppf(0.975, 3)  # 3.1824
    assert result.ci_low == pytest.approx(0.25 - q * se, abs=1e-12)  # -0.1288
    assert result.ci_high == pytest.approx(0.25 + q * se, abs=1e-12)  # 0.6288


def test_paired_t_without_spread():
    same = paired_test([1.5, 2.5, 3.25], [1.5, 2.5, 3.25])
    assert (same.test, same.delta, same.ci_low, same.ci_high, same.p_value, same.sd) == (
        "paired-t", 0.0, 0.0, 0.0, 1.0, 0.0)
    shifted = paired_test([1.5, 2.5], [2.0, 3.0])  # every item 0.5 worse or better: p = 0
    assert (shifted.delta, shifted.ci_low, shifted.ci_high, shifted.p_value, shifted.sd) == (
        0.5, 0.5, 0.5, 0.0, 0.0)
    single = paired_test([2.5], [3.0])
    assert (single.delta, single.ci_low, single.ci_high, single.p_value, single.sd) == (
        0.5, 0.5, 0.5, 1.0, 0.0)
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


# --- Holm ---------------------------------------------------------------------------------

def test_holm_by_hand():
    # sorted: 0.005 (4th), 0.01 (1st), 0.03 (3rd), 0.04 (2nd); m = 4
    # 4 * 0.005 = 0.02; 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; 1 * 0.04 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    # capped at 1: 2 * 0.5 = 1.0; 1 * 0.6 = 0.6 -> max(1.0, 0.6) = 1.0
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0], abs=1e-12)
    assert holm([0.2]) == [0.2]
    assert holm([]) == []


# --- the gate -----------------------------------------------------------------------------

def test_a_large_significant_loss_is_no_go():
    # 1000 items; the base is right on 700, and the variant gets 300 of those wrong
    base, variant = _table(400, 300, 0, 300)
    [d] = decide([_gate_input(base, variant, max_loss=0.01)], alpha=0.05)
    assert d.decision == "NO-GO" and d.test == "mcnemar-midp" and d.n == 1000
    assert d.loss == pytest.approx(0.3, abs=1e-12)  # 300 / 1000
    # bad = 300 of 300 discordant: P(X > 300) + P(X = 300) / 2 = 0 + 0.5 * 0.5^300
    assert d.p_value == pytest.approx(0.5**301, rel=1e-9)
    assert d.p_holm == d.p_value  # a family of one
    # Agresti-Min on delta: n' = 1002, b' = 300.5, c' = 0.5, d' = -300/1002,
    # se = sqrt(301 - 300^2/1002) / 1002; the loss interval is the flipped delta interval
    se = math.sqrt(301 - 300**2 / 1002) / 1002
    assert d.ci_low == pytest.approx(300 / 1002 - Z95 * se, abs=1e-12)
    assert d.ci_high == pytest.approx(300 / 1002 + Z95 * se, abs=1e-12)
    assert "significant" in d.reason


def test_no_loss_on_many_items_is_go():
    base, variant = _table(1500, 0, 0, 500)  # 2000 identical items
    [d] = decide([_gate_input(base, variant, max_loss=0.01)], alpha=0.05)
    assert (d.decision, d.loss, d.p_value) == ("GO", 0.0, 1.0)
    # n' = 2002, b' = c' = 0.5, se = sqrt(1) / 2002; upper end 1.96 / 2002 = 0.00098 <= 0.01
    assert d.ci_high == pytest.approx(Z95 / 2002, abs=1e-12)
    assert d.mde == pytest.approx((Z95 + Z80) / 2002, abs=1e-12)  # 0.0014


def test_no_loss_on_few_items_is_inconclusive_and_names_the_mde():
    base, variant = _table(15, 0, 0, 5)  # 20 identical items
    [d] = decide([_gate_input(base, variant, max_loss=0.01)], alpha=0.05)
    assert d.decision == "INCONCLUSIVE"
    # n' = 22, se = sqrt(1) / 22: upper end 1.96 / 22 = 0.0891 > 0.01
    assert d.ci_high == pytest.approx(Z95 / 22, abs=1e-12)
    # MDE = (1.960 + 0.842) / 22 = 0.127, far above max_loss 0.01
    assert d.mde == pytest.approx((Z95 + Z80) / 22, abs=1e-12)
    assert d.mde > d.max_loss
    assert f"{d.mde:.3g}" == "0.127" and "0.127" in d.reason and "20 items" in d.reason


def test_a_significant_loss_below_max_loss_is_not_no_go():
    # 10000 items, 100 lost, 20 gained: loss 80 / 10000 = 0.008, significant, below 0.02
    [d] = decide([_binary_input(10000, 100, 20, max_loss=0.02)], alpha=0.05)
    assert d.p_value < 1e-10 and d.loss == pytest.approx(0.008, abs=1e-12)
    # d' = -80/10002, se = sqrt(121 - 80^2/10002) / 10002 = 0.001097;
    # upper end of the loss: 80/10002 + 1.96 * 0.001097 = 0.01015 <= 0.02 -> GO
    se = math.sqrt(121 - 80**2 / 10002) / 10002
    assert d.ci_high == pytest.approx(80 / 10002 + Z95 * se, abs=1e-12)
    assert d.decision == "GO"
    # 1000 items, 30 lost, 5 gained: loss 0.025 below max_loss 0.03, but the interval
    # reaches 25/1002 + 1.96 * sqrt(36 - 25^2/1002) / 1002 = 0.0366 > 0.03
    [d] = decide([_binary_input(1000, 30, 5, max_loss=0.03)], alpha=0.05)
    assert d.p_value < 0.05 and d.loss == pytest.approx(0.025, abs=1e-12)
    assert d.ci_high == pytest.approx(25 / 1002 + Z95 * math.sqrt(36 - 25**2 / 1002) / 1002,
                                      abs=1e-12)
    assert d.decision == "INCONCLUSIVE"


def test_orientation_when_lower_is_better():
    # unsafe 0/1 scores (lower is better), 200 prompts: 2 went unsafe -> safe (lost, good),
    # 20 went safe -> unsafe (gained, bad); delta = (20 - 2) / 200 = +0.09 = the loss
    worse = _binary_input(200, 2, 20, higher_is_better=False, max_loss=0.01)
    # the same counts read as accuracy: 20 items gained is an improvement
    better = replace(worse, higher_is_better=True, variant="w")
    d_worse, d_better = decide([worse, better], alpha=0.05)
    # bad = 20 of 22: P(X > 20) + P(X = 20) / 2 = (C(22,21) + C(22,22) + C(22,20) / 2) / 2^22
    #             = (22 + 1 + 231 / 2) / 4194304 = 138.5 / 4194304
    assert d_worse.p_value == pytest.approx(138.5 / 2**22, abs=1e-15)
    assert d_worse.loss == pytest.approx(0.09, abs=1e-12)
    # interval of delta, not flipped: d' = 18/202, se = sqrt(23 - 18^2/202) / 202
    se = math.sqrt(23 - 18**2 / 202) / 202
    assert d_worse.ci_low == pytest.approx(18 / 202 - Z95 * se, abs=1e-12)
    assert d_worse.ci_high == pytest.approx(18 / 202 + Z95 * se, abs=1e-12)
    assert d_worse.decision == "NO-GO"
    # read as accuracy: bad = 2 of 22: 1 - P(X <= 2) + P(X = 2) / 2
    # = 1 - (1 + 22 + 231) / 2^22 + (231 / 2) / 2^22, close to 1
    assert d_better.p_value == pytest.approx(1 - (1 + 22 + 231) / 2**22 + 115.5 / 2**22,
                                             abs=1e-12)
    assert d_better.loss == pytest.approx(-0.09, abs=1e-12)
    assert d_better.ci_low == pytest.approx(-(18 / 202 + Z95 * se), abs=1e-12)  # flipped
    assert d_better.ci_high == pytest.approx(-(18 / 202 - Z95 * se), abs=1e-12)
    assert d_better.decision == "GO"
    # Holm over the family of two: min(1, 2 * 138.5 / 2^22)
    assert d_worse.p_holm == pytest.approx(2 * 138.5 / 2**22, abs=1e-15)


def test_holm_makes_a_borderline_loss_inconclusive_in_a_larger_family():
    # 100 items, 9 lost, 2 gained: loss 0.07 above max_loss 0.01
    # one-sided mid-p, bad = 9 of 11: (C(11,10) + C(11,11) + C(11,9) / 2) / 2^11
    #                               = (11 + 1 + 27.5) / 2048 = 39.5 / 2048 = 0.0193
    borderline = _binary_input(100, 9, 2, max_loss=0.01)
    [alone] = decide([borderline], alpha=0.05)
    assert alone.p_value == pytest.approx(39.5 / 2048, abs=1e-12)
    assert alone.decision == "NO-GO"
    # the same pair among two unchanged ones: Holm multiplies the smallest p by m = 3
    # 3 * 0.0193 = 0.0579 >= 0.05 -> not significant any more
    quiet = [_binary_input(100, 0, 0, variant=f"q{i}") for i in range(2)]
    first, *_ = decide([borderline, *quiet], alpha=0.05)
    assert first.p_holm == pytest.approx(3 * 39.5 / 2048, abs=1e-12)
    assert first.decision == "INCONCLUSIVE" and "interval of the loss reaches" in first.reason


def test_paired_t_gate_by_hand():
    # mean NLL per token (lower is better): 25 items, sd of differences 0.5, se = 0.5 / 5 = 0.1
    # delta chosen so that t = q = t[0.975, 24]: the one-sided p is then exactly 0.025 and
    # the lower end of the 95% interval exactly 0
    q = t_dist.ppf(0.975, 24)  # 2.0639
    nll = GateInput("v", "ppl", "perplexity", False, "paired-t", 25, q * 0.1, 0.5, None, None,
                    0.1)
    [d] = decide([nll], alpha=0.05)
    assert d.loss == pytest.approx(q * 0.1, abs=1e-12)  # 0.2064 nats per token
    assert d.p_value == pytest.approx(0.025, abs=1e-12)
    assert d.ci_low == pytest.approx(0.0, abs=1e-12)
    assert d.ci_high == pytest.approx(2 * q * 0.1, abs=1e-12)
    assert d.mde == pytest.approx((Z95 + Z80) * 0.1, abs=1e-12)  # 0.280
    assert d.decision == "NO-GO"  # p 0.025 < 0.05 and loss 0.206 > 0.1
    # read with higher is better, the same delta is a gain: p = 1 - 0.025
    [gain] = decide([replace(nll, higher_is_better=True)], alpha=0.05)
    assert gain.loss == pytest.approx(-q * 0.1, abs=1e-12)
    assert gain.p_value == pytest.approx(0.975, abs=1e-12)
    assert gain.ci_high == pytest.approx(0.0, abs=1e-12) and gain.decision == "GO"


def test_paired_t_gate_edge_cases():
    flat = GateInput("v", "ppl", "perplexity", False, "paired-t", 5, 0.0, 0.0, None, None, 0.01)
    shifted = replace(flat, variant="w", delta=0.05)
    single = replace(flat, variant="x", n=1, delta=0.3)
    d_flat, d_shifted, d_single = decide([flat, shifted, single], alpha=0.05)
    assert (d_flat.p_value, d_flat.ci_low, d_flat.ci_high, d_flat.decision) == (
        1.0, 0.0, 0.0, "GO")
    assert (d_shifted.p_value, d_shifted.ci_low, d_shifted.ci_high, d_shifted.decision) == (
        0.0, 0.05, 0.05, "NO-GO")
    assert (d_single.p_value, d_single.decision, d_single.reason) == (
        1.0, "INCONCLUSIVE", "fewer than 2 items")
    with pytest.raises(ValueError):
        decide([flat], alpha=1.5)
    with pytest.raises(ValueError):
        decide([replace(flat, test="bootstrap")], alpha=0.05)


def test_variant_decisions():
    template = GateDecision("v", "e", "acc", "mcnemar-midp", 10, 0.0, 0.0, 0.0, 1.0, 1.0, 0.01,
                            0.1, "GO", "")
    decisions = [replace(template, variant=v, evaluator=e, decision=x) for v, e, x in [
        ("all-go", "a", "GO"), ("all-go", "b", "GO"),
        ("one-no-go", "a", "GO"), ("one-no-go", "b", "NO-GO"),
        ("unsure", "a", "GO"), ("unsure", "b", "INCONCLUSIVE"),
        ("mixed", "a", "INCONCLUSIVE"), ("mixed", "b", "NO-GO"),
    ]]
    assert variant_decisions(decisions) == {
        "all-go": "GO", "one-no-go": "NO-GO", "unsure": "INCONCLUSIVE", "mixed": "NO-GO"}


# --- Welch --------------------------------------------------------------------------------

def test_welch_by_hand():
    a = [0.61, 0.63, 0.62]
    b = [0.58, 0.60, 0.65, 0.57]
    mean_a = (0.61 + 0.63 + 0.62) / 3  # 0.62
    mean_b = (0.58 + 0.60 + 0.65 + 0.57) / 4  # 0.60
    var_a = ((0.61 - mean_a) ** 2 + (0.63 - mean_a) ** 2 + (0.62 - mean_a) ** 2) / 2  # 1e-4
    var_b = sum((x - mean_b) ** 2 for x in b) / 3  # (4 + 0 + 25 + 9) e-4 / 3 = 12.67e-4
    se2_a, se2_b = var_a / 3, var_b / 4
    t = (mean_a - mean_b) / math.sqrt(se2_a + se2_b)  # 0.02 / 0.01838 = 1.088
    df = (se2_a + se2_b) ** 2 / (se2_a**2 / 2 + se2_b**2 / 3)  # Welch-Satterthwaite, 3.45
    result = welch(a, b)
    assert result is not None
    assert (result.n_a, result.n_b) == (3, 4)
    assert result.mean_a == pytest.approx(0.62, abs=1e-12)
    assert result.mean_b == pytest.approx(0.60, abs=1e-12)
    assert result.sd_a == pytest.approx(0.01, abs=1e-12)
    assert result.sd_b == pytest.approx(math.sqrt(38e-4 / 3), abs=1e-12)
    assert result.diff == pytest.approx(0.02, abs=1e-12)
    assert result.t == pytest.approx(t, abs=1e-9)
    assert result.df == pytest.approx(df, abs=1e-9)
    assert result.p_value == pytest.approx(2 * t_dist.sf(abs(t), df), abs=1e-9)
    assert result.p_value > 0.05  # 3 and 4 seeds: a 0.02 difference is within the noise


def test_welch_edge_cases():
    assert welch([0.5], [0.4, 0.6]) is None
    assert welch([0.5, 0.6], []) is None
    # neither side varies: no seed noise to compare with, so nothing to test
    assert welch([0.1, 0.1, 0.1], [0.1, 0.1]) is None
    assert welch([0.2, 0.2], [0.1, 0.1, 0.1]) is None
    # one side constant: the formula reduces to the other side's n - 1 = 2
    one = welch([0.2, 0.2, 0.2], [0.1, 0.2, 0.3])
    assert one is not None and one.df == pytest.approx(2.0, abs=1e-12)
