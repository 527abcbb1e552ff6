"""The driver of ``harness run``: load and plan the suite, skip what the store already
has, hand the rest to the executor, record what comes back, analyse, report.

The driver (this process) is the only writer of the store; executors hand results back
through ``emit`` (:class:`harness.recorder.Recorder`).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.analysis.findings import (
    record_contamination,
    record_gate,
    record_paired_tests,
    record_recipe_tests,
)
from harness.models import resolve_evaluator_models, resolve_suite_models
from harness.plan import make_plan
from harness.plugins import PluginHost
from harness.recorder import Recorder
from harness.events import RunInfo, RunSummary
from harness.records import (
    CellPlan,
    Plan,
    ReportContext,
    ResolvedModel,
    Unit,
    Variant,
    VariantPlan,
)
from harness.store import RunRow, Store, lock_timeout_from_env, run_lock
from harness.store.connection import now
from harness.suite import Suite, load_suite
from harness.version import __version__
from harness.worker import run_unit, weights_folder


def run_suite(
    suite_path: str | Path,
    *,
    host: PluginHost | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Run a suite: plan, skip finished cells, run the rest, report."""
    clock = time.perf_counter()
    console = console or Console()
    host = host or PluginHost.load()
    timeout = lock_timeout_from_env()  # a bad value is bad input: said before any download
    suite = load_suite(suite_path, host)
    models = resolve_suite_models(suite, host)
    plan = make_plan(suite, models, resolve_evaluator_models(suite, host))

    def waiting() -> None:
        console.print(f"[yellow]waiting[/yellow] for {suite.store_path}: another harness run is "
                      f"using it (up to {timeout:.0f} s)")

    with run_lock(suite.store_path, timeout, on_wait=waiting):
        return _run_locked(suite, plan, models, host, console, show_progress, clock)


def _run_locked(suite: Suite, plan: Plan, models: list[ResolvedModel], host: PluginHost,
                console: Console, show_progress: bool, clock: float) -> RunSummary:
    store = Store(suite.store_path)
    store.ensure_current()  # a store from an older harness gets this one's tables and views
    abandoned = store.mark_abandoned_runs()
    if abandoned:
        console.print(f"{abandoned} earlier run(s) of this store ended without finishing "
                      "(marked 'killed'); their finished cells are kept")
    finished = store.finished_cells([c.key for c in plan.cells])
    pending = [c for c in plan.cells if c.key not in finished]
    summary = RunSummary(planned=len(plan.cells), cached=len(finished),
                         store_path=suite.store_path)

    if pending:
        run_id = uuid.uuid4().hex[:12]
        summary.run_id = run_id
        store.initialise()
        store.start_run(RunRow(run_id, suite.name, str(suite.path), __version__, now(), None,
                               "running", len(plan.cells), len(finished)))
        for model in models:
            store.write_model(model)
        units = _units(suite, plan, pending, store)
        info = RunInfo(run_id, suite.name, suite.store_path, plan.cells, pending)
        status = "failed"  # kept when anything stops the executor, a plugin's sys.exit() too
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, disable=not show_progress, transient=True,
        ) as progress:
            task = progress.add_task("cells", total=len(pending))
            # where no bar shows (a log, a file), a line per finished variant and cell
            to_make = sum(1 for u in units for v in u.variants if v.key not in u.trained)
            recorder = Recorder(store, host, run_id, suite.name, progress, task,
                                cells=len(pending), variants=to_make,
                                lines=not (show_progress and console.is_terminal))
            try:
                host.run_started(info)
                executor = suite.executor.cls(suite.executor.options)
                executor.run(units, run_unit, recorder)
                status = "done" if recorder.failed == 0 else "done_with_failures"
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                summary.done, summary.failed = recorder.done, recorder.failed
                summary.seconds = time.perf_counter() - clock
                store.finish_run(run_id, status, summary.done, summary.failed, summary.seconds)
        host.run_finished(info, summary)
    # paired tests for pairs that have none (new cells, or a store from an older harness)
    record_paired_tests(store)
    # contamination findings for pairs not checked yet (new cells, or changed settings)
    record_contamination(store, suite.name, suite.contamination, plan.variants)
    # seed-level comparisons and the gate, on the plan's variants
    record_recipe_tests(store, suite.name, plan.variants)
    record_gate(store, suite.name, suite.gate, plan.cells)
    summary.seconds = time.perf_counter() - clock

    for reporter in suite.reporters:
        component = reporter.cls(reporter.options)
        component.report(ReportContext(suite.store_path, summary.run_id, suite.name, console))
    console.print(
        f"[bold]{suite.name}[/bold]: {summary.planned} cells, {summary.cached} already in the "
        f"store, {summary.done} done, {summary.failed} failed in {summary.seconds:.1f} s "
        f"-> {suite.store_path}"
    )
    return summary


def _variant_from_row(variant: VariantPlan, row: dict[str, Any],
                      trained: dict[str, Variant]) -> Variant | None:
    path = Path(row["path"]) if row.get("path") else None
    if path is None or not path.exists():
        return None
    parent, base_path = variant.parent, None
    if parent is not None and not parent.is_base:  # made of another variant
        ready_parent = trained.get(parent.key)
        if ready_parent is None:
            return None
        if row["kind"] == "adapter":  # it applies to the parent's weights (merged if needed)
            base_path = weights_folder(ready_parent)
    return Variant(variant.name, variant.key, variant.model, row["kind"], path, variant.method,
                   base_path, parent.name if base_path is not None else None)


def _with_ancestors(variants: list[VariantPlan], all_variants: list[VariantPlan]) -> list[VariantPlan]:
    """``variants`` and the variants they are made of (parents, a checkpoint's tuning run,
    a transform's sources), in plan order (parents first)."""
    keys: set[str] = set()
    todo = list(variants)
    while todo:
        variant = todo.pop()
        if variant.key not in keys:
            keys.add(variant.key)
            todo.extend([variant.parent] if variant.parent is not None else [])
            todo.extend(variant.sources)
    return [v for v in all_variants if v.key in keys]


def _units(suite: Suite, plan: Plan, pending: list[CellPlan], store: Store) -> list[Unit]:
    """Group pending cells by base model; find variants already tuned by earlier runs. A
    variant to tune brings its ancestors, which its tuning starts from."""
    units = []
    for model in {id(c.model): c.model for c in pending}.values():
        cells = [c for c in pending if c.model is model]
        of_model = [v for v in plan.variants if v.model is model]
        needed = _with_ancestors([v for v in of_model if any(c.variant is v for c in cells)],
                                 of_model)
        trained: dict[str, Variant] = {}
        for variant in needed:
            if variant.is_base:
                trained[variant.key] = Variant("base", variant.key, model, "base")
                continue
            row = store.trained_variant(variant.key)
            ready = _variant_from_row(variant, row, trained) if row else None
            if ready is not None:
                trained[variant.key] = ready
        units.append(Unit(model, needed, trained, cells, suite.backend.cls,
                          suite.backend.options))
    return units
