"""The analyses after a run, over the store: each variant cell's paired test against its
base cell, and contamination findings. Each reads what is new and writes typed rows; a
re-run with nothing new writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.analysis.contamination import NgramIndex, data_side, outliers, read_tuning_texts
from harness.analysis.items import Item, item_text
from harness.analysis.stats import paired_test
from harness.keys import content_hash
from harness.records import VariantPlan
from harness.store import ContaminationRow, PairedTestRow, Store
from harness.suite_file import ContaminationSection


def record_paired_tests(store: Store, seed: int = 0) -> int:
    """Test every finished variant cell against its base cell (same model and evaluator
    configuration) that has no test yet; returns how many were added."""
    if not store.path.exists():
        return 0
    with store.read() as con:
        pairs = con.execute("""
            SELECT DISTINCT variant_cell_key, base_cell_key FROM base_pairs b
            WHERE NOT EXISTS (
                SELECT 1 FROM paired_tests p WHERE p.variant_cell_key = b.variant_cell_key
                  AND p.base_cell_key = b.base_cell_key)
        """).fetchall()
        rows = []
        for variant_cell, base_cell in pairs:
            scores = con.execute("""
                SELECT b.score, v.score FROM samples b JOIN samples v
                  ON v.item_index = b.item_index AND v.cell_key = ?
                WHERE b.cell_key = ? AND b.score IS NOT NULL AND v.score IS NOT NULL
                  AND isfinite(b.score) AND isfinite(v.score)
                ORDER BY b.item_index""", [variant_cell, base_cell]).fetchall()
            if not scores:
                continue
            result = paired_test([s[0] for s in scores], [s[1] for s in scores], seed=seed)
            rows.append(PairedTestRow(variant_cell, base_cell, result.test, result.n,
                                      result.delta, result.ci_low, result.ci_high,
                                      result.p_value))
    store.write_paired_tests(rows)
    return len(rows)


def record_contamination(store: Store, suite: str, settings: ContaminationSection,
                         variants: Sequence[VariantPlan]) -> int:
    """Check every tuned variant of ``suite`` against every evaluator's items, data side and
    model side, for pairs not analysed yet with these settings. Returns the rows added.

    ``variants`` are the plan's variants (their keys, tuning data files and data hashes).
    """
    tuned = {v.key: v for v in variants if v.tuner is not None}
    if not tuned or not store.path.exists():
        return 0
    # the methods a new finding replaces, as LIKE patterns: the data side's under any n
    data_methods, model_methods = ("exact", "ngram-%"), ("min-k", "min-k++")
    rows: list[ContaminationRow] = []
    replaced: list[tuple[str, str, tuple[str, ...]]] = []
    indexes: dict[str, NgramIndex] = {}
    findings: dict[str, list[dict[str, Any]]] = {}
    with store.read() as con:
        if "contamination" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}:
            return 0
        done = {r[0] for r in con.execute("SELECT DISTINCT analysis_key FROM contamination")
                .fetchall()}
        pairs = con.execute("""
            SELECT model, variant, variant_key, evaluator, evaluator_key, variant_cell_key,
                   base_cell_key
            FROM base_pairs WHERE suite = ?""", [suite]).fetchall()
        for model, variant, variant_key, evaluator, evaluator_key, cell, base_cell in pairs:
            plan = tuned.get(variant_key)
            if plan is None:
                continue
            dataset = plan.tuner.data
            head = [suite, model, variant, variant_key, evaluator, evaluator_key]
            # what the findings depend on; variants tuned on the same file share them
            inputs = [plan.data_hash, base_cell, settings.ngram, settings.min_overlap]
            data_key = content_hash(["data", variant_key, *inputs])
            if data_key not in done and Path(dataset).is_file():
                shared = content_hash(inputs)
                if shared not in findings:
                    if plan.data_hash not in indexes:
                        indexes[plan.data_hash] = NgramIndex(read_tuning_texts(Path(dataset)))
                    items = [Item(index, item_id,
                                  item_text(prompt, target, json.loads(extra or "{}")))
                             for index, item_id, prompt, target, extra in con.execute(
                                 "SELECT item_index, item_id, prompt, target, extra FROM samples "
                                 "WHERE cell_key = ? ORDER BY item_index", [base_cell]).fetchall()]
                    findings[shared] = data_side(items, indexes[plan.data_hash], settings.ngram,
                                                 settings.min_overlap)
                for finding in findings[shared]:
                    item = finding["item"]
                    rows.append(ContaminationRow(
                        data_key, *head, item.index, item.item_id, dataset, finding["method"],
                        finding["score"], finding["flagged"], json.dumps(finding["detail"])))
                replaced.append((variant_key, evaluator_key, data_methods))
            model_key = content_hash(["membership", cell, base_cell, settings.z])
            if settings.membership and model_key not in done:
                scored = con.execute("""
                    SELECT v.item_index, v.item_id, b.min_k, v.min_k, b.min_k_plus, v.min_k_plus
                    FROM samples v JOIN samples b
                      ON b.cell_key = ? AND b.item_index = v.item_index
                    WHERE v.cell_key = ? AND v.min_k_plus IS NOT NULL
                      AND b.min_k_plus IS NOT NULL
                    ORDER BY v.item_index""", [base_cell, cell]).fetchall()
                if not scored:
                    continue
                for method, base_col, variant_col in (("min-k", 2, 3), ("min-k++", 4, 5)):
                    deltas = [r[variant_col] - r[base_col] for r in scored]
                    for r, delta, flagged in zip(scored, deltas, outliers(deltas, settings.z)):
                        rows.append(ContaminationRow(
                            model_key, *head, r[0], r[1], dataset, method, delta, flagged,
                            json.dumps({"base": r[base_col], "variant": r[variant_col]})))
                replaced.append((variant_key, evaluator_key, model_methods))
    if rows:
        store.write_contamination(replaced, rows)
    return len(rows)
