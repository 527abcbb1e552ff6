"""Suite files: TOML in, a validated :class:`Suite` out, or every problem at once.

Each problem is one line naming the file, the table (with its index and name)
and the field. Data paths are relative to the suite file, and so is the store.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.components import Role
from harness.errors import UserError, first_line
from harness.plugins import PluginHost

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
#: ``lm_eval:hellaswag``-style references are passed to the component as they are.
NAMED_REFERENCE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?:(?!/)")


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteSection(_Table):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    store: str | None = None
    seed: int = 0
    reporters: list[str] = ["console"]
    #: distributions (plugins) the suite needs, as requirement strings: "pkg>=0.2"
    requires: list[str] = []


class ModelEntry(_Table):
    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(min_length=1)
    trust_remote_code: bool = False


class TunerEntry(_Table):
    name: str = Field(pattern=NAME_PATTERN)
    method: str = Field(min_length=1)
    data: str = Field(min_length=1)
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _not_base(cls, value: str) -> str:
        if value == "base":
            raise ValueError("'base' is reserved for the untouched model")
        return value


class EvaluatorEntry(_Table):
    name: str = Field(pattern=NAME_PATTERN)
    kind: str = Field(min_length=1)
    data: str = Field(min_length=1)
    role: Role | None = None  # default: the evaluator class's `default_role`, else general
    options: dict[str, Any] = {}


class ComponentChoice(_Table):
    kind: str = Field(min_length=1)
    options: dict[str, Any] = {}


class ContaminationSection(_Table):
    """``[contamination]``: how evaluation items are checked against the tuning data and
    under each variant (harness/contamination.py)."""

    #: word n-gram length of the overlap check (lm-eval's and the GPT-3 report's 13)
    ngram: int = Field(default=13, ge=1, le=64)
    #: flag an item when more than this share of its n-grams is in the data (0: any)
    min_overlap: float = Field(default=0.0, ge=0, lt=1)
    #: score every item with Min-K% and Min-K%++ under the base and each variant
    membership: bool = True
    #: the share of lowest-scoring tokens that Min-K% and Min-K%++ average
    k: float = Field(default=0.2, gt=0, le=1)
    #: flag an item whose Min-K%++ rise lies this many robust deviations above the median
    z: float = Field(default=3.0, gt=0)


class SuiteFile(_Table):
    suite: SuiteSection
    models: list[ModelEntry] = Field(min_length=1)
    tuners: list[TunerEntry] = []
    evaluators: list[EvaluatorEntry] = Field(min_length=1)
    backend: ComponentChoice = ComponentChoice(kind="hf")
    executor: ComponentChoice = ComponentChoice(kind="local")
    contamination: ContaminationSection = ContaminationSection()


@dataclass(frozen=True)
class ResolvedComponent:
    """A suite entry with its data path resolved and its options validated."""

    name: str
    kind: str  # the registered component name (tuner method, evaluator kind, ...)
    options: Any  # the component's validated Options instance
    raw_options: dict[str, Any]
    data: str | None = None
    role: str | None = None


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

    @property
    def base_dir(self) -> Path:
        return self.path.parent


_TABLE_LABEL = {
    "suite": "[suite]",
    "models": "[[models]]",
    "tuners": "[[tuners]]",
    "evaluators": "[[evaluators]]",
    "backend": "[backend]",
    "executor": "[executor]",
    "contamination": "[contamination]",
}


def _where(raw: dict[str, Any], loc: tuple[Any, ...]) -> tuple[str, str]:
    """Split a pydantic location into a table label and a dotted field name."""
    if not loc:
        return "(top level)", ""
    table = str(loc[0])
    label = _TABLE_LABEL.get(table, f"[{table}]")
    rest = list(loc[1:])
    if rest and isinstance(rest[0], int):
        index = rest.pop(0)
        entry = raw.get(table, [])
        name = entry[index].get("name") if index < len(entry) and isinstance(entry[index], dict) else None
        label += f" #{index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
    return label, ".".join(str(part) for part in rest)


def _line(path: Path, label: str, field: str, message: str) -> str:
    where = f"{path}: {label}"
    if field:
        where += f" field {field!r}"
    return f"{where}: {message}"


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such suite file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: TOML syntax error: {exc}") from None


def load_suite(path: str | Path, host: PluginHost) -> Suite:
    """Parse and validate a suite file; raise :class:`UserError` listing every problem."""
    path = Path(path).resolve()
    raw = read_toml(path)
    try:
        parsed = SuiteFile.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            label, field = _where(raw, tuple(error["loc"]))
            message = error["msg"].removeprefix("Value error, ")
            if error["loc"] in (("models",), ("evaluators",)) and error["type"] in (
                    "missing", "too_short"):  # an empty matrix
                message = f"at least one {label} entry is required"
            lines.append(_line(path, label, field, message))
        raise UserError(*lines) from None
    return _resolve(path, parsed, host)


def store_path(suite_file: Path, name: str, store: str | None) -> Path:
    """Where a suite's store lives: its ``[suite] store``, else ``results/<name>.duckdb``,
    relative to the suite file's folder."""
    return (suite_file.parent / (store or f"results/{name}.duckdb")).resolve()


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


def check_rows(cls: Any, path: Path, options: Any) -> None:
    """Read every row of a component's data file: with its ``check_data(path, options)``
    when it has one, else with its row schema ``Rows`` (a DataError names the bad line)."""
    if hasattr(cls, "check_data"):
        cls.check_data(path, options)
    elif getattr(cls, "Rows", None) is not None:
        from harness.data import read_jsonl

        read_jsonl(path, cls.Rows)


def _resolve(path: Path, parsed: SuiteFile, host: PluginHost) -> Suite:
    host.registry()  # a plugin registering a name twice is one error, before any field
    problems: list[str] = []
    base_dir = path.parent

    def problem(label: str, field: str, message: str) -> None:
        problems.append(_line(path, label, field, message))

    for requirement in parsed.suite.requires:
        message = unmet_requirement(requirement)
        if message:
            problem("[suite]", "requires", message)

    for table in ("models", "tuners", "evaluators"):
        seen: dict[str, int] = {}
        for index, entry in enumerate(getattr(parsed, table)):
            if entry.name in seen:
                problem(
                    f"{_TABLE_LABEL[table]} #{index + 1} ({entry.name!r})",
                    "name",
                    f"duplicate name, first used by entry #{seen[entry.name] + 1}",
                )
            seen.setdefault(entry.name, index)

    def component(kind: str, name: str, label: str, field: str) -> Any | None:
        try:
            cls = host.component(kind, name).component
        except UserError as exc:
            problem(label, field, str(exc))
            return None
        for module, install in getattr(cls, "needs_packages", {}).items():
            if importlib.util.find_spec(module) is None:
                problem(label, field, f"the {kind} {name!r} needs the Python package "
                                      f"{module!r}, which is not installed: {install}")
        return cls

    def options(cls: Any, values: dict[str, Any], label: str) -> Any:
        options_model = getattr(cls, "Options", None)
        if options_model is None:
            if values:
                problem(label, "options", "this component takes no options")
            return None
        try:
            return options_model.model_validate(values)
        except ValidationError as exc:
            for error in exc.errors():
                field = ".".join(["options", *(str(p) for p in error["loc"])])
                problem(label, field, error["msg"].removeprefix("Value error, "))
            return None

    def data_path(value: str, label: str) -> str:
        if NAMED_REFERENCE.match(value):
            return value
        resolved = (base_dir / value).resolve()
        if not resolved.exists():
            problem(label, "data", f"no such file or folder: {value}")
        elif resolved.is_file() and resolved.stat().st_size == 0:
            problem(label, "data", f"data file is empty: {value}")
        return str(resolved)

    def entries(table: str, kind: str, field: str) -> list[ResolvedComponent]:
        """Resolve each [[tuners]] or [[evaluators]] entry: component, data, options."""
        resolved = []
        for index, entry in enumerate(getattr(parsed, table)):
            label = f"{_TABLE_LABEL[table]} #{index + 1} ({entry.name!r})"
            name = getattr(entry, field)
            cls = component(kind, name, label, field)
            data = data_path(entry.data, label)
            opts = options(cls, entry.options, label) if cls is not None else None
            file = Path(data)
            if opts is not None and file.is_file() and file.stat().st_size > 0:
                try:  # every row of a data file is read now, before anything runs
                    check_rows(cls, file, opts)
                except UserError as exc:
                    for line in exc.lines:
                        problem(label, "data", line)
            role = None
            if table == "evaluators":  # the suite's role, else the evaluator kind's own default
                role = entry.role or getattr(cls, "default_role", "general")
            resolved.append(ResolvedComponent(entry.name, name, opts, entry.options, data, role))
        return resolved

    tuners = entries("tuners", "tuner", "method")
    evaluators = entries("evaluators", "evaluator", "kind")

    for index, entry in enumerate(parsed.models):
        prefix = entry.source.split(":", 1)[0] if NAMED_REFERENCE.match(entry.source) else None
        if prefix is not None:
            component("model_source", prefix, f"[[models]] #{index + 1} ({entry.name!r})", "source")

    chosen = {}
    for kind in ("backend", "executor"):
        choice: ComponentChoice = getattr(parsed, kind)
        cls = component(kind, choice.kind, f"[{kind}]", "kind")
        opts = options(cls, choice.options, f"[{kind}]") if cls is not None else None
        chosen[kind] = ResolvedComponent(choice.kind, choice.kind, opts, choice.options)

    reporters = []
    for name in parsed.suite.reporters:
        cls = component("reporter", name, "[suite]", "reporters")
        opts = options(cls, {}, "[suite]") if cls is not None else None
        reporters.append(ResolvedComponent(name, name, opts, {}))

    if problems:
        raise UserError(*problems)

    return Suite(
        path=path,
        name=parsed.suite.name,
        seed=parsed.suite.seed,
        store_path=store_path(path, parsed.suite.name, parsed.suite.store),
        models=parsed.models,
        tuners=tuners,
        evaluators=evaluators,
        backend=chosen["backend"],
        executor=chosen["executor"],
        reporters=reporters,
        contamination=parsed.contamination,
    )
