"""The report's sections about checkpoints and trade-offs: each tuning run's training curve,
the Pareto frontier of learning against forgetting over every variant, and the best variant
the gate lets ship. Read from the ``training_curve``, ``frontier`` and ``gate`` views."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from harness_plugins.reporters import figures
from harness_plugins.reporters.report_model import (
    Figure,
    Reader,
    Section,
    Table,
    fmt,
    p_text,
)

Label = Callable[[dict[str, Any]], str]

#: a frontier, and a best variant, need at least this many variants to choose between;
#: with one, the "Learning versus forgetting" section already says all there is
MIN_CHOICES = 2
#: candidates listed under "Best variant under max_loss"
MAX_CANDIDATES = 10


def _significant(p_value: float | None) -> bool:
    return p_value is not None and p_value < 0.05


def _stem(prefix: str, name: str) -> str:
    """A file name stem for a figure: variant names may hold ``@ ~ ( ) , /``."""
    return f"{prefix}-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


# -- training curves -------------------------------------------------------------------------


def training_curves(reader: Reader, label: Label) -> Section | None:
    """One figure per tuning run that kept checkpoints, and a table of its points."""
    rows = reader.rows("SELECT * FROM training_curve WHERE suite = ?")
    if not rows:
        return None
    limits = {(r["model"], r["evaluator"]): r["max_loss"] for r in reader.rows(
        "SELECT model, evaluator, max(max_loss) AS max_loss FROM gate "
        "WHERE suite = ? AND evaluator IS NOT NULL GROUP BY model, evaluator")}
    section = Section(
        "Training curves",
        "Each tuning run that kept checkpoints (eval_every), step by step: its checkpoints "
        "and, at its last step, the variant it ended with, each against the base. Above: the "
        "gain on each target evaluator, in the metric's own units (positive = better, "
        "whichever way the metric points). Below: the loss on each general and safety "
        "evaluator in the units of its per-item score (positive = worse), with the 95% "
        "interval of the paired test, and dashed, the gate's max_loss. Filled points (and "
        "starred numbers) differ from the base with paired-test p < 0.05.")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        runs.setdefault((r["model"], r["run"]), []).append(r)
    evaluators = list(dict.fromkeys((r["evaluator"], r["role"]) for r in rows))
    table_rows = []
    for index, ((model, run), ours) in enumerate(runs.items()):
        name = label({"model": model, "variant": run})
        gains, losses = [], []
        for evaluator, role in evaluators:
            points = sorted((r for r in ours if r["evaluator"] == evaluator),
                            key=lambda r: r["step"])
            if not points:
                continue
            first = points[0]
            if role == "target":
                gains.append((f"{evaluator} ({first['metric']}, "
                              f"{'higher' if first['higher_is_better'] else 'lower'} is better)",
                              [(r["step"], r["gain"], _significant(r["p_value"]))
                               for r in points if r["gain"] is not None]))
            else:
                losses.append((f"{evaluator} ({first['unit']})",
                               [(r["step"], r["loss"], r["loss_low"], r["loss_high"],
                                 _significant(r["p_value"]))
                                for r in points if r["loss"] is not None],
                               limits.get((model, evaluator))))
        gains = [g for g in gains if g[1]]
        losses = [g for g in losses if g[1]]
        if gains or losses:
            section.figures.append(Figure(
                _stem(f"curve{index}", name), f"Training curve of {name}",
                figures.training_curve(gains, losses, "gain against the base\n(metric units)",
                                       "loss against the base\n(item-score units)",
                                       f"{name}: gain and loss by step")))
        table_rows += _curve_rows(name, ours, evaluators)
    section.tables.append(Table(
        ["run", "step", "variant", *(f"{e} {'gain' if role == 'target' else 'loss'}"
                                     for e, role in evaluators)],
        table_rows,
        caption="Gain on target evaluators (metric units) and loss on general and safety "
                "evaluators (item-score units) against the base; * paired-test p < 0.05."))
    return section


def _curve_rows(run: str, rows: list[dict[str, Any]],
                evaluators: list[tuple[str, str]]) -> list[list[str]]:
    """One table row per step of a run, a column per evaluator."""
    steps: dict[tuple[int, str], dict[str, str]] = {}
    for r in rows:
        value = r["gain"] if r["role"] == "target" else r["loss"]
        text = "" if value is None else _signed(value) + ("*" if _significant(r["p_value"])
                                                           else "")
        steps.setdefault((r["step"], r["variant"]), {})[r["evaluator"]] = text
    return [[run, fmt(step), variant, *(cells.get(e, "") for e, _ in evaluators)]
            for (step, variant), cells in sorted(steps.items(), key=lambda item: item[0][0])]


def _signed(value: float) -> str:
    """``+0.012``, ``-3.5``; a change of exactly nothing reads ``0``."""
    return "0" if value == 0 else f"{value:+.3g}"


# -- the frontier ----------------------------------------------------------------------------


def _choices(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The variants (not the base) with a point to plot."""
    return [r for r in rows if r["origin"] != "base" and r["learning"] is not None
            and r["forgetting"] is not None]


def frontier(reader: Reader, label: Label) -> Section | None:
    """A scatter of every variant's learning against forgetting with the Pareto frontier
    drawn through its points, one per model; absent with fewer than two variants."""
    rows = reader.rows("SELECT * FROM frontier WHERE suite = ?")
    if len(_choices(rows)) < MIN_CHOICES:
        return None
    section = Section(
        "Frontier",
        "Every variant (tuned, checkpoints, transformed) as a point of learning (mean gain "
        "on target evaluators relative to the base, 0.1 = 10%) against forgetting (mean "
        "relative loss on general and safety evaluators); the base is the point (0, 0). A "
        "variant is on the frontier (the line) when no other learns at least as much and "
        "forgets at most as much, one of the two strictly: every variant off it is beaten "
        "by one on it. Hollow points were not scored on every evaluator the base was (a "
        "checkpoint limited by checkpoint_evaluators): their means are over other "
        "evaluators, so they are shown but take no part in the frontier. A variant far "
        "from the frontier (more than twice its extent away) is named beneath the plot "
        "instead of drawn; the table lists every one.")
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = [r for r in rows if r["model"] == model and r["learning"] is not None
                and r["forgetting"] is not None]
        if not ours:  # a model without a target or a general evaluator
            continue
        points = [(label(r), r["forgetting"], r["learning"], r["origin"] or "tuned",
                   bool(r["comparable"])) for r in ours]
        line = [(r["forgetting"], r["learning"]) for r in ours if r["on_frontier"]]
        title = "Learning versus forgetting: the frontier" + (
            f" ({model})" if len({r["model"] for r in rows}) > 1 else "")
        section.figures.append(Figure(
            _stem("frontier", model), title,
            figures.frontier(points, line, "forgetting (relative loss on general evaluators)",
                             "learning (relative gain on target evaluators)", title)))
    section.tables.append(Table(
        ["variant", "origin", "entry", "step", "learning", "forgetting", "significant losses",
         "comparable", "on the frontier"],
        [[label(r), r["origin"] or "", r["tuner"] or "", fmt(r["step"]), fmt(r["learning"]),
          fmt(r["forgetting"]),
          "" if r["significant_losses"] is None or r["general_evaluators"] is None
          else f"{r['significant_losses']} of {r['general_evaluators']}",
          fmt(r["comparable"]), fmt(r["on_frontier"])] for r in rows],
        caption="Best learning first; a variant without a target score has no learning and "
                "is never on the frontier."))
    return section


# -- the best variant the gate passes --------------------------------------------------------


def best_under_max_loss(reader: Reader, label: Label) -> Section | None:
    """The variant with the most learning among those the gate passes on every gated
    evaluator; if none, the best whose point loss is within max_loss, marked as such."""
    points = {r["variant_key"]: r for r in reader.rows("SELECT * FROM frontier WHERE suite = ?")}
    gate = reader.rows("SELECT * FROM gate WHERE suite = ? ORDER BY model, variant, evaluator")
    if not gate or len(_choices(list(points.values()))) < MIN_CHOICES:
        return None
    section = Section(
        "Best variant under max_loss",
        "Of the variants the gate passes (GO on every gated evaluator: the whole interval "
        "of each loss lies within its max_loss), the one that learns most. When none "
        "passes, the best of those whose measured loss is within max_loss on every gated "
        "evaluator is named instead: that is not shown to be within, since the interval "
        "of its loss reaches beyond max_loss or the items cannot tell.")
    verdicts: dict[str, list[dict[str, Any]]] = {}
    for r in gate:
        verdicts.setdefault(r["variant_key"], []).append(r)
    paragraphs = []
    for model in dict.fromkeys(r["model"] for r in gate):
        ranked = sorted((key for key, each in verdicts.items() if each[0]["model"] == model
                         and points.get(key, {}).get("learning") is not None),
                        key=lambda key: (-points[key]["learning"],
                                         points[key]["forgetting"] is None,
                                         points[key]["forgetting"] or 0.0,
                                         points[key]["variant"]))
        passed = [key for key in ranked if verdicts[key][0]["variant_decision"] == "GO"]
        within = [key for key in ranked if all(
            r["evaluator"] and r["loss"] is not None and r["max_loss"] is not None
            and r["loss"] <= r["max_loss"] for r in verdicts[key])]
        of_model = f" of {model}" if len({r["model"] for r in gate}) > 1 else ""
        if passed:
            best = points[passed[0]]
            paragraphs.append(
                f"Best variant{of_model} under max_loss: {label(best)} (learning "
                f"{fmt(best['learning'], 3)}, forgetting {fmt(best['forgetting'], 3)}); the "
                f"gate passes {len(passed)} of the {len(ranked)} variants that have learning.")
            listed = passed
        elif within:
            best = points[within[0]]
            paragraphs.append(
                f"No variant{of_model} passes the gate. Best whose measured loss is within "
                f"max_loss on every gated evaluator: {label(best)} (learning "
                f"{fmt(best['learning'], 3)}), NOT shown to be within max_loss.")
            listed = within
        else:
            paragraphs.append(f"No variant{of_model} passes the gate, and none has its "
                              "measured loss within max_loss on every gated evaluator.")
            listed = []
        if listed:
            section.tables.append(_candidates(listed[:MAX_CANDIDATES], points, verdicts,
                                              label, shown=bool(passed)))
    section.text += " " + " ".join(paragraphs)
    return section


def _candidates(keys: list[str], points: dict[str, dict[str, Any]],
                verdicts: dict[str, list[dict[str, Any]]], label: Label,
                shown: bool) -> Table:
    return Table(
        ["variant", "origin", "learning", "forgetting", "on the frontier", "gate",
         "loss / max_loss per evaluator"],
        [[label(points[key]), points[key]["origin"] or "", fmt(points[key]["learning"]),
          fmt(points[key]["forgetting"]), fmt(points[key]["on_frontier"]),
          verdicts[key][0]["variant_decision"],
          "; ".join(f"{r['evaluator']}: {fmt(r['loss'], 3)} / {fmt(r['max_loss'])} "
                    f"(p {p_text(r['p_holm'])}, {r['decision']})" for r in verdicts[key])]
         for key in keys],
        caption=("Variants the gate passes, most learning first." if shown else
                 "Variants whose measured loss is within max_loss on every gated evaluator, "
                 "most learning first: NOT shown to be within (the gate does not pass them)."),
        decision_columns=("gate",))
