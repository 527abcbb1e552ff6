"""What a report shows, read from the store: sections of text, tables and figures.

The HTML and Markdown reporters lay out the same :class:`Report`; only the markup differs.
Every number comes from the store's views (``leaderboard``, ``lineage``, ``recipe_scores``,
``recipe_comparisons``, ``forgetting``, ``parent_forgetting``, ``gate``,
``learning_forgetting``, ``frontier``, ``training_curve``, ``contamination_summary``,
``clean_scores``) through read-only queries, so a report says exactly what ``harness sql``
would. The sections about experiments (lineage, sweep, seed variation, forgetting against
the parent, the frontier, training curves; :mod:`curves` assembles the last three) and the
gate appear only when the store holds something for them.
"""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import Field

import harness
from harness import ReportContext, UserError, __version__, item_text, read_store

from harness_plugins.reporters import curves, figures
from harness_plugins.reporters.report_model import (
    Figure,
    Node,
    Reader,
    Report,
    Section,
    Table,
    fmt,
    interval_text,
    p_text,
)

#: flagged items listed one by one in a report; the rest are counted
MAX_ITEMS_LISTED = 40


def build_report(store: Path, suite: str | None = None) -> Report:
    """Everything a report shows about one suite of ``store`` (the only one when None)."""
    with read_store(store) as con:
        names = [r[0] for r in con.execute("SELECT DISTINCT suite FROM cells ORDER BY suite")
                 .fetchall()]
        if not names:
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
            raise UserError(f"{store}: holds no runs yet (run a suite into it first)"
                            if not runs else f"{store}: holds no cells yet ({runs} run(s) "
                            "finished none)")
        if suite is None:
            if len(names) != 1:
                raise UserError(f"{store}: holds suites {', '.join(names) or '(none)'}; "
                                "name one with --name")
            suite = names[0]
        elif suite not in names:
            raise UserError(f"{store}: no suite named {suite!r} (it holds {', '.join(names)})")
        return _build(Reader(con, suite), store, suite)


def _build(reader: Reader, store: Path, suite: str) -> Report:
    models = {r["model"] for r in reader.rows("SELECT DISTINCT model FROM leaderboard "
                                                "WHERE suite = ?")}

    def label(row: dict[str, Any]) -> str:
        return row["variant"] if len(models) <= 1 else f"{row['model']}/{row['variant']}"

    runs = reader.rows("SELECT count(*) AS runs, max(finished_at) AS last "
                       "FROM runs WHERE suite = ?")[0]
    facts = [
        ("suite", suite), ("store", str(store)),
        ("runs", f"{runs['runs']} (last finished {fmt(runs['last'])})"),
        ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
         + f" by harness {__version__}"),
    ]
    recipes = _recipes(reader, len(models) > 1)
    frontier = curves.frontier(reader, label)
    sections = [
        _leaderboard(reader, label),
        _lineage(reader, len(models) > 1),
        _sweep(reader, recipes),
        _seeds(reader, recipes),
        _forgetting(reader, label),
        _parent_forgetting(reader, label),
        _gate(reader, label),
        _learning(reader, label, plotted_by_frontier=frontier is not None),
        frontier,
        curves.best_under_max_loss(reader, label),
        _training(reader, label),
        curves.training_curves(reader, label),
        _contamination(reader, label),
        _clean(reader, label),
    ]
    # the experiment's sections are None when the suite has nothing of the kind
    return Report(f"harness report: {suite}", facts, [s for s in sections if s is not None])


def _leaderboard(reader: Reader, label: Any) -> Section:
    rows = reader.rows("SELECT * FROM leaderboard WHERE suite = ?")
    section = Section("Leaderboard", "Each evaluator's primary metric for the untouched base "
                      "and every tuned variant (the newest finished cell of each).")
    if not rows:
        section.text += " No finished cells yet."
        return section
    evaluators = list(dict.fromkeys(r["evaluator"] for r in rows))
    metric = {r["evaluator"]: f"{r['metric']} ({r['role']}, {'higher' if r['higher_is_better'] else 'lower'} is better)" for r in rows}
    table: dict[str, dict[str, str]] = {}
    methods: dict[str, str] = {}
    for r in rows:
        name = label(r)
        methods[name] = r["method"]
        cell = fmt(r["value"])
        if r["stderr"] is not None:
            cell += f" ± {fmt(r['stderr'], 2)}"
        table.setdefault(name, {})[r["evaluator"]] = cell
    section.tables.append(Table(
        ["variant", "method", *evaluators],
        [[name, methods[name], *(values.get(e, "") for e in evaluators)]
         for name, values in table.items()],
        caption="; ".join(f"{e}: {metric[e]}" for e in evaluators)))
    return section


# -- experiments: the lineage of variants, sweeps and seed replicates -------------------------


def _swept(sweep: Any) -> dict[str, Any]:
    """A variant's swept option values (``variants.sweep``, JSON text) as a dict; {} if none."""
    if not sweep:
        return {}
    values = json.loads(sweep) if isinstance(sweep, str) else sweep
    return dict(values or {})


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{option} = {fmt(value)}" for option, value in values.items())


def _natural(value: Any) -> tuple[int, Any, str]:
    """A sort key that puts numbers in numeric order (2 before 16), before any text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


def _spread(mean: float | None, sd: float | None, n: int) -> str:
    """``mean ± sd (n = 3)``, the ± part only where there is a standard deviation."""
    text = fmt(mean)
    if fmt(sd):
        text += f" ± {fmt(sd, 2)}"
    return f"{text} (n = {n})"


@dataclass
class _Recipe:
    """A tuner entry with its options and parent: what seed replicates share."""

    tuner: str
    values: dict[str, Any]  # swept option -> value; {} when nothing is swept
    parent: str  # the variant it was trained on, "base" for the base model
    model: str = ""  # set only when the suite has several models

    @property
    def entry(self) -> str:
        """The tuner entry's name, with its parent when that is not the base."""
        name = self.tuner if self.parent == "base" else f"{self.tuner} on {self.parent}"
        return f"{self.model}/{name}" if self.model else name

    @property
    def label(self) -> str:
        """The entry with its swept values: ``sft (lr = 0.001, r = 8)``."""
        return f"{self.entry} ({_values_text(self.values)})" if self.values else self.entry

    def order(self, options: list[str]) -> tuple[str, list[tuple[int, Any, str]]]:
        return (self.entry, [_natural(self.values.get(option)) for option in options])


def _recipes(reader: Reader, several_models: bool) -> dict[tuple[str, str], _Recipe]:
    """Every recipe of the suite, by (model, recipe_key)."""
    rows = reader.rows("""
        SELECT model, recipe_key, any_value(tuner) AS tuner, any_value(sweep) AS sweep,
               string_agg(DISTINCT parent, ', ' ORDER BY parent) AS parent
        FROM lineage WHERE suite = ? AND recipe_key IS NOT NULL
        GROUP BY model, recipe_key""")
    return {(r["model"], r["recipe_key"]): _Recipe(r["tuner"] or "", _swept(r["sweep"]),
                                                   r["parent"] or "base",
                                                   r["model"] if several_models else "")
            for r in rows}


def _recipe(recipes: dict[tuple[str, str], _Recipe], model: str, key: str) -> _Recipe:
    # every recipe of a score is in the lineage; the fallback only keeps a report whole
    return recipes.get((model, key)) or _Recipe(str(key)[:12], {}, "base")


def _lineage(reader: Reader, several_models: bool) -> Section | None:
    rows = reader.rows("""
        SELECT l.model, l.variant, l.method, l.parent, l.depth, l.seed, l.sweep,
               l.recipe_key, l.status
        FROM lineage l JOIN variants v USING (variant_key)
        WHERE l.suite = ?
        -- the variant the leaderboard shows under this name (its newest scores), else the
        -- newest one tuned (a variant whose tuning failed has no scores)
        QUALIFY row_number() OVER (PARTITION BY l.model, l.variant
            ORDER BY l.variant_key IN (SELECT variant_key FROM latest_scores) DESC,
                     v.created_at DESC) = 1
        ORDER BY l.model, l.depth, l.variant""")
    replicates = Counter(r["recipe_key"] for r in rows if r["recipe_key"] is not None)
    if not any(r["depth"] > 1 or _swept(r["sweep"]) or replicates[r["recipe_key"]] > 1
               for r in rows):
        return None  # each variant tuned once on its base: the leaderboard says it all
    section = Section(
        "Lineage",
        "Which variant was trained on which: every tuned variant sits under the variant it "
        "started from (its tuner entry's from), with its method, seed and swept option "
        "values.")
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = [r for r in rows if r["model"] == model]
        nodes = {r["variant"]: Node(r["variant"], _lineage_detail(r)) for r in ours}
        root = Node(f"{model} (base)" if several_models else "base", "the untouched model")
        for r in ours:  # parents come first: the rows are ordered by depth
            parent = nodes.get(r["parent"]) if r["parent"] != r["variant"] else None
            (parent or root).children.append(nodes[r["variant"]])
        section.tree.append(root)
    return section


def _lineage_detail(row: dict[str, Any]) -> str:
    parts = [row["method"] or ""]
    if row["seed"] is not None:
        parts.append(f"seed {row['seed']}")
    parts.append(_values_text(_swept(row["sweep"])))
    if row["status"] != "done":
        parts.append(str(row["status"]))
    return "; ".join(part for part in parts if part)


def _sweep(reader: Reader, recipes: dict[tuple[str, str], _Recipe]) -> Section | None:
    rows = [r for r in reader.rows("SELECT * FROM recipe_scores WHERE suite = ?")
            if _swept(r["sweep"])]
    if not rows:
        return None
    section = Section(
        "Sweep",
        "One row per combination of swept option values ([tuners.sweep] in the suite), the "
        "swept options as columns; per evaluator the primary metric as mean ± standard "
        "deviation over the recipe's seeds (n: how many).")
    options = list(dict.fromkeys(option for r in rows for option in _swept(r["sweep"])))
    evaluators = list(dict.fromkeys(r["evaluator"] for r in rows))
    metric = {r["evaluator"]: f"{r['metric']} ({'higher' if r['higher_is_better'] else 'lower'}"
                              " is better)" for r in rows}
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["recipe_key"]), {})[r["evaluator"]] = _spread(
            r["mean"], r["sd"], r["n"])
    order = sorted(cells, key=lambda key: _recipe(recipes, *key).order(options))
    section.tables.append(Table(
        ["recipe", *options, *evaluators],
        [[_recipe(recipes, *key).entry,
          *(fmt(_recipe(recipes, *key).values.get(option)) for option in options),
          *(cells[key].get(e, "") for e in evaluators)] for key in order],
        caption="; ".join(f"{e}: {metric[e]}" for e in evaluators)))
    return section


def _seeds(reader: Reader, recipes: dict[tuple[str, str], _Recipe]) -> Section | None:
    rows = reader.rows("SELECT * FROM recipe_scores WHERE suite = ? AND n > 1")
    if not rows:
        return None
    section = Section(
        "Seed variation",
        "Recipes trained with several seeds (a tuner entry's seeds): each evaluator's primary "
        "metric over the seeds, as mean ± standard deviation and range. A difference "
        "between two recipes smaller than this spread may be the luck of the seed.")
    options = list(dict.fromkeys(option for recipe in recipes.values()
                                 for option in recipe.values))
    evaluators = list(dict.fromkeys(r["evaluator"] for r in rows))
    rows.sort(key=lambda r: (_recipe(recipes, r["model"], r["recipe_key"]).order(options),
                             evaluators.index(r["evaluator"])))
    section.tables.append(Table(
        ["recipe", "evaluator", "metric", "seeds", "mean ± sd", "min", "max"],
        [[_recipe(recipes, r["model"], r["recipe_key"]).label, r["evaluator"], r["metric"],
          str(r["n"]), _spread(r["mean"], r["sd"], r["n"]), fmt(r["min"]), fmt(r["max"])]
         for r in rows]))
    comparisons = reader.rows("SELECT * FROM recipe_comparisons WHERE suite = ?")
    exceeding = [c for c in comparisons if c["exceeds_seed_noise"]]
    if exceeding:
        section.tables.append(Table(
            ["evaluator", "metric", "recipe A", "recipe B", "A", "B", "difference (A − B)",
             "p"],
            [[c["evaluator"], c["metric"], _recipe(recipes, c["model"], c["recipe_a"]).label,
              _recipe(recipes, c["model"], c["recipe_b"]).label,
              _spread(c["mean_a"], c["sd_a"], c["n_a"]),
              _spread(c["mean_b"], c["sd_b"], c["n_b"]), fmt(c["diff"]), p_text(c["p_value"])]
             for c in exceeding],
            caption=f"Recipe pairs whose difference exceeds seed noise: {len(exceeding)} of "
                    f"{len(comparisons)} comparisons (Welch's t-test on the seed-level scores, "
                    "p < 0.05, not adjusted for the number of comparisons)."))
    elif comparisons:
        section.text += (f" None of the {len(comparisons)} comparisons between recipes "
                         "exceeds seed noise (Welch's t-test on the seed-level scores, "
                         "p < 0.05).")
    return section


def _forgetting(reader: Reader, label: Any) -> Section:
    rows = reader.rows("SELECT * FROM forgetting WHERE suite = ?")
    section = Section(
        "Forgetting",
        "What tuning cost on the general and safety evaluators: each variant against its own "
        "base on the same items. The colour is the change relative to the base's value (red: "
        "worse); each square reads the raw change, starred where the paired test (mid-p "
        "McNemar for right/wrong items, a paired t-test otherwise) gives p < 0.05.")
    if not rows:
        section.text += " No tuned variant has been scored on a general evaluator yet."
        return section
    variants = list(dict.fromkeys(label(r) for r in rows))
    evaluators = list(dict.fromkeys(r["evaluator"] for r in rows))
    values: list[list[float | None]] = [[None] * len(evaluators) for _ in variants]
    labels = [[""] * len(evaluators) for _ in variants]
    for r in rows:
        i, j = variants.index(label(r)), evaluators.index(r["evaluator"])
        base = abs(r["base_value"]) if r["base_value"] else None
        values[i][j] = r["forgetting"] / base if base else None
        star = "*" if r["p_value"] is not None and r["p_value"] < 0.05 else ""
        labels[i][j] = f"{r['delta']:+.3g}{star}"
    section.figures.append(Figure(
        "forgetting", "Forgetting matrix",
        figures.heat_map(variants, evaluators, values, labels,
                         "Forgetting: change against the base (* p < 0.05)",
                         "forgetting, relative to base")))
    section.tables.append(Table(
        ["variant", "evaluator", "metric", "base", "variant value", "delta", "forgetting",
         "95% interval (items)", "p", "test"],
        [[label(r), r["evaluator"], r["metric"], fmt(r["base_value"]), fmt(r["variant_value"]),
          fmt(r["delta"]), fmt(r["forgetting"]),
          "" if r["ci_low"] is None else f"[{fmt(r['ci_low'], 3)}, {fmt(r['ci_high'], 3)}]",
          p_text(r["p_value"]), r["paired_test"] or ""] for r in rows]))
    return section


def _parent_forgetting(reader: Reader, label: Any) -> Section | None:
    rows = reader.rows("SELECT * FROM parent_forgetting WHERE suite = ?")
    if not rows:
        return None
    section = Section(
        "Forgetting against the parent",
        "For variants trained on another variant (a tuner entry's from): what the last step "
        "cost, against the variant it started from instead of the base, on the same items. "
        "The loss is in the evaluator's per-item score, positive = worse than the parent, "
        "with the 95% interval of the paired test.")
    section.tables.append(Table(
        ["variant", "parent", "evaluator", "metric", "parent value", "variant value", "delta",
         "forgetting", "item score", "loss", "95% interval of the loss", "p", "test"],
        [[label(r), r["parent"], r["evaluator"], r["metric"], fmt(r["parent_value"]),
          fmt(r["variant_value"]), fmt(r["delta"]), fmt(r["forgetting"]), r["unit"] or "",
          fmt(r["loss"], 3), interval_text(r["loss_low"], r["loss_high"]), p_text(r["p_value"]),
          r["paired_test"] or ""] for r in rows]))
    return section


def _gate(reader: Reader, label: Any) -> Section | None:
    rows = reader.rows("SELECT * FROM gate WHERE suite = ?")
    if not rows:
        return None
    section = Section(
        "Gate",
        "May each variant ship? For every general and safety evaluator the gate compares the "
        "variant with its base on the same items. The loss is how much worse the variant is, "
        "in the evaluator's per-item score (positive = worse). NO-GO: the loss is "
        "significant (one-sided test, Holm-adjusted p below alpha) and above max_loss. GO: "
        "the whole interval of the loss lies within max_loss. INCONCLUSIVE: neither; the "
        "items cannot tell, and the reason names the loss they could detect.")
    verdicts: dict[str, tuple[str, list[str]]] = {}  # variant -> its decision, evaluators'
    for r in rows:
        _, each = verdicts.setdefault(label(r), (r["variant_decision"], []))
        # a variant with nothing to judge (its tuning or cells failed) has no evaluator
        each.append(f"{r['evaluator']}: {r['decision']}" if r["evaluator"] else r["reason"])
    section.tables.append(Table(
        ["variant", "decision", "evaluators"],
        [[name, decision, ", ".join(each)] for name, (decision, each) in verdicts.items()],
        caption="Per variant: NO-GO if any evaluator is, GO if all are, else INCONCLUSIVE.",
        decision_columns=("decision",)))
    levels = sorted({f"{100 * (1 - r['alpha']):.3g}%" for r in rows if r["alpha"] is not None})
    section.tables.append(Table(
        ["variant", "evaluator", "item score", "items", "loss", "interval of the loss",
         "max_loss", "Holm p", "decision", "reason"],
        [[label(r), r["evaluator"] or "(none)", r["unit"] or "", fmt(r["n"]), fmt(r["loss"], 3),
          interval_text(r["ci_low"], r["ci_high"]), fmt(r["max_loss"]), p_text(r["p_holm"]),
          r["decision"], r["reason"] or ""] for r in rows],
        caption="Per variant and evaluator; the interval of the loss is two-sided, at "
                f"{', '.join(levels) or '1 − alpha'}.",
        decision_columns=("decision",)))
    return section


def _learning(reader: Reader, label: Any, plotted_by_frontier: bool) -> Section:
    rows = reader.rows("SELECT * FROM learning_forgetting WHERE suite = ?")
    section = Section(
        "Learning versus forgetting",
        "Each variant's gain on its target evaluators against its loss on the general and "
        "safety ones, both relative to the base (0.1 = 10%), averaged over evaluators: the "
        "trade-off of Biderman et al. (2024), 'LoRA Learns Less and Forgets Less'. Up and to "
        "the left is better.")
    points = [(label(r), r["forgetting"], r["learning"]) for r in rows
              if r["forgetting"] is not None and r["learning"] is not None]
    if points and plotted_by_frontier:
        section.text += " The Frontier section plots these points."
    elif points:
        section.figures.append(Figure(
            "learning_forgetting", "Learning versus forgetting",
            figures.scatter(points, "forgetting (relative loss on general evaluators)",
                            "learning (relative gain on target evaluators)",
                            "Learning versus forgetting")))
    elif not rows:
        section.text += " No tuned variants yet."
    else:
        section.text += " (A scatter needs a target and a general evaluator.)"
    if rows:
        section.tables.append(Table(
            ["variant", "method", "learning", "forgetting", "significant losses",
             "trainable parameters", "training seconds"],
            [[label(r), r["method"], fmt(r["learning"]), fmt(r["forgetting"]),
              f"{r['significant_losses']} of {r['general_evaluators']}",
              fmt(r["trainable_params"]), fmt(r["train_seconds"], 3)] for r in rows]))
    return section


def _training(reader: Reader, label: Any) -> Section:
    rows = reader.rows("SELECT model_name AS model, name AS variant, method, status, steps, "
                       "loss_curve, final_loss, seconds, tokens_per_second, peak_memory_mb, "
                       "trainable_params, total_params FROM variants WHERE suite = ? "
                       # checkpoints and transforms ran no training of their own
                       "AND coalesce(origin, 'tuned') = 'tuned' "
                       "ORDER BY model_name, name, created_at DESC")
    section = Section("Training", "Loss per logged step, and what each tuning run cost.")
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:  # the newest record per variant name
        latest.setdefault(label(r), r)
    series = [(name, list(r["loss_curve"])) for name, r in latest.items() if r["loss_curve"]]
    if series:
        section.figures.append(Figure("training", "Training curves",
                                      figures.curves(series, "logged step", "loss",
                                                     "Training loss")))
    if not latest:
        section.text += " No tuning runs yet."
        return section
    section.tables.append(Table(
        ["variant", "method", "status", "steps", "final loss", "seconds", "tokens/s",
         "peak memory (MiB)", "trainable / total parameters"],
        [[name, r["method"], r["status"], fmt(r["steps"]), fmt(r["final_loss"]),
          fmt(r["seconds"], 3), fmt(r["tokens_per_second"], 3), fmt(r["peak_memory_mb"], 4),
          f"{fmt(r['trainable_params'])} / {fmt(r['total_params'])}"]
         for name, r in latest.items()]))
    return section


def _contamination(reader: Reader, label: Any) -> Section:
    summary = reader.rows("SELECT * FROM contamination_summary WHERE suite = ?")
    section = Section(
        "Contamination",
        "Evaluation items found in a variant's tuning data (exact: the normalised item equals "
        "a tuning text; ngram-n: share of the item's word n-grams found there), and items the "
        "variant suddenly finds likelier than its base does (min-k, min-k++: the change in "
        "Min-K% and Min-K%++ membership scores, flagged when an outlier among the "
        "evaluator's items).")
    if not summary:
        section.text += " No findings: no tuned variant, or no analysis yet."
        return section
    section.tables.append(Table(
        ["variant", "evaluator", "method", "flagged", "items", "mean score", "max score"],
        [[label(r), r["evaluator"], r["method"], str(r["flagged"]), str(r["items"]),
          fmt(r["mean_score"], 3), fmt(r["max_score"], 3)] for r in summary],
        caption="Per variant, evaluator and method."))
    # the items listed are picked before their texts are joined: joining every flagged item
    # to the samples first read every flagged item's text (at 1,000,000 samples the report's
    # peak memory fell from 1,599 to 1,490 MiB; the rest is DuckDB's buffers of what
    # clean_scores reads; bench/cost_curves.py store)
    shown = reader.rows(f"""
        WITH flagged AS (
            SELECT c.model, c.variant, c.variant_key, c.evaluator, c.evaluator_key, c.item_id,
                   c.item_index, count(*) OVER () AS total,
                   string_agg(c.method || ' ' || round(c.score, 3), ', '
                              ORDER BY c.method) AS methods
            FROM contamination c
            WHERE c.suite = ? AND c.flagged
            GROUP BY c.model, c.variant, c.variant_key, c.evaluator, c.evaluator_key,
                     c.item_id, c.item_index
            ORDER BY c.model, c.variant, c.evaluator, c.item_index
            LIMIT {MAX_ITEMS_LISTED})
        SELECT f.*, s.prompt, s.target, s.extra, s.query
        FROM flagged f
        LEFT JOIN base_pairs p USING (variant_key, evaluator_key)
        LEFT JOIN samples s ON s.cell_key = p.base_cell_key AND s.item_index = f.item_index
        ORDER BY f.model, f.variant, f.evaluator, f.item_index""")
    if shown:
        total = shown[0]["total"]
        caption = "Flagged items" + (f" (the first {len(shown)} of {total})"
                                     if total > len(shown) else "")
        section.tables.append(Table(
            ["variant", "evaluator", "item", "flagged by (score)", "item text"],
            [[label(r), r["evaluator"], r["item_id"] or str(r["item_index"]), r["methods"],
              _excerpt(item_text(r["prompt"], r["target"], json.loads(r["extra"] or "{}"),
                                 r["query"]))]
             for r in shown], caption=caption))
    return section


def _clean(reader: Reader, label: Any) -> Section:
    rows = reader.rows("SELECT * FROM clean_scores WHERE suite = ?")
    section = Section(
        "Clean versus full scores",
        "Each evaluator's per-item mean score (samples.score: right or wrong for benchmarks, "
        "negative log-likelihood per token for perplexity, ...) on every item and on the items "
        "no contamination method flagged, for the variant and for its base on the same items.")
    if not rows:
        section.text += " Nothing to compare yet."
        return section
    section.tables.append(Table(
        ["variant", "evaluator", "metric", "score", "base score", "items", "clean items",
         "item mean", "clean item mean", "base item mean", "base clean item mean"],
        [[label(r), r["evaluator"], r["metric"], fmt(r["score"]), fmt(r["base_score"]),
          str(r["items"]), str(r["clean_items"]), fmt(r["item_mean"]),
          fmt(r["clean_item_mean"]), fmt(r["base_item_mean"]), fmt(r["base_clean_item_mean"])]
         for r in rows]))
    return section


def _excerpt(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_svgs(report: Report, folder: Path) -> dict[str, Path]:
    """Every figure of ``report`` as ``folder/<name>.svg``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for section in report.sections:
        for figure in section.figures:
            paths[figure.name] = folder / f"{figure.name}.svg"
            paths[figure.name].write_text(figure.svg, encoding="utf-8")
    return paths


class PageOptions(harness.Options):
    out: str | None = Field(default=None,
                            description="the page; default: beside the store, <store>.report.*")
    suite: str | None = Field(default=None, description="the suite to report; default: the run's")


class PageReporter(harness.Reporter):
    """A reporter that writes the report as one page: subclasses set ``suffix`` and
    ``write``. The page appears whole or not at all (written beside, then renamed)."""

    Options = PageOptions
    suffix = ""

    def __init__(self, options: PageOptions | None = None) -> None:
        self.options = options or PageOptions()

    @abstractmethod
    def write(self, report: Report, out: Path) -> str:
        """The page's text (after writing any files it refers to)."""

    def report(self, context: ReportContext) -> Path | None:
        if not context.store_path.exists():
            return None
        out = Path(self.options.out) if self.options.out else context.store_path.with_name(
            f"{context.store_path.stem}.report{self.suffix}")
        report = build_report(context.store_path, self.options.suite or context.suite_name or None)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(self.write(report, out), encoding="utf-8")
        os.replace(partial, out)
        context.console.print(f"report: {out}")
        return out

