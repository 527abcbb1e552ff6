"""The suite's experiment resolved: each tuner entry as a recipe (its parent, sweep points,
seeds and checkpoints) and each transform entry as what it is made of, checked whole.

Every problem is reported through ``problem(label, field, message)``, one line each, so
that the suite resolver (:mod:`harness.suite`) can list them all at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import validation_problems
from harness.lineage import (
    Recipe,
    SweepPoint,
    TransformRecipe,
    checkpoint_reference,
    common_parent,
    expand,
    find_cycle,
    transform_order,
)
from harness.records import ResolvedComponent
from harness.suite_file import SuiteFile, TransformEntry, TunerEntry

Problem = Callable[[str, str, str], None]


def data_rows(path: str | None) -> int | None:
    """The rows of a local JSON Lines file (its non-blank lines); None for anything else."""
    if path is None or not Path(path).is_file():
        return None
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


class ExperimentResolver:
    """Resolves ``[[tuners]]`` into recipes and ``[[transforms]]`` into transform recipes."""

    def __init__(self, parsed: SuiteFile, problem: Problem) -> None:
        self.parsed, self.problem = parsed, problem
        self.labels = {entry.name: f"[[tuners]] #{index + 1} ({entry.name!r})"
                       for index, entry in enumerate(parsed.tuners)}
        self.labels.update({entry.name: f"[[transforms]] #{index + 1} ({entry.name!r})"
                            for index, entry in enumerate(parsed.transforms)})
        self.failed = False

    def report(self, label: str, field: str, message: str) -> None:
        self.failed = True
        self.problem(label, field, message)

    # -- tuners ------------------------------------------------------------------------

    def recipes(self, tuners: list[ResolvedComponent],
                evaluators: Sequence[str]) -> dict[str, Recipe]:
        """Each tuner entry's parent, sweep points, seeds and checkpoints, checked:
        ``from`` names an entry and makes no cycle; every swept option exists and takes
        every value; ``eval_every`` is below the steps the tuner takes."""
        parents = {entry.name: entry.from_ for entry in self.parsed.tuners}
        for name, parent in parents.items():
            if parent is not None and parent not in parents:
                known = ", ".join(repr(n) for n in parents if n != name) or "none"
                self.report(self.labels[name], "from", f"no tuner entry is named {parent!r} "
                                                       f"(tuner entries: {known})")
        cycle = find_cycle({n: p if p in parents else None for n, p in parents.items()})
        if cycle:
            self.report(self.labels[cycle[0]], "from",
                        "'from' makes a cycle: " + " -> ".join(repr(n) for n in cycle))
        recipes = {}
        for entry, tuner in zip(self.parsed.tuners, tuners):
            label = self.labels[entry.name]
            points = self.sweep_points(entry.sweep, tuner, label)
            points = self.checkpoints(entry, tuner, points, label, evaluators)
            seeds = tuple(entry.seeds) if entry.seeds else (self.parsed.suite.seed,)
            chosen = tuple(entry.checkpoint_evaluators) if entry.checkpoint_evaluators else None
            recipes[entry.name] = Recipe(tuner, entry.from_, seeds, tuple(points),
                                         entry.eval_every, chosen)
        return recipes

    def sweep_points(self, sweep: dict[str, list[Any]], tuner: ResolvedComponent,
                     label: str) -> list[SweepPoint]:
        """The cartesian product of the swept values, each point's options validated."""
        if tuner.cls is None or tuner.options is None:
            return []
        if not sweep:
            return [SweepPoint({}, tuner.options, tuner.raw_options)]
        known = tuner.cls.Options.model_fields
        fine = True
        for option, choices in sweep.items():
            if option not in known:
                self.report(label, f"sweep.{option}", f"the tuner {tuner.kind!r} has no option "
                                                      f"{option!r} (options: {', '.join(known)})")
                fine = False
            elif option in tuner.raw_options:
                self.report(label, f"sweep.{option}", "set in 'options' and swept; keep one")
                fine = False
        if not fine:
            return []
        points, said = [], set()
        for combination in itertools.product(*sweep.values()):
            values = dict(zip(sweep, combination))
            raw = {**tuner.raw_options, **values}
            try:
                points.append(SweepPoint(values, tuner.cls.Options.model_validate(raw), raw))
            except ValidationError as exc:
                # a bad value is named once, however many points hold it; a problem of the
                # combination (one option's validator reading another) names the point
                for error, (dotted, message) in zip(exc.errors(),
                                                    validation_problems(exc, "sweep")):
                    field = str(error["loc"][0]) if error["loc"] else None
                    if field in values:
                        line = (f"sweep.{field}", f"{message} (swept value {values[field]!r})")
                    else:
                        point = ", ".join(f"{k}={v!r}" for k, v in values.items())
                        line = (dotted, f"{message} (sweep point {point})")
                    if line not in said:
                        said.add(line)
                        self.report(label, *line)
        return points if len(points) == math.prod(len(v) for v in sweep.values()) else []

    def checkpoints(self, entry: TunerEntry, tuner: ResolvedComponent,
                    points: list[SweepPoint], label: str,
                    evaluators: Sequence[str]) -> list[SweepPoint]:
        """Each point with the steps its checkpoints are kept at (``eval_every``)."""
        for name in entry.checkpoint_evaluators or []:
            if name not in evaluators:
                self.report(label, "checkpoint_evaluators", f"no evaluator is named {name!r}")
        if entry.checkpoint_evaluators and entry.eval_every is None:
            self.report(label, "checkpoint_evaluators", "needs 'eval_every' (no checkpoints "
                                                        "are kept without it)")
        every = entry.eval_every
        if every is None or not points:
            return points
        rows = data_rows(tuner.data)
        kept = []
        for point in points:
            steps = tuner.cls.planned_steps(point.options, rows) if rows is not None else None
            if steps is None:
                self.report(label, "eval_every", self.no_steps(tuner, point, rows))
                return points
            if every >= steps:
                at = ", ".join(f"{k}={v!r}" for k, v in point.values.items())
                self.report(label, "eval_every",
                            f"{every} is not below the {steps} steps the tuner takes"
                            + (f" at sweep point {at}" if at else "")
                            + "; no checkpoint would be kept")
                return points
            kept.append(SweepPoint(point.values, point.options, point.raw_options,
                                   tuple(range(every, steps, every))))
        return kept

    @staticmethod
    def no_steps(tuner: ResolvedComponent, point: SweepPoint, rows: int | None) -> str:
        """Why a tuner gave no step count, with the fix when setting ``steps`` is one."""
        if rows is None:
            return "needs a local data file, to count the steps the tuner takes"
        why = (f"the tuner {tuner.kind!r} cannot keep checkpoints with these options (it "
               "does not say beforehand how many steps it takes)")
        if "steps" in tuner.cls.Options.model_fields:
            try:
                probe = point.options.model_copy(update={"steps": 100})
                if tuner.cls.planned_steps(probe, rows) is not None:
                    return why + "; set options.steps"
            except Exception:  # a plugin's planned_steps that cannot take the probe
                pass
        return why

    # -- transforms --------------------------------------------------------------------

    def transforms(self, components: list[ResolvedComponent],
                   recipes: dict[str, Recipe]) -> dict[str, TransformRecipe]:
        """Each transform entry with its sources checked: ``of`` names tuner or transform
        entries (or a tuner entry's checkpoint) and makes no cycle."""
        entries: list[TransformEntry] = self.parsed.transforms
        names = {entry.name for entry in entries}
        result = {}
        for entry, component in zip(entries, components):
            label = self.labels[entry.name]
            for index, reference in enumerate(entry.of):
                if reference in entry.of[:index]:
                    self.report(label, "of", f"names {reference!r} twice")
                else:
                    self.check_reference(reference, entry.name, names, recipes, label)
            if component.cls is None or component.options is None:
                continue
            outputs = tuple(component.cls.outputs(component.options))
            if len(set(outputs)) != len(outputs) or not outputs:
                self.report(label, "kind", f"the transform {component.kind!r} names its "
                                           f"outputs {list(outputs)!r}: none, or one twice")
                continue
            result[entry.name] = TransformRecipe(component, tuple(entry.of),
                                                 bool(component.cls.combines), outputs)
        if self.failed:
            return result
        cycle = transform_order(result)[1]
        if cycle:
            self.report(self.labels[cycle[0]], "of",
                        "'of' makes a cycle: " + " -> ".join(repr(n) for n in cycle))
        return result

    def check_reference(self, reference: str, own: str, transforms: set[str],
                        recipes: dict[str, Recipe], label: str) -> None:
        entry, step = checkpoint_reference(reference)
        if entry == own:
            self.report(label, "of", f"{reference!r} is this entry itself")
        elif step is not None and entry in recipes:
            kept = sorted({k for point in recipes[entry].points for k in point.checkpoints})
            # an entry whose eval_every was refused keeps none; that is said already
            if step not in kept and (kept or recipes[entry].save_every is None):
                self.report(label, "of", f"{entry!r} keeps no checkpoint at step {step} "
                            + (f"(steps: {', '.join(map(str, kept))})" if kept else
                               "(it has no 'eval_every')"))
        elif step is not None and entry in transforms:
            self.report(label, "of", f"{entry!r} is a transform entry; only a tuner entry "
                                     "keeps checkpoints")
        elif step is not None or (entry not in recipes and entry not in transforms):
            known = ", ".join(repr(n) for n in [*recipes, *sorted(transforms - {own})]) or "none"
            self.report(label, "of", f"no tuner entry is named {entry!r}" if step is not None
                        else f"no tuner or transform entry is named {entry!r} (entries: {known})")

    def check_names(self, recipes: dict[str, Recipe],
                    transforms: dict[str, TransformRecipe]) -> None:
        """Every variant name unique, and every combined transform made of variants of one
        parent: swept values that read alike, or an entry named like another's sweep
        point, would make two variants of one name."""
        seen: dict[str, str] = {}
        reported: set[str] = set()  # one line per entry, however many names clash
        for node in expand(recipes, transforms):
            entry = (node.transform or node.recipe).entry.name
            if node.transform is not None and node.transform.combines and entry not in reported:
                component = node.transform.entry
                try:
                    component.cls.check_sources(component.options, len(node.sources))
                except ValueError as exc:
                    reported.add(entry)
                    self.report(self.labels[entry], "options", f"{exc} ({len(node.sources)} "
                                "source variants: " + ", ".join(repr(s.name) for s in node.sources)
                                + ")")
                same, _ = common_parent(list(node.sources))
                if not same and entry not in reported:
                    reported.add(entry)
                    made_of = ", ".join(f"{s.name!r} of {s.parent.name if s.parent else 'the base'!r}"
                                        for s in node.sources)
                    self.report(self.labels[entry], "of", "combines variants made of different "
                                f"parents ({made_of}); they must share one")
            if node.name in seen and entry not in reported:
                reported.add(entry)
                other = seen[node.name]
                alike = " (swept values that read alike)" if node.transform is None else ""
                self.report(self.labels[entry], "name",
                            f"makes a variant named {node.name!r} twice{alike}" if other == entry
                            else f"makes a variant named {node.name!r}, as entry {other!r} does")
            seen.setdefault(node.name, entry)
