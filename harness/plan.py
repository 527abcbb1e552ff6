"""A suite expanded into keyed work: models x (base + tuners) x evaluators.

A cell is one (model, variant, evaluator). Its key is a content hash of everything that
determines its result, so a cell already done in the store is never recomputed: a
finished suite re-runs in seconds and a killed run resumes.
"""

from __future__ import annotations

import re
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


def folder_name(model: ResolvedModel, name: str, key: str) -> str:
    """A variant's folder: model, name and key, the name cut short (a merge's lists all its
    sources) and any character a file name should not hold made ``_``; the key keeps it
    unique."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model.name}-{name}")
    return f"{readable[:100]}-{key[:12]}"


def _variant(node: Node, model: ResolvedModel, base: VariantPlan,
             planned: dict[int, VariantPlan], tuner_data: dict[str, str], artifacts: Path,
             rewards: dict[str, Any]) -> VariantPlan:
    """A node of the lineage made concrete for one base model, with its keys."""
    parent = planned[id(node.parent)] if node.parent is not None else base
    if node.origin == "checkpoint":
        return _checkpoint(node, planned[id(node.sources[0])])
    if node.origin == "transformed":
        return _transformed(node, model, parent, [planned[id(s)] for s in node.sources],
                            artifacts)
    return _tuned(node, model, parent, tuner_data, artifacts, rewards)


def _tuned(node: Node, model: ResolvedModel, parent: VariantPlan, tuner_data: dict[str, str],
           artifacts: Path, rewards: dict[str, Any]) -> VariantPlan:
    """The key covers the model, the entry, its options at this sweep point, its data, its
    seed, its checkpoint interval and, for a variant trained on another, the parent's key:
    changing a parent re-runs it and its descendants. A variant of the base without
    checkpoints hashes the same payload as before lineage existed, so stores made then
    keep their variants."""
    entry = node.recipe.entry
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
    save_every = node.recipe.save_every if node.point.checkpoints else None
    if save_every:  # the run keeps its checkpoints: one tuned without them has none to give
        payload["eval_every"] = save_every
    key = content_hash(payload)
    return VariantPlan(
        node.name, key, model, tuner, data_hash=tuner_data[entry.name],
        output_dir=artifacts / folder_name(model, node.name, key), rewards=rewards,
        parent=parent, seed=node.seed, sweep=dict(node.point.values),
        recipe_key=content_hash(recipe), save_every=save_every,
    )


def _checkpoint(node: Node, final: VariantPlan) -> VariantPlan:
    """A tuned variant's state at one step: made by the same tuning run (no folder of its
    own), a child of the same parent."""
    return replace(
        final, name=node.name, key=content_hash({"checkpoint_of": final.key, "step": node.step}),
        output_dir=None, origin="checkpoint", save_every=None, step=node.step, sources=(final,),
        recipe_key=content_hash({"checkpoint_of": final.recipe_key, "step": node.step}),
    )


def _transformed(node: Node, model: ResolvedModel, parent: VariantPlan,
                 sources: list[VariantPlan], artifacts: Path) -> VariantPlan:
    """A transform of its sources: its key covers the transform, its options, which output
    and the sources' keys."""
    transform = node.transform.entry
    what = {"transform": transform.kind, "entry": transform.name, "output": node.output,
            "options": transform.cls.output_key(transform.options, node.output)}
    key = content_hash({**what, "sources": [s.key for s in sources], "harness": __version__})
    return VariantPlan(
        node.name, key, model, None, output_dir=artifacts / folder_name(model, node.name, key),
        parent=parent, seed=node.seed, origin="transformed", sources=tuple(sources),
        transform=transform, output=node.output,
        recipe_key=content_hash({**what, "sources": [s.recipe_key for s in sources]}),
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
    nodes = expand(suite.recipes, suite.transforms)
    membership = suite.contamination.k if suite.contamination.membership else None
    variants: list[VariantPlan] = []
    cells: list[CellPlan] = []
    for model in models:
        base_key = content_hash({"model": model.fingerprint, "model_name": model.name})
        base = VariantPlan("base", base_key, model, None, origin="base")
        model_variants = [base]
        planned: dict[int, VariantPlan] = {}  # id(node) -> its variant, parents first
        for node in nodes:
            variant = _variant(node, model, base, planned, tuner_data, artifacts,
                                        suite.rewards)
            planned[id(node)] = variant
            model_variants.append(variant)
        variants.extend(model_variants)
        for variant in model_variants:
            for evaluator in _evaluators_of(variant, suite):
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


def _evaluators_of(variant: VariantPlan, suite: Suite) -> list[ResolvedComponent]:
    """Every evaluator, or for a checkpoint those its entry's ``checkpoint_evaluators`` names."""
    chosen = (suite.recipes[variant.tuner.name].checkpoint_evaluators
              if variant.origin == "checkpoint" else None)
    return [e for e in suite.evaluators if chosen is None or e.name in chosen]
