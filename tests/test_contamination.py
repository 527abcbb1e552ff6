"""Contamination: the n-gram index against planted items and lm-eval's own n-grams,
Min-K% and Min-K%++ by hand, and the findings a run stores."""

from __future__ import annotations

import random

import duckdb
import pytest
import torch

from harness.analysis.contamination import (
    NgramIndex,
    data_side,
    membership_scores,
    min_k,
    normalise,
    outliers,
    read_tuning_texts,
)
from harness.analysis.items import Item, item_text
from tests.conftest import planted_suite, write_jsonl

WORDS = ("river stone amber quiet lantern harbour meadow copper violet engine orchard "
         "compass thunder velvet island garden mirror candle falcon winter summer "
         "marble silver bridge tower forest valley desert ocean canyon glacier").split()


def _sentence(rng: random.Random, length: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + "."


@pytest.fixture(scope="module")
def planted():
    """250 items of 20-40 words; 12 of them planted in 1,500 tuning rows, changed in case
    and punctuation and surrounded by other text; 3 more planted whole as rows."""
    rng = random.Random(7)
    items = [Item(i, f"q{i}", _sentence(rng, rng.randint(20, 40))) for i in range(250)]
    inside, whole = list(range(0, 240, 20)), [241, 245, 249]
    rows = [{"prompt": f"Row {n}?", "completion": _sentence(rng, rng.randint(30, 80))}
            for n in range(1500)]
    for slot, index in enumerate(inside):
        text = items[index].text.upper().replace(" ", ", ", 3)
        rows[slot * 100]["completion"] += f" {text} {_sentence(rng, 10)}"
    for index in whole:
        rows.append({"messages": [{"role": "user", "content": items[index].text.lower()},
                                  {"role": "assistant", "content": "Yes."}]})
    return items, rows, set(inside) | set(whole), set(whole)


def test_planted_items_are_all_found_and_no_clean_item_is_flagged(planted, tmp_path):
    items, rows, leaked, copied = planted
    path = write_jsonl(tmp_path / "tune.jsonl", rows)
    findings = data_side(items, NgramIndex(read_tuning_texts(path)), 13, 0.0)
    by_method = {}
    for finding in findings:
        by_method.setdefault(finding["method"], {})[finding["item"].index] = finding
    assert set(by_method) == {"exact", "ngram-13"}
    ngram = by_method["ngram-13"]
    assert {i for i, f in ngram.items() if f["flagged"]} == leaked
    assert all(ngram[i]["score"] == 1.0 for i in leaked)  # every n-gram of a planted item
    assert all(ngram[i]["score"] == 0.0 for i in range(250) if i not in leaked)
    assert {i for i, f in by_method["exact"].items() if f["flagged"]} == copied


def _reference_overlap(item: str, rows: list[list[str]], n: int) -> tuple[int, int]:
    """The same count with lm-eval's own normalisation and n-grams, by brute force."""
    from lm_eval.decontamination.janitor import Janitor, word_ngrams

    janitor = Janitor()
    data = set()
    for fields in rows:
        for text in fields:
            data.update(word_ngrams(janitor.normalize_string(text), n))
    grams = list(word_ngrams(janitor.normalize_string(item), n))
    return sum(g in data for g in grams), len(grams)


@pytest.mark.parametrize("n", [3, 5, 13])
def test_overlap_counts_match_lm_eval_janitor(planted, n):
    items, rows, _, _ = planted
    texts = [[r["prompt"], r["completion"]] if "prompt" in r else
             [m["content"] for m in r["messages"]] for r in rows[:300] + rows[-3:]]
    index = NgramIndex(texts)
    for item in items[::25] + [items[241]]:
        assert index.overlap(normalise(item.text), n) == _reference_overlap(item.text, texts, n)


def test_normalisation_is_lm_eval_janitors():
    from lm_eval.decontamination.janitor import Janitor

    text = "It's   the Capital, of VELORIA?! (Quennet)\n- yes; 3.5%"
    assert normalise(text) == Janitor().normalize_string(text).split()


def test_short_items_count_as_one_ngram_and_do_not_cross_rows():
    index = NgramIndex([["What is the capital of Veloria?", "Quennet."],
                        ["The river", "runs to the sea"]])
    assert index.overlap(normalise("what is the capital of veloria"), 13) == (1, 1)
    assert index.overlap(normalise("capital of Veloria Quennet"), 13) == (0, 1)  # two fields
    assert index.overlap(normalise("the river runs"), 13) == (0, 1)
    assert index.overlap(normalise("the capital of Veloria is Quennet"), 3) == (2, 4)


def test_item_text_prefers_the_decontamination_query():
    assert item_text("Question: Q?\nAnswer:", "A", {"decontamination_query": "Q?"}) == "Q?"
    assert item_text("Question: Q?\nAnswer:", "A", {}) == "Question: Q?\nAnswer: A"
    assert item_text(None, "Some text.", None) == "Some text."
    # the sample's own query first; a store before schema 9 kept it in extra
    assert item_text("Question: Q?\nAnswer:", "A", {}, "Q?") == "Q?"
    assert item_text("P", "A", {"decontamination_query": "old"}, "new") == "new"
    assert item_text("P", "A", {"decontamination_query": "old"}, " ") == "old"
    assert item_text("P", "A", None, "") == "P A"


def test_min_k_and_min_k_plus_by_hand():
    values = [-1.0, -5.0, -2.0, -0.5, -3.0]
    assert min_k(values, 0.4) == pytest.approx(-4.0)  # the two lowest: -5 and -3
    assert min_k(values, 0.1) == pytest.approx(-5.0)  # at least one token
    means, stds = [-2.0, -4.0, -2.0, -1.0, -1.0], [1.0, 2.0, 0.5, 0.5, 1.0]
    # standardised: 1.0, -0.5, 0.0, 1.0, -2.0 -> the two lowest: -2.0 and -0.5
    assert membership_scores(values, means, stds, 0.4) == pytest.approx((-4.0, -1.25))


def test_outliers_use_the_median_and_its_absolute_deviation():
    deltas = [0.1, 0.12, 0.08, 0.11, 0.09, 0.1, 2.0, -1.0]
    # median 0.1, MAD 0.015 -> robust sd 0.0222; 2.0 is far above, -1.0 is a fall
    assert outliers(deltas, 3.0) == [False] * 6 + [True, False]
    assert outliers([0.5, 0.5], 3.0) == [False, False]


def test_token_moments_match_the_full_distribution(backend):
    texts = ["The capital of Veloria is Quennet.", "Bread is made from flour."]
    moments = backend.token_moments(texts)
    scores = backend.score_texts(texts)
    for text, m, s in zip(texts, moments, scores):
        assert m.logprobs == pytest.approx(s.logprobs, abs=1e-4)
        logdist = backend.continuation_logprobs([("", text)])[0].double()
        probs = logdist.exp()
        mean = (probs * logdist).sum(-1)
        std = torch.sqrt((probs * (logdist - mean[:, None]) ** 2).sum(-1))
        assert m.means == pytest.approx(mean.tolist(), abs=1e-4)
        assert m.stds == pytest.approx(std.tolist(), abs=1e-4)


# -- a run: findings in the store ---------------------------------------------------------


def test_a_run_stores_findings_and_clean_scores(run_harness, tmp_path):
    run = run_harness(planted_suite(tmp_path).read_text())
    con = duckdb.connect(str(run.store), read_only=True)
    flagged = con.execute("SELECT evaluator, item_id, method FROM contamination "
                          "WHERE flagged AND method IN ('exact', 'ngram-13') "
                          "ORDER BY ALL").fetchall()
    assert flagged == [("mc", "mc-3", "exact"), ("mc", "mc-3", "ngram-13")]
    methods = con.execute("SELECT evaluator, method, items FROM contamination_summary "
                          "ORDER BY ALL").fetchall()
    assert methods == [(e, m, n) for e, n in (("mc", 6), ("text", 3))
                       for m in ("exact", "min-k", "min-k++", "ngram-13")]
    # every item of every cell has membership scores, and the model side is their change
    assert con.execute("SELECT count(*) FROM samples WHERE min_k IS NULL "
                       "OR min_k_plus IS NULL").fetchone()[0] == 0
    base, variant, stored = con.execute("""
        SELECT b.min_k_plus, v.min_k_plus, c.score FROM contamination c
        JOIN cells vc ON vc.variant_key = c.variant_key AND vc.evaluator = c.evaluator
        JOIN cells bc ON bc.evaluator = c.evaluator AND bc.variant_name = 'base'
        JOIN samples v ON v.cell_key = vc.cell_key AND v.item_index = c.item_index
        JOIN samples b ON b.cell_key = bc.cell_key AND b.item_index = c.item_index
        WHERE c.method = 'min-k++' AND c.item_id = 'mc-1'""").fetchone()
    assert stored == pytest.approx(variant - base)
    clean = con.execute("SELECT evaluator, items, clean_items, item_mean, clean_item_mean "
                        "FROM clean_scores ORDER BY evaluator").fetchall()
    scores = dict(con.execute("""
        SELECT s.item_id, s.score FROM samples s JOIN cells c USING (cell_key)
        WHERE c.evaluator = 'mc' AND c.variant_name = 'lora-a'""").fetchall())
    mc = next(row for row in clean if row[0] == "mc")
    flagged_mc = {r[0] for r in con.execute(
        "SELECT DISTINCT item_id FROM contamination WHERE flagged AND evaluator = 'mc'"
    ).fetchall()}
    assert flagged_mc == {"mc-3"}
    assert mc[1:3] == (6, 5)
    assert mc[3] == pytest.approx(sum(scores.values()) / 6)
    assert mc[4] == pytest.approx(sum(v for k, v in scores.items() if k not in flagged_mc)
                                  / (6 - len(flagged_mc)))
    lf = con.execute("SELECT variant, method, general_evaluators FROM learning_forgetting"
                     ).fetchall()
    assert lf == [("lora-a", "lora", 2)]
    con.close()


def test_rerun_adds_nothing_and_new_settings_replace_old_findings(run_harness, tmp_path):
    suite = planted_suite(tmp_path)
    first = run_harness(suite.read_text())

    def rows() -> list[tuple]:
        con = duckdb.connect(str(first.store), read_only=True)
        try:
            return con.execute("SELECT method, count(*) FROM contamination GROUP BY method "
                               "ORDER BY method").fetchall()
        finally:
            con.close()

    before = rows()
    again = run_harness(suite.read_text())
    assert again.summary.done == 0 and rows() == before
    changed = run_harness(suite.read_text() + "\n[contamination]\nngram = 3\n")
    assert changed.summary.done == 0  # cells stay; only the data-side findings change
    methods = dict(rows())
    assert "ngram-13" not in methods and methods["ngram-3"] == methods["exact"] == 9


def test_a_child_is_checked_against_its_ancestors_data_too(tmp_path):
    """DPO trained on top of an SFT variant has seen the SFT data: an item leaked into the
    SFT data is flagged for the child as well, under both files."""
    from harness.runner import run_suite
    from tests.conftest import PREFERENCE_ROWS

    write_jsonl(tmp_path / "data" / "pref.jsonl", PREFERENCE_ROWS)
    suite = planted_suite(tmp_path, extra="""
[[tuners]]
name = "kid"
method = "dpo"
from = "lora-a"
data = "data/pref.jsonl"
options = { r = 4, alpha = 8, steps = 1, batch_size = 4, max_length = 64 }

[contamination]
membership = false
""")
    summary = run_suite(suite, show_progress=False)
    assert summary.failed == 0
    import duckdb

    with duckdb.connect(str(summary.store_path), read_only=True) as con:
        flagged = con.execute("""
            SELECT variant, method, item_id, dataset FROM contamination
            WHERE flagged AND evaluator = 'mc' ORDER BY variant, method""").fetchall()
    sft, pref = str(tmp_path / "data" / "sft.jsonl"), str(tmp_path / "data" / "pref.jsonl")
    assert flagged == [("kid", "exact", "mc-3", f"{sft} + {pref}"),
                       ("kid", "ngram-13", "mc-3", f"{sft} + {pref}"),
                       ("lora-a", "exact", "mc-3", sft), ("lora-a", "ngram-13", "mc-3", sft)]
