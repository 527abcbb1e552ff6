"""A suite expanded into keyed work: models x (base + tuners) x evaluators.

A cell is one (model, variant, evaluator). Its key is a content hash of everything that
determines its result, so a cell already done in the store is never recomputed: a
finished suite re-runs in seconds and a killed run resumes.
"""

from __future__ import annotations

from typing import Any

from harness.keys import content_hash, data_hash
from harness.records import CellPlan, Plan, ResolvedComponent, ResolvedModel, VariantPlan
from harness.suite import Suite
from harness.version import __version__


def options_payload(component: ResolvedComponent) -> Any:
    """A component's options as JSON (validated values, defaults included)."""
    options = component.options
    return options.model_dump(mode="json") if options is not None else component.raw_options


def make_plan(suite: Suite, models: list[ResolvedModel],
              evaluator_models: dict[str, dict[str, ResolvedModel]] | None = None) -> Plan:
    """Expand models x (base + tuners) x evaluators into keyed cells."""
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
    membership = suite.contamination.k if suite.contamination.membership else None
    variants: list[VariantPlan] = []
    cells: list[CellPlan] = []
    for model in models:
        base_key = content_hash({"model": model.fingerprint, "model_name": model.name})
        model_variants = [VariantPlan("base", base_key, model, None)]
        for tuner in suite.tuners:
            key = content_hash({
                "model": model.fingerprint, "model_name": model.name,
                "name": tuner.name, "method": tuner.kind,
                "options": options_payload(tuner), "data": tuner_data[tuner.name],
                "seed": suite.seed, "harness": __version__,
            })
            model_variants.append(VariantPlan(
                tuner.name, key, model, tuner,
                data_hash=tuner_data[tuner.name],
                output_dir=artifacts / f"{model.name}-{tuner.name}-{key[:12]}",
                rewards=suite.rewards,
            ))
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
