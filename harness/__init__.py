"""harness: tune language models, evaluate base and variants alike, store it all in DuckDB.

This module is the public API: every name a plugin may use is here, in ``__all__``.
Plugins import ``harness`` (and their own kind's shared helpers) and nothing else of it;
every other module of the package may change without notice. ``docs/plugin_hooks.md``
shows each name in use; ``docs/architecture.md`` says where each lives.
"""

from harness.analysis.items import item_text
from harness.contracts import (
    Backend,
    Evaluator,
    Executor,
    ModelSource,
    NestedComponent,
    Options,
    Reporter,
    Reward,
    Transform,
    Tuner,
    Unsupported,
    Work,
    require_backend,
)
from harness.data import MAX_ROW_BYTES, DataRow, ItemId, read_jsonl
from harness.errors import DataError, UserError, first_line, validation_problems
from harness.hookspecs import Register, hookimpl
from harness.cache import cache_dir
from harness.display import render_table
from harness.loading import load_causal_lm, load_tokenizer, pick_device, pick_dtype
from harness.events import (
    CellFinished,
    CellOutcome,
    CellStarted,
    RunInfo,
    RunSummary,
    TuningFinished,
    TuningStarted,
    TuningStep,
    VariantMade,
)
from harness.records import (
    Alert,
    CellPlan,
    EvalResult,
    EvaluatorSpec,
    Metric,
    ReportContext,
    ResolvedModel,
    Role,
    Sample,
    TokenMoments,
    TokenScores,
    TrainingRecord,
    TransformJob,
    TransformResult,
    TuneJob,
    TuneResult,
    Unit,
    Variant,
    VariantPlan,
)
from harness.store.reader import query, read_store
from harness.version import PROJECT_NAME, __version__
from harness.worker import fail_cells

__all__ = [
    # the project
    "PROJECT_NAME", "__version__", "hookimpl", "Register",
    # contracts: one base class per component kind, and their options
    "Backend", "Evaluator", "Executor", "ModelSource", "Reporter", "Reward", "Transform",
    "Tuner",
    "Options", "NestedComponent", "Unsupported", "require_backend", "Work",
    # records a component receives or returns
    "ResolvedModel", "Variant", "TuneJob", "TuneResult", "TrainingRecord",
    "TransformJob", "TransformResult", "EvaluatorSpec",
    "EvalResult", "Metric", "Sample", "Alert", "Role", "TokenScores", "TokenMoments",
    "ReportContext",
    # what lifecycle hooks and executors see, and how an executor reports a dead worker
    "CellPlan", "VariantPlan", "Unit", "CellOutcome", "CellStarted", "CellFinished",
    "TuningStarted", "TuningStep", "TuningFinished", "VariantMade", "RunInfo", "RunSummary", "fail_cells",
    # data files and errors
    "DataRow", "ItemId", "read_jsonl", "MAX_ROW_BYTES", "UserError", "DataError", "first_line",
    "validation_problems",
    # the store, read-only, and what a stored item says
    "query", "read_store", "render_table", "item_text",
    # loading a model the way every built-in does, and the cache
    "load_tokenizer", "load_causal_lm", "pick_device", "pick_dtype", "cache_dir",
]
