"""The contract between the host and each kind of component: one base class per kind.

A plugin's class subclasses its kind's base and implements the abstract methods. Every
optional capability is declared here with its default, so the host reads it instead of
probing for it, and :func:`check_component` checks a class against its kind when a plugin
registers it. Nothing here imports torch.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.data import read_jsonl
from harness.records import (
    ROLES,
    EvalResult,
    EvaluatorSpec,
    ReportContext,
    ResolvedModel,
    Role,
    TokenMoments,
    TokenScores,
    TransformJob,
    TransformResult,
    TuneJob,
    TuneResult,
    Unit,
    Variant,
)


class Options(BaseModel):
    """Base class for a component's options table; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Unsupported(TypeError):
    """A backend was asked for an optional capability it does not have."""


@dataclass(frozen=True)
class NestedComponent:
    """A component named inside another's options (GRPO's ``reward`` and
    ``reward_options``): validated with the suite; problems name the two fields."""

    kind: str
    name: str
    options: dict[str, Any]
    #: where the name and the options stand, as the suite spells them
    name_field: str = "options.reward"
    options_field: str = "options.reward_options"


class Component(ABC):
    """What every kind with an ``[options]`` table shares."""

    #: the options model; the host validates the suite's table against it
    Options: ClassVar[type[BaseModel]] = Options
    #: import name -> install hint of optional packages the component needs (checked when
    #: the suite is validated)
    needs_packages: ClassVar[dict[str, str]] = {}

    def __init__(self, options: Any) -> None:
        self.options = options


class _ReadsData:
    """Tuners and evaluators read a data file, checked in full when the suite is validated."""

    #: the row schema of the data file (a :class:`harness.DataRow`), or None
    Rows: ClassVar[type[BaseModel] | None] = None

    @classmethod
    def check_data(cls, path: Path, options: Any) -> None:
        """Read every row of ``path``; raise :class:`harness.DataError` naming a bad line.
        The default reads ``Rows``; override when the schema depends on the options."""
        if cls.Rows is not None:
            read_jsonl(path, cls.Rows)


class Tuner(_ReadsData, Component):
    """Makes a variant of a base model: a peft adapter or a weights folder."""

    @classmethod
    def nested_components(cls, options: Any) -> list[NestedComponent]:
        """Components named in ``options`` (a reward and its options), checked by
        ``harness validate``. Default: none."""
        return []

    @classmethod
    def planned_steps(cls, options: Any, rows: int) -> int | None:
        """The optimiser steps ``tune`` will take with ``options`` on a data file of
        ``rows`` rows; None when it does not train in steps it can count beforehand.

        A tuner that gives a number keeps its state every ``job.save_every`` steps in
        ``TuneResult.checkpoints``; the suite's ``eval_every`` is refused for one that
        gives None. Default: None."""
        return None

    @abstractmethod
    def tune(self, job: TuneJob) -> TuneResult: ...


class Transform(Component):
    """Makes variants of variants without training: interpolation, merges, quantisation.

    A ``[[transforms]]`` entry applies it to each variant of the entries its ``of`` names,
    once per output, or (``combines``) to all of those variants together, once per output.
    """

    #: True: one variant from all the source variants together (a merge)
    combines: ClassVar[bool] = False

    @classmethod
    def outputs(cls, options: Any) -> list[str]:
        """The variants made from each source (or each combination), by label; a label
        ends the variant's name (``sft~interp0.5``). Default: one, labelled ``""``."""
        return [""]

    @classmethod
    def output_key(cls, options: Any, output: str) -> Any:
        """What the variant made for ``output`` depends on (JSON-able), for its key.
        Default: every option. A transform whose options list its outputs (interpolate's
        ``alphas``) gives only what that output uses, so that adding an output leaves the
        others' keys, and their stored cells, as they are."""
        return options.model_dump(mode="json") if isinstance(options, BaseModel) else options

    @classmethod
    def check_sources(cls, options: Any, count: int) -> None:
        """Raise ``ValueError`` when the transform cannot take ``count`` source variants
        at once (a merge whose ``weights`` list another number); the suite is refused with
        the message. Called for a transform that combines. Default: any count."""

    @abstractmethod
    def apply(self, job: TransformJob) -> TransformResult:
        """Write the new variant (a peft adapter or a weights folder) under
        ``job.output_dir``."""


class Evaluator(_ReadsData, Component):
    """Scores the active variant of a backend on its data."""

    #: the role used when the suite's entry gives none
    default_role: ClassVar[Role] = "general"

    @classmethod
    def required_models(cls, options: Any) -> dict[str, str]:
        """Models the evaluator needs besides the one under test (a guard model), as
        purpose -> reference; the host makes them local into ``spec.models``. Default: none."""
        return {}

    def __init__(self, spec: EvaluatorSpec, options: Any) -> None:
        self.spec = spec
        self.options = options

    @abstractmethod
    def evaluate(self, backend: Backend) -> EvalResult: ...


class Reward(Component):
    """Scores completions of prompts; higher is better. Texts, not tokens."""

    @abstractmethod
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]: ...


class Backend(Component):
    """Holds one base model in memory and evaluates it or any of its variants.

    The optional methods below have defaults: :meth:`token_moments` and :meth:`route` return
    None (no membership scores, no route recorded); the others raise :class:`Unsupported`.
    ``supports(name)`` says whether a backend class implements one of them.
    """

    #: the tokenizer of the loaded base, for evaluators that render prompts themselves
    tokenizer: Any = None

    @abstractmethod
    def load(self, model: ResolvedModel) -> None: ...

    @abstractmethod
    def activate(self, variant: Variant) -> None: ...

    @abstractmethod
    def score_texts(self, texts: Sequence[str], stride: int | None = None) -> list[TokenScores]:
        """Log-probability of every token; long texts in rolling windows (lm-eval's)."""

    @abstractmethod
    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[str]: ...

    def close(self) -> None:
        """Free the model; called once when the unit of work is over."""

    def token_moments(self, texts: Sequence[str]) -> list[TokenMoments] | None:
        """Each text's tokens with their log-probabilities and the moments of each
        next-token distribution (for Min-K%++). None: not supported, membership scores
        stay empty."""
        return None

    def route(self) -> dict[str, Any] | None:
        """How the active variant is served (``path`` goes to ``cells.backend_path``, the
        rest to ``cells.info``); None records nothing."""
        return None

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """Full next-token log-distributions (tensors) over each (prompt, continuation)'s
        continuation tokens."""
        raise Unsupported(f"{type(self).__name__} has no continuation_logprobs")

    def chat_prompt(self, user_text: str) -> str:
        """A user turn in the model's chat template, ready for generation."""
        raise Unsupported(f"{type(self).__name__} has no chat_prompt")

    def as_base(self) -> AbstractContextManager[None]:
        """Within the block, score and generate with the untouched base model."""
        raise Unsupported(f"{type(self).__name__} has no as_base")

    def lm_eval_model(self) -> Any:
        """The model as an lm-eval ``LM``, for lm-eval's tasks."""
        raise Unsupported(f"{type(self).__name__} has no lm_eval_model")

    @classmethod
    def supports(cls, method: str) -> bool:
        """Whether this class implements the optional ``method`` (not the default)."""
        return getattr(cls, method, None) is not getattr(Backend, method, None)


def require_backend(backend: Backend, evaluator: str, *methods: str) -> None:
    """Fail an evaluator's cell clearly when its backend lacks an optional method."""
    missing = [name for name in methods if not type(backend).supports(name)]
    if missing:
        raise Unsupported(f"the {evaluator} evaluator needs a backend with {', '.join(missing)}; "
                          f"{type(backend).__name__} has none")


class ModelSource(ABC):
    """Turns a reference (``builtin:x``, a hub id, a folder) into a local model folder.
    Built with no arguments."""

    needs_packages: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def resolve(self, reference: str, *, base_dir: Path, trust_remote_code: bool) -> Path: ...


class Reporter(Component):
    """Writes something from the store at the end of a run (or on ``harness report``)."""

    @abstractmethod
    def report(self, context: ReportContext) -> None: ...


#: what an executor hands each unit: ``work(unit, emit)``
Work = Callable[[Unit, Callable[[Any], None]], None]


class Executor(Component):
    """Runs units of work and hands each result back to the driver as it comes.

    ``work(unit, emit)`` does one unit; ``emit`` must be called on the driver, which is the
    only process that writes the store. A unit whose worker dies: :func:`harness.fail_cells`.
    """

    @abstractmethod
    def run(self, units: Iterable[Unit], work: Work, emit: Callable[[Any], None]) -> None: ...


#: the base class of each component kind, by the kind's name in the registry
BASES: dict[str, type] = {
    "tuner": Tuner,
    "evaluator": Evaluator,
    "reporter": Reporter,
    "backend": Backend,
    "executor": Executor,
    "model_source": ModelSource,
    "reward": Reward,
    "transform": Transform,
}


def check_component(kind: str, cls: Any) -> list[str]:
    """What is wrong with ``cls`` as a ``kind`` component (empty when nothing is)."""
    base = BASES[kind]
    if not inspect.isclass(cls):
        return [f"is not a class (got {type(cls).__name__})"]
    if not issubclass(cls, base):
        return [f"class {cls.__qualname__} is not a subclass of harness.{base.__name__}"]
    problems = []
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        problems.append(f"class {cls.__qualname__} does not implement "
                        + ", ".join(f"{name}()" for name in missing))
    options = getattr(cls, "Options", None)
    if options is not None and not (inspect.isclass(options) and issubclass(options, BaseModel)):
        problems.append(f"{cls.__qualname__}.Options is not a pydantic model (harness.Options)")
    rows = getattr(cls, "Rows", None)
    if rows is not None and not (inspect.isclass(rows) and issubclass(rows, BaseModel)):
        problems.append(f"{cls.__qualname__}.Rows is not a pydantic model (harness.DataRow)")
    packages = cls.needs_packages
    if not isinstance(packages, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in packages.items()):
        problems.append(f"{cls.__qualname__}.needs_packages is not a dict of import name -> "
                        "install hint")
    if kind == "transform" and not isinstance(cls.combines, bool):
        problems.append(f"{cls.__qualname__}.combines is not a bool")
    role = getattr(cls, "default_role", "general")
    if role not in ROLES:
        problems.append(f"{cls.__qualname__}.default_role {role!r} is not one of "
                        + ", ".join(ROLES))
    return problems
