"""A suite expanded into keyed work: models x (base + tuners) x evaluators.

A cell is one (model, variant, evaluator). Its key is a content hash of everything that
determines its result, so a cell already done in the store is never recomputed: a
finished suite re-runs in seconds and a killed run resumes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.keys import content_hash, data_hash
from harness.lineage import Node, expand
from harness.records import CellPlan, Plan, ResolvedComponent, ResolvedModel, VariantPlan
from harness.suite import Suite
from harness.version import __version__


def options_payload(component: ResolvedComponent) -> Any:
    """A component's options as JSON (validated values, defaults included)."""
    options = component.options
    return options.model_dump(mode="json") if options is not None else component.raw_options


def _variant(node: Node, model: ResolvedModel, base: VariantPlan,
             planned: dict[int, VariantPlan], tuner_data: dict[str, str], artifacts: Path,
             rewards: dict[str, Any]) -> VariantPlan:
    """A node of the lineage made concrete for one base model, with its keys.

    The variant key covers the model, the entry, its options at this sweep point, its data,
    its seed and, for a variant trained on another, the parent's key: changing a parent
    re-runs it and its descendants. A variant of the base hashes the same payload as
    before lineage existed, so stores made then keep their variants.
    """
    entry = node.recipe.entry
    parent = planned[id(node.parent)] if node.parent is not None else base
    tuner = replace(entry, options=node.point.options, raw_options=node.point.raw_options)
    options = options_payload(tuner)
    payload = {
        "model": model.fingerprint, "model_name": model.name, "name": node.name,
        "method": entry.kind, "options": options, "data": tuner_data[entry.name],
        "seed": node.seed, "harness": __version__,
    }
    recipe = {"model": model.fingerprint, "entry": entry.name, "method": entry.kind,
              "options": options, "data": tuner_data[entry.name]}
    if node.parent is not None:
        payload["parent"] = parent.key
        recipe["parent"] = parent.recipe_key
    key = content_hash(payload)
    return VariantPlan(
        node.name, key, model, tuner, data_hash=tuner_data[entry.name],
        output_dir=artifacts / f"{model.name}-{node.name}-{key[:12]}", rewards=rewards,
        parent=parent, seed=node.seed, sweep=dict(node.point.values),
        recipe_key=content_hash(recipe),
    )


def make_plan(suite: Suite, models: list[ResolvedModel],
              evaluator_models: dict[str, dict[str, ResolvedModel]] | None = None) -> Plan:
    """Expand models x (base + every variant of the lineage) x evaluators into keyed
    cells."""
    evaluator_models = evaluator_models or {}
    artifacts = suite.store_path.parent / f"{suite.store_path.stem}.variants"
    backend_payload = {"kind": suite.backend.kind, "options": options_payload(suite.backend)}
    # Keys cover everything the suite says about a cell, names and roles included,
    # so that stored rows never carry a stale name or role.
    evaluator_keys = {}
    for e in suite.evaluators:
        payload = {"name": e.name, "kind": e.kind, "role": e.role, "options": options_payload(e),
                   "data": data_hash(e.data), "seed": suite.seed}
        if evaluator_models.get(e.name):  # a guard or judge model is part of the evaluator
            payload["models"] = {purpose: m.fingerprint
                                 for purpose, m in sorted(evaluator_models[e.name].items())}
        evaluator_keys[e.name] = content_hash(payload)
    tuner_data = {t.name: data_hash(t.data) for t in suite.tuners}
    nodes = expand(suite.recipes)
    membership = suite.contamination.k if suite.contamination.membership else None
    variants: list[VariantPlan] = []
    cells: list[CellPlan] = []
    for model in models:
        base_key = content_hash({"model": model.fingerprint, "model_name": model.name})
        base = VariantPlan("base", base_key, model, None)
        model_variants = [base]
        planned: dict[int, VariantPlan] = {}  # id(node) -> its variant, parents first
        for node in nodes:
            variant = _variant(node, model, base, planned, tuner_data, artifacts,
                                        suite.rewards)
            planned[id(node)] = variant
            model_variants.append(variant)
        variants.extend(model_variants)
        for variant in model_variants:
            for evaluator in suite.evaluators:
                key = content_hash({
                    "suite": suite.name, "variant": variant.key,
                    "evaluator": evaluator_keys[evaluator.name],
                    "backend": backend_payload, "harness": __version__,
                    "membership": membership,
                })
                cells.append(CellPlan(
                    key, suite.name, suite.seed, model, variant, evaluator,
                    evaluator_keys[evaluator.name], suite.backend.kind,
                    evaluator_models.get(evaluator.name, {}), membership,
                ))
    return Plan(variants, cells)
