"""A suite file resolved against the plugins: every component found, its options
validated (nested ones too), every data row read, or every problem at once.

Each problem is one line naming the file, the table (with its index and name) and the
field. Data paths are relative to the suite file, and so is the store.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.data import stat_problem
from harness.errors import UserError, first_line, validation_problems
from harness.experiment import ExperimentResolver
from harness.keys import NAMED_REFERENCE
from harness.lineage import Recipe, TransformRecipe, expand
from harness.plugins import PluginHost
from harness.records import ResolvedComponent
from harness.store_location import store_name_problem, store_problem
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
    #: each transform entry, by name
    transforms: dict[str, TransformRecipe] = field(default_factory=dict)

    @property
    def variants_per_model(self) -> int:
        """The base and every variant the suite makes of one model (tuned, checkpoints,
        transformed)."""
        return 1 + len(expand(self.recipes, self.transforms))

    @property
    def cells_per_model(self) -> int:
        """Variants x evaluators: checkpoints only by their ``checkpoint_evaluators``."""
        count = len(self.evaluators)  # the base's
        for node in expand(self.recipes, self.transforms):
            chosen = node.recipe.checkpoint_evaluators if node.origin == "checkpoint" else None
            count += len(chosen) if chosen else len(self.evaluators)
        return count

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load_suite(path: str | Path, host: PluginHost) -> Suite:
    """Parse and validate a suite file; raise :class:`UserError` listing every problem."""
    # realpath, not Path.resolve: a symlink loop is then named by read_toml, not a RuntimeError
    path = Path(os.path.realpath(path))
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
        for tables in (("models",), ("tuners", "transforms"), ("evaluators",)):
            seen: dict[str, str] = {}  # tuners and transforms share one namespace (`of`)
            for table in tables:
                for index, entry in enumerate(getattr(parsed, table)):
                    here = f"{TABLE_LABEL[table]} #{index + 1}"
                    if entry.name in seen:
                        self.problem(f"{here} ({entry.name!r})", "name",
                                     f"duplicate name, first used by {seen[entry.name]}")
                    seen.setdefault(entry.name, here)

        tuners = self.entries(parsed, "tuners", "tuner", "method")
        evaluators = self.entries(parsed, "evaluators", "evaluator", "kind")
        experiment = ExperimentResolver(parsed, self.problem)
        recipes = experiment.recipes(tuners, [e.name for e in evaluators])
        transforms = experiment.transforms(
            [self.choice("transform", entry.kind, entry.options,
                         f"[[transforms]] #{index + 1} ({entry.name!r})", "kind", entry.name)
             for index, entry in enumerate(parsed.transforms)], recipes)
        if not self.problems and (recipes or transforms):
            experiment.check_names(recipes, transforms)
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
        self.check_store(parsed)
        if self.problems:
            raise UserError(*self.problems)
        return Suite(
            path=self.path, name=parsed.suite.name, seed=parsed.suite.seed,
            store_path=store_path(self.path, parsed.suite.name, parsed.suite.store),
            models=parsed.models, tuners=tuners, evaluators=evaluators,
            backend=chosen["backend"], executor=chosen["executor"], reporters=reporters,
            contamination=parsed.contamination, rewards=self.host.classes("reward"),
            recipes=recipes, gate=parsed.gate, transforms=transforms,
        )

    def check_store(self, parsed: SuiteFile) -> None:
        """The store can be opened, or made, and written where the suite puts it: checked
        now, since a run would find out only after taking the store's lock."""
        section = parsed.suite
        try:
            path = store_path(self.path, section.name, section.store)
        except (OSError, RuntimeError) as exc:  # resolving a symlink loop
            self.problem("[suite]", "store", f"cannot use the store: {first_line(exc)}")
            return
        default = section.store is None  # results/<name>.duckdb, named after the suite
        problem = store_name_problem(path)
        if problem:
            self.problem("[suite]", "name" if default else "store", problem + (
                "; choose a shorter [suite] name or set [suite] store" if default else ""))
            return
        problem = store_problem(path, write=True)
        if problem:
            self.problem("[suite]", "store", f"{path}: {problem}" + (
                " (the default store; [suite] store chooses another)" if default else ""))

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
               field: str, entry: str | None = None) -> ResolvedComponent:
        cls = self.component(kind, name, label, field)
        opts = self.options(cls, values, label) if cls is not None else None
        return ResolvedComponent(entry or name, name, cls, opts, values)

    def data_path(self, value: str, label: str) -> str | None:
        """The absolute path of a ``data`` field (a named reference as it is), or None after
        a problem: data is a regular file within the size limit or a folder, never read
        here when it is anything else (a FIFO would block, /dev/zero would never end)."""
        if NAMED_REFERENCE.match(value):
            return value
        if "\0" in value:  # TOML's "\u0000": no file system takes it
            self.problem(label, "data", f"a path may not hold a NUL character: {value!r}")
            return None
        # realpath, not Path.resolve: a symlink loop is a problem to name, not a RuntimeError
        resolved = os.path.realpath(self.base_dir / value)
        problem = stat_problem(resolved, folders=True)
        if problem:
            self.problem(label, "data", f"{problem}: {value}")
            return None
        if os.path.isfile(resolved) and os.path.getsize(resolved) == 0:
            self.problem(label, "data", f"data file is empty: {value}")
            return None
        return resolved

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
            if opts is not None and data is not None and not NAMED_REFERENCE.match(data):
                # every row of a data file is read now, before anything runs; a folder goes to
                # the kind too, which refuses it unless it reads folders (a task folder)
                try:
                    cls.check_data(Path(data), opts)
                except UserError as exc:
                    for line in exc.lines:
                        self.problem(label, "data", line)
            role = None
            if table == "evaluators":  # the suite's role, else the evaluator kind's own default
                role = entry.role or (cls.default_role if cls is not None else "general")
            resolved.append(ResolvedComponent(entry.name, name, cls, opts, entry.options,
                                              data or entry.data, role))
        return resolved
