"""One dataclass per kind of row a run writes, with the columns of its table in order.

The store writes each with one typed method (:class:`harness.store.Store`); a misspelt
field is a ``TypeError`` where the row is made, not a NULL column. Metrics, samples and
alerts are written from the records evaluators return (:mod:`harness.records`), column by
column (``METRIC_COLUMNS``, ``SAMPLE_COLUMNS``, ``ALERT_COLUMNS`` in
:mod:`harness.store.store`); samples go to ``sample_rows`` and ``item_texts``, and read back
through the view ``samples``. A test checks these against the tables too.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from datetime import datetime
from typing import Any


@dataclass
class RunRow:
    run_id: str
    suite: str
    suite_path: str
    harness_version: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    cells_planned: int
    cells_cached: int
    cells_done: int = 0
    cells_failed: int = 0
    seconds: float | None = None


@dataclass
class ModelRow:
    model_key: str
    name: str
    source: str
    path: str
    first_seen: datetime


@dataclass
class VariantRow:
    """A tuning run: failed ones carry the error and no training figures."""

    variant_key: str
    suite: str
    model_name: str
    model_key: str
    name: str
    method: str | None
    kind: str | None = None
    config: str | None = None  # the tuner's options as JSON
    data_path: str | None = None
    data_hash: str | None = None
    path: str | None = None
    status: str = "done"
    error: str | None = None
    steps: int | None = None
    loss_curve: list[float] | None = None
    final_loss: float | None = None
    seconds: float | None = None
    train_tokens: int | None = None
    tokens_per_second: float | None = None
    peak_memory_mb: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    run_id: str | None = None
    created_at: datetime | None = None
    parent_key: str | None = None
    root_key: str | None = None
    tuner: str | None = None  # the suite's tuner entry
    recipe_key: str | None = None
    recipe: str | None = None  # JSON: entry, method, options, data, parent entry
    seed: int | None = None
    sweep: str | None = None  # JSON: the swept options' values
    origin: str | None = None  # tuned, checkpoint, transformed
    step: int | None = None  # a checkpoint's
    sources: str | None = None  # JSON: a transform's source variant keys


@dataclass
class CellRow:
    cell_key: str
    run_id: str | None = None
    suite: str | None = None
    model_name: str | None = None
    model_key: str | None = None
    variant_name: str | None = None
    variant_key: str | None = None
    evaluator: str | None = None
    evaluator_kind: str | None = None
    evaluator_key: str | None = None
    role: str | None = None
    backend: str | None = None
    status: str = "done"
    error: str | None = None
    traceback: str | None = None
    seconds: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    info: str | None = None  # JSON: how the scores were made, and the backend's route
    backend_path: str | None = None


@dataclass
class PairedTestRow:
    """A variant's cell against its base's cell on the same items (harness.analysis.stats)."""

    variant_cell_key: str
    base_cell_key: str
    test: str
    n: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    sd: float | None = None
    lost: int | None = None
    gained: int | None = None


@dataclass
class RecipeTestRow:
    """Two recipes' seed-level scores on one evaluator, Welch's t-test between them."""

    suite: str
    model: str
    evaluator: str
    metric: str
    recipe_a: str
    recipe_b: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float
    sd_b: float
    diff: float
    t: float
    df: float
    p_value: float


@dataclass
class GateRow:
    """The gate's decision on one variant and one general or safety evaluator; a variant
    with nothing to judge has one row without an evaluator (INCONCLUSIVE)."""

    suite: str
    model: str
    variant: str
    variant_key: str
    evaluator: str | None
    metric: str | None
    unit: str | None
    test: str | None
    n: int
    loss: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None
    max_loss: float | None
    alpha: float
    mde: float | None
    decision: str
    reason: str


@dataclass
class ContaminationRow:
    """One finding on one evaluation item (harness.analysis.contamination)."""

    analysis_key: str
    suite: str
    model: str
    variant: str
    variant_key: str
    evaluator: str
    evaluator_key: str
    item_index: int
    item_id: str | None
    dataset: str
    method: str
    score: float
    flagged: bool
    detail: str  # JSON


#: the table each row kind goes to
TABLE_OF: dict[type, str] = {
    RunRow: "runs", ModelRow: "models", VariantRow: "variants", CellRow: "cells",
    PairedTestRow: "paired_tests", ContaminationRow: "contamination",
    RecipeTestRow: "recipe_tests", GateRow: "gate_decisions",
}


def columns(row_type: type) -> list[str]:
    return [f.name for f in fields(row_type)]


def insert_sql(row_type: type, verb: str = "INSERT") -> str:
    """``INSERT INTO <table> (<columns>) VALUES (?, ...)`` for a row kind."""
    names = columns(row_type)
    return (f"{verb} INTO {TABLE_OF[row_type]} ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})")


def values(row: Any) -> list[Any]:
    return list(astuple(row))
