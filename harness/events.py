"""What a worker emits and the driver records (cells and tunings starting and finishing),
and what lifecycle hooks learn of a run. Plain dataclasses, picklable to a Ray worker and
back, like :mod:`harness.records`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.records import CellPlan, EvalResult, Metric, TuneResult, VariantPlan

# -- events a worker emits and the driver records ---------------------------------------------


@dataclass
class CellOutcome:
    status: str  # "done" or "failed"
    metrics: list[Metric] = field(default_factory=list)
    result: EvalResult | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: how the backend served the variant (``path``: ``cells.backend_path``; the rest goes
    #: to ``cells.info`` under ``backend``), from the backend's ``route()``
    route: dict[str, Any] | None = None


@dataclass
class CellStarted:
    cell: CellPlan


@dataclass
class CellFinished:
    cell: CellPlan
    outcome: CellOutcome


@dataclass
class TuningStarted:
    variant: VariantPlan
    total_steps: int | None = None


@dataclass
class TuningStep:
    variant: VariantPlan
    step: int
    total: int
    loss: float


@dataclass
class TuningFinished:
    """A variant was made, or failed to be: a tuning run, or (``result`` without a
    training record) a checkpoint kept by one or a transform."""

    variant: VariantPlan
    result: TuneResult | None
    error: str | None = None
    traceback: str | None = None


@dataclass
class VariantMade:
    """A checkpoint a tuning run kept, or a transform's variant, is ready at ``path``."""

    variant: VariantPlan
    kind: str  # "adapter" or "weights"
    path: Path
    seconds: float | None = None  # a transform's time; None for a checkpoint (its run's)


#: what ``emit`` receives from a worker
Event = CellStarted | CellFinished | TuningStarted | TuningStep | TuningFinished | VariantMade


# -- a run --------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    run_id: str
    suite: str
    store_path: Path
    cells: list[CellPlan]
    pending: list[CellPlan]


@dataclass
class RunSummary:
    planned: int
    cached: int
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    run_id: str | None = None
    store_path: Path | None = None
