"""The experiment model's pure parts: a tuner entry as a recipe (its parent, its sweep
points, its seeds, its checkpoints), a transform entry as what it is made of, the order
in which entries can be made, and variant names.

A tuner entry with ``from = "sft"`` trains on top of each variant of the entry ``sft``;
``[tuners.sweep]`` makes one variant per combination of option values; ``seeds`` makes
replicates that differ only by seed. So one entry makes, per base model,
``(variants of its parent) x (sweep points) x (seeds)`` variants, and with ``eval_every``
each of them brings its checkpoints (``sft@step20``). A ``[[transforms]]`` entry makes
variants of the variants its ``of`` names (``sft~interp0.5``, ``merge(sft-seed0,sft-seed1)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.records import ResolvedComponent


@dataclass(frozen=True)
class SweepPoint:
    """One combination of swept option values, with the tuner's options it makes."""

    values: dict[str, Any]  # swept option -> value; {} when nothing is swept
    options: Any  # the tuner's validated Options with these values
    raw_options: dict[str, Any]
    checkpoints: tuple[int, ...] = ()  # the steps whose state becomes a variant


@dataclass(frozen=True)
class Recipe:
    """A tuner entry as the plan expands it."""

    entry: ResolvedComponent
    parent: str | None  # the tuner entry it trains on top of; None: the base
    seeds: tuple[int, ...]
    points: tuple[SweepPoint, ...]
    save_every: int | None = None  # eval_every
    #: the evaluators of its checkpoints; None: every evaluator
    checkpoint_evaluators: tuple[str, ...] | None = None

    @property
    def replicated(self) -> bool:
        return len(self.seeds) > 1


def find_cycle(parents: Mapping[str, str | None]) -> list[str] | None:
    """The first chain of ``from`` references that comes back to where it started, as
    entry names (``["a", "b", "a"]``), or None."""
    for start in parents:
        chain, name = [start], parents[start]
        while name is not None and name in parents:
            if name in chain:
                return chain[chain.index(name):] + [name]
            chain.append(name)
            name = parents[name]
    return None


def training_order(parents: Mapping[str, str | None]) -> list[str]:
    """Entry names with every parent before its children, otherwise in suite order.
    ``parents`` must hold no cycle and name only its own keys."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        parent = parents[name]
        if parent is not None:
            visit(parent)
        order.append(name)

    for name in parents:
        visit(name)
    return order


def format_value(value: Any) -> str:
    """A swept value as it appears in a variant name: ``8``, ``0.0001``, ``true``; any
    character a name may not hold becomes ``_``."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, tuple)):
        text = "_".join(format_value(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def own_name(entry: str, values: Mapping[str, Any], seed: int, replicated: bool) -> str:
    """A variant's name from its entry, its swept values and its seed: ``sft``,
    ``sft-r8-lr0.0001``, ``sft-r8-lr0.0001-seed1`` (the seed only when the entry has
    several)."""
    parts = [entry] + [f"{option}{format_value(value)}" for option, value in values.items()]
    if replicated:
        parts.append(f"seed{seed}")
    return "-".join(parts)


def variant_name(entry: str, values: Mapping[str, Any], seed: int, replicated: bool,
                 parent: str | None, parent_count: int) -> str:
    """The full name: ``own_name``, after its parent variant's name and a dot when the
    parent entry made several variants (``sft-seed1.dpo``), so that every name is unique."""
    name = own_name(entry, values, seed, replicated)
    return f"{parent}.{name}" if parent is not None and parent_count > 1 else name


@dataclass(frozen=True)
class TransformRecipe:
    """A transform entry as the plan expands it."""

    entry: ResolvedComponent
    of: tuple[str, ...]  # entry names, or ``entry@step<k>``
    combines: bool
    outputs: tuple[str, ...]


def checkpoint_reference(reference: str) -> tuple[str, int | None]:
    """``"sft@step20"`` -> ``("sft", 20)``; ``"sft"`` -> ``("sft", None)``."""
    match = re.fullmatch(r"(.+)@step(\d+)", reference)
    return (match.group(1), int(match.group(2))) if match else (reference, None)


def transform_order(transforms: Mapping[str, TransformRecipe]
                    ) -> tuple[list[str], list[str] | None]:
    """Transform entries with every transform they take before them, and the first chain
    of ``of`` references that comes back to where it started (None when none does)."""
    order: list[str] = []

    def visit(name: str, chain: list[str]) -> list[str] | None:
        if name in order:
            return None
        if name in chain:
            return chain[chain.index(name):] + [name]
        for reference in transforms[name].of:
            source = checkpoint_reference(reference)[0]
            if source in transforms:
                cycle = visit(source, chain + [name])
                if cycle:
                    return cycle
        order.append(name)
        return None

    for name in transforms:
        cycle = visit(name, [])
        if cycle:
            return order, cycle
    return order, None


@dataclass(frozen=True, eq=False)
class Node:
    """One variant of one base model, before keys: what the plan hashes and names. Nodes
    compare by identity: a node is its place in the tree."""

    name: str
    parent: Node | None  # None: made of the base
    recipe: Recipe | None = None  # tuned variants and checkpoints
    point: SweepPoint | None = None
    seed: int | None = None
    origin: str = "tuned"
    step: int | None = None  # a checkpoint's
    sources: tuple[Node, ...] = ()  # a checkpoint's final variant; a transform's inputs
    transform: TransformRecipe | None = None
    output: str = ""


def transformed_name(entry: str, output: str, sources: list[Node], combines: bool) -> str:
    """``sft~interp0.5`` (one source), ``merge(sft-seed0,sft-seed1)`` (combined)."""
    if combines:
        return f"{entry}{output}(" + ",".join(node.name for node in sources) + ")"
    return f"{sources[0].name}~{entry}{output}"


def common_parent(sources: list[Node]) -> tuple[bool, Node | None]:
    """Whether the sources were all made of the same variant, and which."""
    parents = {id(node.parent): node.parent for node in sources}
    return len(parents) == 1, next(iter(parents.values()))


def expand(recipes: Mapping[str, Recipe],
           transforms: Mapping[str, TransformRecipe] | None = None) -> list[Node]:
    """Every variant the recipes and transforms make of one base model, each after the
    variants it is made of: a tuned variant, then its checkpoints; transforms last.
    ``transforms`` must be valid (:func:`transform_problems` says nothing)."""
    made: dict[str, list[Node]] = {}
    checkpoints: dict[str, list[Node]] = {}
    nodes: list[Node] = []
    for entry in training_order({name: r.parent for name, r in recipes.items()}):
        recipe = recipes[entry]
        parents: list[Node | None] = list(made[recipe.parent]) if recipe.parent else [None]
        made[entry], checkpoints[entry] = [], []
        for parent in parents:
            for point in recipe.points:
                for seed in recipe.seeds:
                    name = variant_name(entry, point.values, seed, recipe.replicated,
                                        parent.name if parent else None, len(parents))
                    final = Node(name, parent, recipe, point, seed)
                    kept = [Node(f"{name}@step{step}", parent, recipe, point, seed,
                                 "checkpoint", step, (final,)) for step in point.checkpoints]
                    made[entry].append(final)
                    checkpoints[entry].extend(kept)
                    nodes.extend([final, *kept])
    for entry in transform_order(transforms or {})[0]:
        recipe_t = (transforms or {})[entry]
        sources = [node for reference in recipe_t.of for node in _sources(reference, made,
                                                                           checkpoints)]
        groups = [sources] if recipe_t.combines else [[node] for node in sources]
        made[entry] = []
        for group in groups:
            parent = common_parent(group)[1]
            for output in recipe_t.outputs:
                made[entry].append(Node(
                    transformed_name(entry, output, group, recipe_t.combines), parent,
                    origin="transformed", sources=tuple(group), transform=recipe_t,
                    output=output, seed=group[0].seed if len(group) == 1 else None))
        nodes.extend(made[entry])
    return nodes


def _sources(reference: str, made: Mapping[str, list[Node]],
             checkpoints: Mapping[str, list[Node]]) -> list[Node]:
    entry, step = checkpoint_reference(reference)
    if step is None:
        return list(made[entry])
    return [node for node in checkpoints[entry] if node.step == step]
