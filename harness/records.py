"""Plain dataclasses that cross boundaries: models and variants, jobs and results, the plan,
the events a worker emits, and run information. No behaviour, no imports of the rest of
harness, nothing heavy: a record can be pickled to a Ray worker and back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from rich.console import Console

# -- models and variants ----------------------------------------------------------------


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
    #: the weights an adapter applies to when they are not the root base's: the merged
    #: parent of a variant trained with ``from`` (``None``: the base's)
    base_path: Path | None = None
    parent: str | None = None  # the parent variant's name, when it is not the base


# -- tuning ---------------------------------------------------------------------------------


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
    #: the variant whose weights ``model.path`` holds, when it is not the root base
    parent: str | None = None
    #: keep the state every this many steps (the suite's ``eval_every``) in
    #: ``TuneResult.checkpoints``; None: keep none. Set only for a tuner whose
    #: ``planned_steps`` gives a number.
    save_every: int | None = None


@dataclass
class TuneResult:
    kind: Literal["adapter", "weights"]
    path: Path
    record: TrainingRecord
    #: step -> the state kept then (same kind as ``path``), inside the job's output folder
    checkpoints: dict[int, Path] = field(default_factory=dict)


@dataclass
class TransformJob:
    """Everything a transform needs: the ready variants it makes a new one of."""

    model: ResolvedModel  # the root base
    sources: list[Variant]  # one, or all of them for a transform that combines
    #: the weights the sources were made from (an adapter source applies to them): the
    #: base's folder, or a parent variant's (merged) weights
    parent_weights: Path
    output: str  # which of the transform's outputs (``Transform.outputs``) to make
    output_dir: Path
    seed: int


@dataclass
class TransformResult:
    kind: Literal["adapter", "weights"]
    path: Path  # inside the job's output folder


# -- evaluation -----------------------------------------------------------------------------

#: ``general`` and ``safety`` scores feed the forgetting view, ``target`` scores are what
#: tuning aimed at, ``monitor`` scores (drift) describe change and feed neither.
Role = Literal["general", "target", "safety", "monitor"]
ROLES: tuple[str, ...] = get_args(Role)


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
    #: membership scores of the item's text under the model (set by the worker when the
    #: suite's ``[contamination] membership`` is on; see harness/analysis/contamination.py)
    min_k: float | None = None
    min_k_plus: float | None = None
    #: what the item asks, without few-shot examples or answer choices (lm-eval's
    #: ``doc_to_decontamination_query``: the question alone), when the evaluator knows it:
    #: contamination checks search it instead of the prompt. Stored once per item with
    #: the prompt and target, not once per cell.
    query: str | None = None


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


@dataclass
class ReportContext:
    store_path: Path
    run_id: str | None
    suite_name: str
    console: Console


# -- the plan: a suite expanded into variants and cells -------------------------------------


@dataclass(frozen=True)
class ResolvedComponent:
    """A suite entry with its component class found, data path resolved and options
    validated: the class travels with it, so nothing downstream looks it up again."""

    name: str
    kind: str  # the registered component name (tuner method, evaluator kind, ...)
    cls: Any  # the registered class
    options: Any  # the component's validated Options instance
    raw_options: dict[str, Any]
    data: str | None = None
    role: str | None = None


#: how a variant came to be: the base itself, a tuner's final state, one of its
#: intermediate states, or a transform of other variants
Origin = Literal["base", "tuned", "checkpoint", "transformed"]


@dataclass(frozen=True)
class VariantPlan:
    """The base, a tuner applied to its parent (the base, or another variant), a tuner's
    checkpoint, or a transform of other variants."""

    name: str
    key: str
    model: ResolvedModel
    tuner: ResolvedComponent | None  # with this variant's options (its sweep point's)
    data_hash: str | None = None
    output_dir: Path | None = None
    rewards: dict[str, Any] = field(default_factory=dict)
    parent: VariantPlan | None = None  # None for the base only
    seed: int | None = None
    sweep: dict[str, Any] = field(default_factory=dict)  # the swept options' values
    recipe_key: str | None = None  # what seed replicates share: entry, options, parent's recipe
    origin: Origin = "tuned"
    save_every: int | None = None  # a tuned variant's checkpoint interval
    step: int | None = None  # a checkpoint's step
    #: a checkpoint's final variant, or the variants a transform is made of
    sources: tuple[VariantPlan, ...] = ()
    transform: ResolvedComponent | None = None
    output: str = ""  # which of the transform's outputs

    @property
    def method(self) -> str | None:
        component = self.transform or self.tuner
        return component.kind if component else None

    @property
    def entry(self) -> str | None:
        """The suite entry (tuner or transform) that makes it; None for the base."""
        component = self.transform or self.tuner
        return component.name if component else None

    @property
    def is_base(self) -> bool:
        return self.origin == "base"

    @property
    def root(self) -> VariantPlan:
        return self if self.parent is None else self.parent.root


@dataclass(frozen=True)
class CellPlan:
    key: str
    suite: str
    seed: int
    model: ResolvedModel
    variant: VariantPlan
    evaluator: ResolvedComponent
    evaluator_key: str
    backend: str
    #: models the evaluator needs besides the one under test (a guard), by purpose
    evaluator_models: dict[str, ResolvedModel] = field(default_factory=dict)
    #: Min-K%'s k when the cell also scores its items' membership, else None
    membership_k: float | None = None

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.variant.name}/{self.evaluator.name}"


@dataclass
class Plan:
    variants: list[VariantPlan]
    cells: list[CellPlan]


@dataclass
class Unit:
    """One base model and the work on it: the backend loads the base once."""

    model: ResolvedModel
    variants: list[VariantPlan]
    trained: dict[str, Variant]  # variant key -> ready variant (base and already-tuned)
    cells: list[CellPlan]
    backend_class: Any
    backend_options: Any
