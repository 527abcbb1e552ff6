"""The suite file's schema: TOML in, a :class:`SuiteFile` (every table and field checked by
pydantic) out, or every problem at once, one line each naming the file, the table (with
its index and name) and the field.
"""

from __future__ import annotations

import math
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StringConstraints,
                      ValidationError, field_validator)

from harness.data import kind_of, stat_or_problem
from harness.errors import UserError, validation_problems
from harness.records import Role

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def not_base(value: str) -> str:
    """A tuner or transform entry may not be named ``base``: its variants would be."""
    if value == "base":
        raise ValueError("'base' is reserved for the untouched model")
    return value


def _not_finite_at(value: Any, where: str = "") -> str | None:
    """Where in ``value`` (a dotted key path, "" for itself) a number is inf or nan, if anywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        found = _not_finite_at(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def finite(value: Any) -> Any:
    """A value of ``options`` or ``sweep``, with every number in it finite: TOML has ``inf``
    and ``nan``, which no learning rate, epoch count or threshold means. Checked here, for
    every component (a plugin's ``Options`` included), as pydantic's ``allow_inf_nan=False``
    checks the suite's own number fields."""
    where = _not_finite_at(value)
    if where is not None:
        raise ValueError("Input should be a finite number" + (f" (at {where!r})" if where else ""))
    return value


#: an option's value: any TOML value whose numbers are finite
OptionValue = Annotated[Any, AfterValidator(finite)]
OptionTable = dict[str, OptionValue]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SuiteSection(_Table):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    store: str | None = None
    seed: int = Field(default=0, ge=0, lt=2**32)  # numpy's and torch's seed range
    reporters: list[str] = ["console"]
    #: distributions (plugins) the suite needs, as requirement strings: "pkg>=0.2"
    requires: list[str] = []


class ModelEntry(_Table):
    name: str = Field(pattern=NAME_PATTERN)
    #: stripped: a blank source is missing, not a hub id " "
    source: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    trust_remote_code: bool = False


class TunerEntry(_Table):
    name: str = Field(pattern=NAME_PATTERN)
    method: str = Field(min_length=1)
    data: str = Field(min_length=1)
    options: OptionTable = {}
    #: train on top of this tuner entry's variants instead of the base
    from_: str | None = Field(default=None, alias="from", min_length=1)
    #: replicates that differ only by seed; default: the suite's seed
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] | None = Field(default=None, min_length=1)
    #: option name -> values: one variant per combination (cartesian product)
    sweep: dict[str, Annotated[list[OptionValue], Field(min_length=1)]] = {}
    #: keep the state every N steps; each becomes a variant ``<name>@step<k>``
    eval_every: int | None = Field(default=None, gt=0)
    #: evaluate the checkpoints with these evaluators only; default: all of them
    checkpoint_evaluators: list[str] | None = Field(default=None, min_length=1)

    @field_validator("sweep")
    @classmethod
    def _distinct_values(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for option, values in value.items():
            seen: list[Any] = []
            for item in values:
                if item in seen:
                    raise ValueError(f"{option!r} lists {item!r} twice; each value makes one "
                                     "variant")
                seen.append(item)
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        repeated = sorted({seed for seed in value or [] if value.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice; a replicate needs its own seed")
        return value

    _not_base = field_validator("name")(not_base)


class TransformEntry(_Table):
    """``[[transforms]]``: variants made of variants without training."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: str = Field(min_length=1)
    #: tuner or transform entries (each of their variants is used), or a checkpoint of a
    #: tuner entry's variants as ``entry@step<k>``
    of: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    options: OptionTable = {}

    @field_validator("of", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    _not_base = field_validator("name")(not_base)


class EvaluatorEntry(_Table):
    name: str = Field(pattern=NAME_PATTERN)
    kind: str = Field(min_length=1)
    data: str = Field(min_length=1)
    role: Role | None = None  # default: the evaluator class's `default_role`, else general
    options: OptionTable = {}


class ComponentChoice(_Table):
    kind: str = Field(min_length=1)
    options: OptionTable = {}


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


class GateSection(_Table):
    """``[gate]``: may a variant ship? (harness/analysis/gate.py, docs/experiments.md)"""

    #: family-wise error rate, Holm-corrected across the run's variants x evaluators
    alpha: float = Field(default=0.05, gt=0, lt=1)
    #: forgetting tolerated, in each evaluator's item-score units, positive = worse; one
    #: number for every evaluator, or a table of evaluator name -> number
    max_loss: float | dict[str, float] = 0.01
    #: gate on these evaluators only (general and safety ones); default: all of them
    evaluators: list[str] | None = Field(default=None, min_length=1)

    @field_validator("max_loss", mode="before")
    @classmethod
    def _loss_table(cls, value: Any) -> float | dict[str, float]:
        """One message for any wrong shape, rather than one per member of the union."""
        def number(x: Any) -> bool:
            return (isinstance(x, (int, float)) and not isinstance(x, bool)
                    and math.isfinite(x) and x >= 0)

        if number(value) or isinstance(value, dict) and all(number(v) for v in value.values()):
            return value
        raise ValueError("must be a finite number >= 0, or a table of evaluator name -> "
                         "finite number >= 0")


class SuiteFile(_Table):
    suite: SuiteSection
    models: list[ModelEntry] = Field(min_length=1)
    tuners: list[TunerEntry] = []
    transforms: list[TransformEntry] = []
    evaluators: list[EvaluatorEntry] = Field(min_length=1)
    backend: ComponentChoice = ComponentChoice(kind="hf")
    executor: ComponentChoice = ComponentChoice(kind="local")
    contamination: ContaminationSection = ContaminationSection()
    gate: GateSection = GateSection()


TABLE_LABEL = {
    "suite": "[suite]",
    "models": "[[models]]",
    "tuners": "[[tuners]]",
    "transforms": "[[transforms]]",
    "evaluators": "[[evaluators]]",
    "backend": "[backend]",
    "executor": "[executor]",
    "contamination": "[contamination]",
    "gate": "[gate]",
}


def where(raw: dict[str, Any], loc: tuple[Any, ...]) -> tuple[str, str]:
    """Split a pydantic location into a table label and a dotted field name."""
    if not loc:
        return "(top level)", ""
    table = str(loc[0])
    label = TABLE_LABEL.get(table, f"[{table}]")
    rest = list(loc[1:])
    if rest and isinstance(rest[0], int):
        index = rest.pop(0)
        entry = raw.get(table, [])
        name = entry[index].get("name") if index < len(entry) and isinstance(entry[index], dict) else None
        label += f" #{index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
    return label, ".".join(str(part) for part in rest)


def problem_line(path: Path, label: str, field: str, message: str) -> str:
    where = f"{path}: {label}"
    if field:
        where += f" field {field!r}"
    return f"{where}: {message}"


def suite_path_problem(path: Path) -> str | None:
    """Why ``path`` is not a suite file to read, without opening it (a FIFO would block)."""
    info = stat_or_problem(path)
    if info == "missing":
        return "no such suite file"
    if info == "is a symlink loop":
        return "is a symlink loop, not a suite file"
    if isinstance(info, str):
        return info
    if not stat.S_ISREG(info.st_mode):
        return f"is {kind_of(info.st_mode)}, not a suite file"
    return None


def read_toml(path: Path) -> dict[str, Any]:
    problem = suite_path_problem(path)
    if problem:
        raise UserError(f"{path}: {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    # a byte order mark, as some Windows editors write UTF-8; TOML does not allow one
    text = text.removeprefix("\ufeff")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: TOML syntax error: {exc}") from None


def parse_suite_file(path: Path) -> SuiteFile:
    """Read and check a suite file's tables and fields."""
    raw = read_toml(path)
    try:
        return SuiteFile.model_validate(raw)
    except ValidationError as exc:
        lines = []
        # the location splits into a table label and a field here; the message is the shared one
        for error, (_, message) in zip(exc.errors(), validation_problems(exc)):
            label, field = where(raw, tuple(error["loc"]))
            if error["loc"] in (("models",), ("evaluators",)) and error["type"] in (
                    "missing", "too_short"):  # an empty matrix
                message = f"at least one {label} entry is required"
            lines.append(problem_line(path, label, field, message))
        raise UserError(*lines) from None


def store_path(suite_file: Path, name: str, store: str | None) -> Path:
    """Where a suite's store lives: its ``[suite] store``, else ``results/<name>.duckdb``,
    relative to the suite file's folder."""
    return (suite_file.parent / (store or f"results/{name}.duckdb")).resolve()


