"""The typed contracts between the host and its plugins.

Plugins register *component classes* (tuners, evaluators, backends, ...); the
host instantiates them with validated options and talks to them only through
the protocols and records below. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from rich.console import Console


class Options(BaseModel):
    """Base class for a component's options table; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# -- models and variants ----------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """A base model made local: a folder with a config, tokenizer and safetensors."""

    name: str
    source: str
    path: Path
    fingerprint: str
    trust_remote_code: bool = False


VariantKind = Literal["base", "adapter", "weights"]


@dataclass(frozen=True)
class Variant:
    """The base itself, or what a tuner made of it (a peft adapter or a weights folder)."""

    name: str
    key: str
    model: ResolvedModel
    kind: VariantKind
    path: Path | None = None
    method: str | None = None


@dataclass
class TrainingRecord:
    """What a tuning run cost and how its loss moved."""

    steps: int
    loss_curve: list[float]
    seconds: float
    train_tokens: int
    peak_memory_mb: float
    trainable_params: int
    total_params: int

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def final_loss(self) -> float | None:
        return self.loss_curve[-1] if self.loss_curve else None


@dataclass
class TuneJob:
    """Everything a tuner needs: the base, its data, where to save, a seed."""

    model: ResolvedModel
    variant_name: str
    data: Path
    output_dir: Path
    seed: int
    #: called after every optimiser step with (step, total_steps, loss)
    on_step: Callable[[int, int, float], None] = lambda step, total, loss: None
    #: every registered reward class by name, for tuners that optimise a reward
    rewards: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuneResult:
    kind: Literal["adapter", "weights"]
    path: Path
    record: TrainingRecord


# -- evaluation ---------------------------------------------------------------

#: ``general`` and ``safety`` scores feed the forgetting view, ``target`` scores are what
#: tuning aimed at, ``monitor`` scores (drift) describe change and feed neither.
Role = Literal["general", "target", "safety", "monitor"]


@dataclass
class Metric:
    name: str
    value: float
    n: int | None = None
    stderr: float | None = None
    higher_is_better: bool = True
    #: the one metric the leaderboard and forgetting view show for an evaluator
    primary: bool = False


@dataclass
class Sample:
    """One evaluated item, kept so that later analysis can pair base and variant."""

    index: int
    item_id: str | None = None
    prompt: str | None = None
    target: str | None = None
    output: str | None = None
    score: float | None = None
    logprobs: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: membership scores of the item's text under the model (set by the runner when the
    #: suite's ``[contamination] membership`` is on; see harness/contamination.py)
    min_k: float | None = None
    min_k_plus: float | None = None


@dataclass
class Alert:
    """A metric that crossed its threshold (a drift monitor's finding)."""

    metric: str
    value: float
    threshold: float
    message: str


@dataclass
class EvalResult:
    metrics: list[Metric]
    samples: list[Sample] = field(default_factory=list)
    #: thresholds crossed; stored in ``alerts`` and sent to ``harness_drift_alert``
    alerts: list[Alert] = field(default_factory=list)
    #: facts about how the scores were made (the judge model used, ...): ``cells.info``
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluatorSpec:
    """An evaluator as the suite declares it, with paths already resolved."""

    name: str
    kind: str
    role: Role
    data: str
    seed: int
    #: models named by the evaluator's ``required_models(options)``, made local by the host
    models: dict[str, ResolvedModel] = field(default_factory=dict)


# -- protocols ------------------------------------------------------------------


@runtime_checkable
class Tuner(Protocol):
    Options: ClassVar[type[Options]]

    def __init__(self, options: Any) -> None: ...

    def tune(self, job: TuneJob) -> TuneResult: ...


@runtime_checkable
class Evaluator(Protocol):
    Options: ClassVar[type[Options]]

    def __init__(self, spec: EvaluatorSpec, options: Any) -> None: ...

    def evaluate(self, backend: Backend) -> EvalResult: ...


@runtime_checkable
class Reward(Protocol):
    """Scores completions of prompts; higher is better. Texts, not tokens."""

    Options: ClassVar[type[Options]]

    def __init__(self, options: Any) -> None: ...

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]: ...


@dataclass
class TokenScores:
    """Log-probabilities of the scored tokens of one text (the first token is context)."""

    token_ids: list[int]
    logprobs: list[float]
    num_bytes: int


@dataclass
class TokenMoments:
    """Per token of one text: its log-probability, and the mean and standard deviation of
    the log-probability under the model's next-token distribution there (for Min-K%++)."""

    logprobs: list[float]
    means: list[float]
    stds: list[float]


@runtime_checkable
class Backend(Protocol):
    """Holds one base model in memory and evaluates it or any of its variants."""

    Options: ClassVar[type[Options]]

    def __init__(self, options: Any) -> None: ...

    def load(self, model: ResolvedModel) -> None: ...

    def activate(self, variant: Variant) -> None: ...

    def score_texts(self, texts: Sequence[str], stride: int | None = None) -> list[TokenScores]:
        """Log-probability of every token; long texts in rolling windows (lm-eval's)."""

    def token_moments(self, texts: Sequence[str]) -> list[TokenMoments]:
        """Each text's tokens (up to the context length) with their log-probabilities and
        the moments of each next-token distribution: what membership scores need. Optional:
        without it the runner leaves the membership scores empty."""

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """Full next-token log-distributions (tensors) over each (prompt, continuation)'s
        continuation tokens."""

    def chat_prompt(self, user_text: str) -> str:
        """A user turn in the model's chat template, ready for generation."""

    def as_base(self) -> AbstractContextManager[None]:
        """Within the block, score and generate with the untouched base model."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]: ...

    def lm_eval_model(self) -> Any: ...

    def close(self) -> None: ...


@runtime_checkable
class ModelSource(Protocol):
    """Turns a reference (``builtin:x``, a hub id, a folder) into a local model folder."""

    def resolve(self, reference: str, *, base_dir: Path, trust_remote_code: bool) -> Path: ...


@dataclass
class ReportContext:
    store_path: Path
    run_id: str | None
    suite_name: str
    console: Console


@runtime_checkable
class Reporter(Protocol):
    Options: ClassVar[type[Options]]

    def __init__(self, options: Any) -> None: ...

    def report(self, context: ReportContext) -> None: ...


@runtime_checkable
class Executor(Protocol):
    """Runs units of work and hands each result back to the driver as it comes.

    ``work(unit, emit)`` does one unit; ``emit`` must be called on the driver,
    which is the only process that writes the store.
    """

    Options: ClassVar[type[Options]]

    def __init__(self, options: Any) -> None: ...

    def run(self, units: Iterable[Any], work: Callable[[Any, Callable[[Any], None]], None],
            emit: Callable[[Any], None]) -> None: ...


def require_backend(backend: Any, evaluator: str, *methods: str) -> None:
    """Fail an evaluator's cell clearly when its backend lacks an optional method."""
    missing = [name for name in methods if not callable(getattr(backend, name, None))]
    if missing:
        raise TypeError(f"the {evaluator} evaluator needs a backend with {', '.join(missing)}; "
                        f"{type(backend).__name__} has none")
