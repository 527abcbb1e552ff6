"""Paired tests for the forgetting views: mid-p McNemar on right/wrong items, a paired
t-test on continuous scores, checked by hand and on a suite's store (the gate's own
statistics: tests/test_gate_stats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.analysis.stats import paired_test

from .conftest import small_suite


def test_mcnemar_on_right_wrong_items_by_hand():
    # 20 items: both right on 10, base-only right on 6 (lost), variant-only right on 1 (gained)
    base = [1] * 10 + [1] * 6 + [0] * 1 + [0] * 3
    variant = [1] * 10 + [0] * 6 + [1] * 1 + [0] * 3
    result = paired_test(base, variant)
    assert result.test == "mcnemar-midp" and result.n == 20
    assert (result.lost, result.gained) == (6, 1)
    assert result.delta == pytest.approx(-5 / 20)
    # mid-p: 2 * (P(X <= 1) - P(X = 1) / 2) for X ~ Binomial(7, 1/2) = 2 * (1 + 7 / 2) / 128
    assert result.p_value == pytest.approx(2 * (1 + 7 / 2) / 128)
    assert result.ci_low <= result.delta <= result.ci_high < 0.05


def test_identical_scores_have_nothing_to_test():
    result = paired_test([0, 1, 1], [0, 1, 1])
    assert (result.test, result.delta, result.p_value) == ("mcnemar-midp", 0.0, 1.0)


def test_paired_t_on_continuous_scores():
    rng = np.random.default_rng(1)
    base = rng.normal(2.0, 0.3, size=40)
    shifted = paired_test(base, base + 0.5 + rng.normal(0, 0.1, size=40))
    assert shifted.test == "paired-t" and shifted.lost is None
    assert shifted.ci_low < 0.5 < shifted.ci_high and shifted.p_value < 1e-6
    noise = paired_test(base, base + rng.normal(0, 0.3, size=40))
    assert noise.p_value > 0.05 and noise.ci_low < 0 < noise.ci_high


def test_forgetting_carries_the_paired_tests_after_a_run(run_harness, tmp_path):
    suite = small_suite(tmp_path)
    run = run_harness(suite.read_text(), entry_points=False)
    rows = run.query("SELECT evaluator, paired_test, n, item_delta, ci_low, ci_high, p_value "
                     "FROM forgetting ORDER BY evaluator")
    assert [(r[0], r[1], r[2]) for r in rows] == [("mc", "mcnemar-midp", 6), ("text", "paired-t", 3)]
    for _, _, _, delta, low, high, p in rows:
        assert low <= delta <= high and 0 < p <= 1
    # the per-item scores the test used are the stored samples
    [(base_mean, variant_mean)] = run.query("""
        SELECT avg(s.score) FILTER (WHERE c.variant_name = 'base'),
               avg(s.score) FILTER (WHERE c.variant_name <> 'base')
        FROM samples s JOIN cells c USING (cell_key) WHERE c.evaluator = 'text'""")
    assert rows[1][3] == pytest.approx(variant_mean - base_mean)
