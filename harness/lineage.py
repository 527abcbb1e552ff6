"""The experiment model's pure parts: a tuner entry as a recipe (its parent, its sweep
points, its seeds), the order in which entries can be trained, and variant names.

A tuner entry with ``from = "sft"`` trains on top of each variant of the entry ``sft``;
``[tuners.sweep]`` makes one variant per combination of option values; ``seeds`` makes
replicates that differ only by seed. So one entry makes, per base model,
``(variants of its parent) x (sweep points) x (seeds)`` variants.
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


@dataclass(frozen=True)
class Recipe:
    """A tuner entry as the plan expands it."""

    entry: ResolvedComponent
    parent: str | None  # the tuner entry it trains on top of; None: the base
    seeds: tuple[int, ...]
    points: tuple[SweepPoint, ...]

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
class Node:
    """One tuned variant of one base model, before keys: what the plan hashes and names."""

    recipe: Recipe
    point: SweepPoint
    seed: int
    parent: Node | None  # None: trained on the base
    name: str


def expand(recipes: Mapping[str, Recipe]) -> list[Node]:
    """Every tuned variant the recipes make of one base model, parents first."""
    made: dict[str, list[Node]] = {}
    nodes: list[Node] = []
    for entry in training_order({name: r.parent for name, r in recipes.items()}):
        recipe = recipes[entry]
        parents: list[Node | None] = list(made[recipe.parent]) if recipe.parent else [None]
        made[entry] = [
            Node(recipe, point, seed, parent,
                 variant_name(entry, point.values, seed, recipe.replicated,
                              parent.name if parent else None, len(parents)))
            for parent in parents for point in recipe.points for seed in recipe.seeds
        ]
        nodes.extend(made[entry])
    return nodes
