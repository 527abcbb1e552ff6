"""A suite file resolved against the plugins: every component found, its options
validated (nested ones too), every data row read, or every problem at once.

Each problem is one line naming the file, the table (with its index and name) and the
field. Data paths are relative to the suite file, and so is the store.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import UserError, first_line, validation_problems
from harness.keys import NAMED_REFERENCE
from harness.lineage import Recipe, SweepPoint, expand, find_cycle
from harness.plugins import PluginHost
from harness.records import ResolvedComponent
from harness.suite_file import (
    TABLE_LABEL,
    ComponentChoice,
    ContaminationSection,
    GateSection,
    ModelEntry,
    SuiteFile,
    parse_suite_file,
    problem_line,
    store_path,
)


@dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    seed: int
    store_path: Path
    models: list[ModelEntry]
    tuners: list[ResolvedComponent]
    evaluators: list[ResolvedComponent]
    backend: ResolvedComponent
    executor: ResolvedComponent
    reporters: list[ResolvedComponent]
    contamination: ContaminationSection = field(default_factory=ContaminationSection)
    #: every registered reward class by name, for tuners that optimise one
    rewards: dict[str, Any] = field(default_factory=dict)
    #: each tuner entry as a recipe (parent, sweep points, seeds), by entry name
    recipes: dict[str, Recipe] = field(default_factory=dict)
    gate: GateSection = field(default_factory=GateSection)

    @property
    def variants_per_model(self) -> int:
        """The base and every tuned variant the suite makes of one model."""
        return 1 + len(expand(self.recipes))

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load_suite(path: str | Path, host: PluginHost) -> Suite:
    """Parse and validate a suite file; raise :class:`UserError` listing every problem."""
    path = Path(path).resolve()
    parsed = parse_suite_file(path)
    return _Resolver(path, host).resolve(parsed)


def unmet_requirement(text: str) -> str | None:
    """Why an installed-distribution requirement ("harness-plugin-example>=0.1") is not
    met, or None when it is. Uses packaging's requirement syntax and version rules."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        return f"{text!r} is not a requirement: {first_line(exc)}"
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        return f"{text} is not installed (pip install {str(requirement)!r})"
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        return f"{text} is needed, {requirement.name} {installed} is installed"
    return None


class _Resolver:
    """Resolves one suite file, collecting every problem before raising them together."""

    def __init__(self, path: Path, host: PluginHost) -> None:
        self.path, self.host = path, host
        self.base_dir = path.parent
        self.problems: list[str] = []

    def problem(self, label: str, field: str, message: str) -> None:
        self.problems.append(problem_line(self.path, label, field, message))

    def resolve(self, parsed: SuiteFile) -> Suite:
        self.host.registry()  # a plugin registering a name twice is one error, before any field
        for requirement in parsed.suite.requires:
            message = unmet_requirement(requirement)
            if message:
                self.problem("[suite]", "requires", message)
        for table in ("models", "tuners", "evaluators"):
            seen: dict[str, int] = {}
            for index, entry in enumerate(getattr(parsed, table)):
                if entry.name in seen:
                    self.problem(f"{TABLE_LABEL[table]} #{index + 1} ({entry.name!r})", "name",
                                 f"duplicate name, first used by entry #{seen[entry.name] + 1}")
                seen.setdefault(entry.name, index)

        tuners = self.entries(parsed, "tuners", "tuner", "method")
        recipes = self.recipes(parsed, tuners)
        evaluators = self.entries(parsed, "evaluators", "evaluator", "kind")
        self.check_gate(parsed.gate, evaluators)
        for index, entry in enumerate(parsed.models):
            if NAMED_REFERENCE.match(entry.source):
                self.component("model_source", entry.source.split(":", 1)[0],
                               f"[[models]] #{index + 1} ({entry.name!r})", "source")
        chosen = {}
        for kind in ("backend", "executor"):
            choice: ComponentChoice = getattr(parsed, kind)
            chosen[kind] = self.choice(kind, choice.kind, choice.options, f"[{kind}]", "kind")
        reporters = [self.choice("reporter", name, {}, "[suite]", "reporters")
                     for name in parsed.suite.reporters]
        if self.problems:
            raise UserError(*self.problems)
        return Suite(
            path=self.path, name=parsed.suite.name, seed=parsed.suite.seed,
            store_path=store_path(self.path, parsed.suite.name, parsed.suite.store),
            models=parsed.models, tuners=tuners, evaluators=evaluators,
            backend=chosen["backend"], executor=chosen["executor"], reporters=reporters,
            contamination=parsed.contamination, rewards=self.host.classes("reward"),
            recipes=recipes, gate=parsed.gate,
        )

    def recipes(self, parsed: SuiteFile, tuners: list[ResolvedComponent]) -> dict[str, Recipe]:
        """Each tuner entry's parent, sweep points and seeds, checked: ``from`` names an
        entry and makes no cycle; every swept option exists and takes every value."""
        parents = {entry.name: entry.from_ for entry in parsed.tuners}
        labels = {entry.name: f"[[tuners]] #{index + 1} ({entry.name!r})"
                  for index, entry in enumerate(parsed.tuners)}
        for name, parent in parents.items():
            if parent is not None and parent not in parents:
                known = ", ".join(repr(n) for n in parents if n != name) or "none"
                self.problem(labels[name], "from", f"no tuner entry is named {parent!r} "
                                                   f"(tuner entries: {known})")
        cycle = find_cycle({n: p if p in parents else None for n, p in parents.items()})
        if cycle:
            self.problem(labels[cycle[0]], "from",
                         "'from' makes a cycle: " + " -> ".join(repr(n) for n in cycle))
        recipes = {}
        for entry, tuner in zip(parsed.tuners, tuners):
            points = self.sweep_points(entry.sweep, tuner, labels[entry.name])
            seeds = tuple(entry.seeds) if entry.seeds else (parsed.suite.seed,)
            recipes[entry.name] = Recipe(tuner, entry.from_, seeds, tuple(points))
        if not self.problems and recipes:
            self.check_names(recipes, labels)
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
                self.problem(label, f"sweep.{option}", f"the tuner {tuner.kind!r} has no option "
                                                       f"{option!r} (options: {', '.join(known)})")
                fine = False
            elif option in tuner.raw_options:
                self.problem(label, f"sweep.{option}", "set in 'options' and swept; keep one")
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
                        self.problem(label, *line)
        return points if len(points) == math.prod(len(v) for v in sweep.values()) else []

    def check_names(self, recipes: dict[str, Recipe], labels: dict[str, str]) -> None:
        """Every variant name unique: swept values that read the same, or an entry named
        like another's sweep point, would make two variants of one name."""
        seen: dict[str, str] = {}
        reported: set[str] = set()  # one line per entry, however many names clash
        for node in expand(recipes):
            entry, name = node.recipe.entry.name, node.name
            if name in seen and entry not in reported:
                reported.add(entry)
                other = seen[name]
                self.problem(labels[entry], "name", f"makes a variant named {name!r} twice "
                             "(swept values that read alike)" if other == entry else
                             f"makes a variant named {name!r}, as entry {other!r} does")
            seen.setdefault(name, entry)

    def check_gate(self, gate: GateSection, evaluators: list[ResolvedComponent]) -> None:
        """``[gate]`` names only general and safety evaluators of this suite."""
        roles = {e.name: e.role for e in evaluators}
        named = [("evaluators", name) for name in gate.evaluators or []]
        if isinstance(gate.max_loss, dict):
            named += [(f"max_loss.{name}", name) for name in gate.max_loss]
        for field_name, name in named:
            if name not in roles:
                self.problem("[gate]", field_name, f"no evaluator is named {name!r}")
            elif roles[name] not in ("general", "safety"):
                self.problem("[gate]", field_name, f"{name!r} is a {roles[name]} evaluator; the "
                                                   "gate judges general and safety ones")

    def component(self, kind: str, name: str, label: str, field: str) -> Any | None:
        """The registered class, with its optional packages checked; None after a problem."""
        try:
            cls = self.host.component(kind, name).cls
        except UserError as exc:
            self.problem(label, field, str(exc))
            return None
        for module, install in cls.needs_packages.items():
            if importlib.util.find_spec(module) is None:
                self.problem(label, field, f"the {kind} {name!r} needs the Python package "
                                           f"{module!r}, which is not installed: {install}")
        return cls

    def options(self, cls: Any, values: dict[str, Any], label: str,
                prefix: str = "options", suffix: str = "") -> Any:
        """``values`` validated by the class's ``Options``; None after a problem."""
        try:
            return cls.Options.model_validate(values)
        except ValidationError as exc:
            for dotted, message in validation_problems(exc, prefix):
                self.problem(label, dotted, message + suffix)
            return None

    def choice(self, kind: str, name: str, values: dict[str, Any], label: str,
               field: str) -> ResolvedComponent:
        cls = self.component(kind, name, label, field)
        opts = self.options(cls, values, label) if cls is not None else None
        return ResolvedComponent(name, name, cls, opts, values)

    def data_path(self, value: str, label: str) -> str:
        if NAMED_REFERENCE.match(value):
            return value
        resolved = (self.base_dir / value).resolve()
        if not resolved.exists():
            self.problem(label, "data", f"no such file or folder: {value}")
        elif resolved.is_file() and resolved.stat().st_size == 0:
            self.problem(label, "data", f"data file is empty: {value}")
        return str(resolved)

    def nested(self, cls: Any, options: Any, label: str) -> None:
        """Components named inside a component's options (a tuner's reward), validated now
        rather than when tuning starts."""
        for nested in cls.nested_components(options):
            inner = self.component(nested.kind, nested.name, label, nested.name_field)
            if inner is not None:
                self.options(inner, nested.options, label, prefix=nested.options_field,
                             suffix=f" ({nested.kind} {nested.name!r})")

    def entries(self, parsed: SuiteFile, table: str, kind: str,
                field: str) -> list[ResolvedComponent]:
        """Resolve each [[tuners]] or [[evaluators]] entry: component, data, options, rows."""
        resolved = []
        for index, entry in enumerate(getattr(parsed, table)):
            label = f"{TABLE_LABEL[table]} #{index + 1} ({entry.name!r})"
            name = getattr(entry, field)
            cls = self.component(kind, name, label, field)
            data = self.data_path(entry.data, label)
            opts = self.options(cls, entry.options, label) if cls is not None else None
            if opts is not None and kind == "tuner":
                self.nested(cls, opts, label)
            file = Path(data)
            if opts is not None and file.is_file() and file.stat().st_size > 0:
                try:  # every row of a data file is read now, before anything runs
                    cls.check_data(file, opts)
                except UserError as exc:
                    for line in exc.lines:
                        self.problem(label, "data", line)
            role = None
            if table == "evaluators":  # the suite's role, else the evaluator kind's own default
                role = entry.role or (cls.default_role if cls is not None else "general")
            resolved.append(ResolvedComponent(entry.name, name, cls, opts, entry.options,
                                              data, role))
        return resolved
