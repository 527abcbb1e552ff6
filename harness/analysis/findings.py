"""The analyses after a run, over the store: each variant cell's paired test against its
base cell (and its parent's), the seed-level comparison of recipes, the gate, and
contamination findings. Each reads what is new and writes typed rows; a
re-run with nothing new writes nothing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.analysis.contamination import NgramIndex, data_side, outliers, read_tuning_texts
from harness.analysis.items import Item, item_text
from harness.analysis.gate import GateInput, decide, variant_decisions, welch
from harness.analysis.stats import paired_test
from harness.keys import content_hash
from harness.records import CellPlan, VariantPlan
from harness.store import ContaminationRow, GateRow, PairedTestRow, RecipeTestRow, Store
from harness.suite_file import ContaminationSection, GateSection


def record_paired_tests(store: Store) -> int:
    """Test every finished variant cell against its base cell and, for a variant trained
    on another, against its parent's cell (same model and evaluator configuration), where
    no test exists yet; returns how many were added."""
    if not store.path.exists():
        return 0
    with store.read() as con:
        pairs = con.execute("""
            SELECT DISTINCT variant_cell_key, other FROM (
                SELECT variant_cell_key, base_cell_key AS other FROM base_pairs
                UNION ALL
                SELECT variant_cell_key, parent_cell_key FROM parent_pairs) b
            WHERE NOT EXISTS (
                SELECT 1 FROM paired_tests p WHERE p.variant_cell_key = b.variant_cell_key
                  AND p.base_cell_key = b.other)
        """).fetchall()
        rows = []
        for variant_cell, base_cell in pairs:
            scores = con.execute("""
                -- the scores alone: sample_rows, not the samples view's join with texts
                SELECT b.score, v.score FROM sample_rows b JOIN sample_rows v
                  ON v.item_index = b.item_index AND v.cell_key = ?
                WHERE b.cell_key = ? AND b.score IS NOT NULL AND v.score IS NOT NULL
                  AND isfinite(b.score) AND isfinite(v.score)
                ORDER BY b.item_index""", [variant_cell, base_cell]).fetchall()
            if not scores:
                continue
            r = paired_test([s[0] for s in scores], [s[1] for s in scores])
            rows.append(PairedTestRow(variant_cell, base_cell, r.test, r.n, r.delta, r.ci_low,
                                      r.ci_high, r.p_value, r.sd, r.lost, r.gained))
    store.write_paired_tests(rows)
    return len(rows)


def record_recipe_tests(store: Store, suite: str,
                        variants: Sequence[VariantPlan]) -> list[RecipeTestRow]:
    """Welch's t-test between every two recipes with two seeds or more on the same base
    and evaluator, over the suite's current ``variants``; the suite's rows are remade whole
    (scores may have been re-run)."""
    if not store.path.exists():
        return []
    keys = [v.key for v in variants if v.recipe_key is not None]
    with store.read() as con:
        groups = con.execute("""
            SELECT s.model, s.evaluator, s.metric, v.recipe_key, list(s.value ORDER BY s.variant)
            FROM latest_scores s JOIN variants v ON v.variant_key = s.variant_key
            WHERE s.suite = ? AND v.variant_key IN (SELECT unnest(?))
            GROUP BY ALL ORDER BY ALL""", [suite, keys]).fetchall()
    by_evaluator: dict[tuple[str, str, str], list[tuple[str, list[float]]]] = {}
    for model, evaluator, metric, recipe, scores in groups:
        if len(scores) >= 2:
            by_evaluator.setdefault((model, evaluator, metric), []).append((recipe, scores))
    rows = []
    for (model, evaluator, metric), recipes in by_evaluator.items():
        for (a, scores_a), (b, scores_b) in itertools.combinations(recipes, 2):
            w = welch(scores_a, scores_b)
            if w is not None:
                rows.append(RecipeTestRow(suite, model, evaluator, metric, a, b, w.n_a, w.n_b,
                                          w.mean_a, w.mean_b, w.sd_a, w.sd_b, w.diff, w.t,
                                          w.df, w.p_value))
    store.replace_suite_rows(RecipeTestRow, suite, rows)
    return rows


def gate_decisions(con: Any, suite: str, gate: GateSection,
                   cells: Sequence[CellPlan]) -> list[GateRow]:
    """The gate over a store (read through ``con``) for a plan's ``cells``: every tuned
    variant the suite makes now, on every general and safety evaluator (or those
    ``gate.evaluators`` names), judged on the paired test of its current cell against the
    base's current cell on the same evaluator; Holm's family is all of them. A pair not
    scored (the cell failed, or has not run) is INCONCLUSIVE, and so is a variant with no
    evaluator to judge it on (one row without an evaluator)."""
    wanted = set(gate.evaluators) if gate.evaluators else None
    base = {(c.model.name, c.evaluator.name): c.key for c in cells if c.variant.is_base}
    judged = [c for c in cells if not c.variant.is_base
              and c.evaluator.role in ("general", "safety")
              and (wanted is None or c.evaluator.name in wanted)]
    keys = [c.key for c in judged]
    tests = {(r[0], r[1]): r[2:] for r in con.execute("""
        SELECT variant_cell_key, base_cell_key, test, n, delta, coalesce(sd, 0), lost, gained
        FROM paired_tests WHERE variant_cell_key IN (SELECT unnest(?))""", [keys]).fetchall()}
    primary = {r[0]: r[1:] for r in con.execute("""
        SELECT c.cell_key, m.metric, m.higher_is_better,
               coalesce(json_extract_string(c.info, '$.item_score'), m.metric)
        FROM cells c JOIN metrics m USING (cell_key)
        WHERE m.is_primary AND c.status = 'done' AND c.cell_key IN (SELECT unnest(?))""",
                                               [keys]).fetchall()}
    inputs, named, rows = [], [], []
    for cell in judged:
        head = (suite, cell.model.name, cell.variant.name, cell.variant.key, cell.evaluator.name)
        test = tests.get((cell.key, base.get((cell.model.name, cell.evaluator.name))))
        if test is None or cell.key not in primary:
            rows.append(GateRow(*head, None, None, None, 0, None, None, None, None, None, None,
                                gate.alpha, None, "INCONCLUSIVE",
                                "not scored: the cell or the base's failed, or has not run"))
            continue
        metric, higher, unit = primary[cell.key]
        limit = (gate.max_loss.get(cell.evaluator.name, GateSection().max_loss)
                 if isinstance(gate.max_loss, dict) else gate.max_loss)
        inputs.append(GateInput(cell.variant.key, cell.evaluator.name, metric, bool(higher),
                                *test, float(limit)))
        named.append((head, unit))
    rows += [GateRow(*head[:4], d.evaluator, d.metric, unit, d.test, d.n, d.loss, d.ci_low,
                     d.ci_high, d.p_value, d.p_holm, d.max_loss, gate.alpha, d.mde, d.decision,
                     d.reason)
             for (head, unit), d in zip(named, decide(inputs, gate.alpha))]
    seen = {(r.model, r.variant_key) for r in rows}
    tuned = {(c.model.name, c.variant.key): c.variant for c in cells if not c.variant.is_base}
    for variant in tuned.values():
        if (variant.model.name, variant.key) not in seen:
            rows.append(GateRow(suite, variant.model.name, variant.name, variant.key, None, None,
                                None, None, 0, None, None, None, None, None, None, gate.alpha,
                                None, "INCONCLUSIVE", "no general or safety evaluator to "
                                                      "judge it on"))
    order = {c.variant.key: i for i, c in enumerate(cells)}
    return sorted(rows, key=lambda r: (order[r.variant_key], r.evaluator or ""))


def gate_verdicts(rows: list[GateRow]) -> dict[tuple[str, str], tuple[str, str]]:
    """Each variant's decision, ``(model, variant) -> (decision, reason)``, by the gate's
    one rule (:func:`harness.analysis.gate.variant_decisions`), with a reason naming the
    evaluators that decided it."""
    verdicts = {}
    for key, decision in variant_decisions(rows, key=lambda r: (r.model, r.variant)).items():
        own = [r for r in rows if (r.model, r.variant) == key]
        named = ", ".join(r.evaluator for r in own if r.decision == decision and r.evaluator)
        if decision == "NO-GO":
            reason = f"significant loss above max_loss on {named}"
        elif decision == "GO":
            reason = "no loss above max_loss on any evaluator"
        elif not named:  # nothing to judge it on: the row says why
            reason = own[0].reason
        else:
            reason = f"not shown to be within max_loss on {named}"
        verdicts[key] = (decision, reason)
    return verdicts


def read_gate(con: Any, suite: str) -> list[GateRow]:
    """The gate the last run of ``suite`` recorded."""
    from harness.store.rows import columns

    return [GateRow(*r) for r in con.execute(
        f"SELECT {', '.join(columns(GateRow))} FROM gate_decisions WHERE suite = ? "
        "ORDER BY model, variant, evaluator NULLS FIRST", [suite]).fetchall()]


def record_gate(store: Store, suite: str, gate: GateSection,
                cells: Sequence[CellPlan]) -> list[GateRow]:
    """The gate's decisions with the suite's ``[gate]`` settings on the plan's ``cells``,
    kept in ``gate_decisions`` (the suite's earlier decisions replaced)."""
    if not store.path.exists():
        return []
    with store.read() as con:
        rows = gate_decisions(con, suite, gate, cells)
    store.replace_suite_rows(GateRow, suite, rows)
    return rows


def record_contamination(store: Store, suite: str, settings: ContaminationSection,
                         variants: Sequence[VariantPlan]) -> int:
    """Check every tuned variant of ``suite`` against every evaluator's items, data side and
    model side, for pairs not analysed yet with these settings. Returns the rows added.

    ``variants`` are the plan's variants (their keys, tuning data files and data hashes).
    """
    tuned = {v.key: v for v in variants if not v.is_base}
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
            # a variant trained on another has seen its ancestors' tuning data too, and a
            # transformed one its sources'
            chain = _tuned_chain(plan)
            files = [v.tuner.data for v in chain]
            dataset = " + ".join(files)
            data_hash = chain[0].data_hash if len(chain) == 1 else content_hash(
                [v.data_hash for v in chain])
            head = [suite, model, variant, variant_key, evaluator, evaluator_key]
            # what the findings depend on; variants tuned on the same files share them
            inputs = [data_hash, base_cell, settings.ngram, settings.min_overlap]
            data_key = content_hash(["data", variant_key, *inputs])
            if data_key not in done and all(Path(f).is_file() for f in files):
                shared = content_hash(inputs)
                if shared not in findings:
                    if data_hash not in indexes:
                        indexes[data_hash] = NgramIndex(
                            [row for f in files for row in read_tuning_texts(Path(f))])
                    items = [Item(index, item_id,
                                  item_text(prompt, target, json.loads(extra or "{}"), query))
                             for index, item_id, prompt, target, extra, query in con.execute(
                                 "SELECT item_index, item_id, prompt, target, extra, query "
                                 "FROM samples WHERE cell_key = ? ORDER BY item_index",
                                 [base_cell]).fetchall()]
                    findings[shared] = data_side(items, indexes[data_hash], settings.ngram,
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
                    FROM sample_rows v JOIN sample_rows b
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


def _tuned_chain(variant: VariantPlan) -> list[VariantPlan]:
    """The tuning runs whose data went into ``variant``, ancestors first: its own and its
    parents' (a checkpoint's are its tuning run's), or its sources' for a transform."""
    chain: list[VariantPlan] = []

    def visit(node: VariantPlan | None) -> None:
        if node is None or node.is_base or any(v.key == node.key for v in chain):
            return
        visit(node.parent)
        for source in node.sources:
            visit(source)
        if node.origin == "tuned" and all(v.key != node.key for v in chain):
            chain.append(node)

    visit(variant)
    return chain
