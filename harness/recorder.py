"""The driver's side of a run's events: each event a worker emits becomes typed store rows,
lifecycle hook calls and progress on the console: bars on a terminal, else one plain line
per finished variant and cell (a CI log or a file shows the run as it goes)."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.markup import escape
from rich.progress import Progress

from harness.plan import options_payload
from harness.plugins import PluginHost
from harness.events import (
    CellFinished,
    CellOutcome,
    CellStarted,
    TuningFinished,
    TuningStarted,
    TuningStep,
    VariantMade,
)
from harness.records import CellPlan
from harness.store import CellRow, Store, VariantRow


class Recorder:
    """Receives worker events on the driver: writes the store, fires hooks, moves the bars."""

    def __init__(self, store: Store, host: PluginHost, run_id: str, suite: str,
                 progress: Progress, cells_task: int, *, cells: int = 0, variants: int = 0,
                 lines: bool = False) -> None:
        self.store, self.host, self.run_id, self.suite = store, host, run_id, suite
        self.progress, self.cells_task = progress, cells_task
        self.tuning_tasks: dict[str, int] = {}
        self.warned: set[str] = set()
        self.done = self.failed = 0
        #: print a line per finished variant and cell (no bars: not a terminal)
        self.lines = lines
        self.cells_total, self.variants_total, self.variants_finished = cells, variants, 0
        self.tuning_clocks: dict[str, float] = {}

    def __call__(self, event: Any) -> None:
        if isinstance(event, CellStarted):
            self.progress.update(self.cells_task, description=f"[cyan]{event.cell.label}")
            self.host.cell_started(event.cell)
        elif isinstance(event, CellFinished):
            self._record_cell(event.cell, event.outcome)
        elif isinstance(event, TuningStarted):
            self.tuning_clocks[event.variant.key] = time.perf_counter()
            verb = "making" if event.variant.origin == "transformed" else "tuning"
            self.tuning_tasks[event.variant.key] = self.progress.add_task(
                f"[magenta]{verb} {event.variant.model.name}/{event.variant.name}", total=None
            )
        elif isinstance(event, TuningStep):
            task = self.tuning_tasks.get(event.variant.key)
            if task is not None:
                self.progress.update(task, completed=event.step, total=event.total,
                                     description=f"[magenta]tuning {event.variant.name} "
                                                 f"loss {event.loss:.3f}")
        elif isinstance(event, (TuningFinished, VariantMade)):
            task = self.tuning_tasks.pop(event.variant.key, None)
            if task is not None:
                self.progress.remove_task(task)
            self._record_variant(event)
            if self.lines:
                self._variant_line(event)

    def _line(self, text: str) -> None:
        # plain: no markup read from names, no colours for a log, never wrapped mid-line
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _variant_line(self, event: TuningFinished | VariantMade) -> None:
        variant = event.variant
        self.variants_finished += 1
        # a checkpoint whose tuning state was gone makes its tuning run again, uncounted
        self.variants_total = max(self.variants_total, self.variants_finished)
        started = self.tuning_clocks.pop(variant.key, None)
        seconds = time.perf_counter() - started if started is not None else None
        if isinstance(event, VariantMade):
            status = "made" if variant.origin == "transformed" else "kept"
            seconds = event.seconds if seconds is None else seconds
        else:
            status = "failed" if event.result is None else "tuned"
        took = f"  ({seconds:.1f} s)" if seconds is not None else ""
        self._line(f"[variant {self.variants_finished}/{self.variants_total}] {status}  "
                   f"{variant.model.name} {variant.name}{took}")

    def _record_variant(self, event: TuningFinished | VariantMade) -> None:
        variant = event.variant
        component = variant.transform or variant.tuner
        options = options_payload(component)
        parent = variant.parent if variant.parent and not variant.parent.is_base else None
        recipe = {"tuner": component.name, "method": variant.method, "options": options,
                  "data": component.data, "from": parent.entry if parent else None}
        if variant.origin == "checkpoint":
            recipe["step"] = variant.step
        elif variant.origin == "transformed":
            recipe = {"transform": component.name, "kind": component.kind, "options": options,
                      "output": variant.output, "of": [s.name for s in variant.sources]}
        row = VariantRow(
            variant_key=variant.key, suite=self.suite, model_name=variant.model.name,
            model_key=variant.model.fingerprint, name=variant.name, method=variant.method,
            config=json.dumps(options, sort_keys=True), data_path=component.data,
            data_hash=variant.data_hash, run_id=self.run_id,
            parent_key=variant.parent.key if variant.parent else None,
            root_key=variant.root.key, tuner=component.name,
            recipe_key=variant.recipe_key, seed=variant.seed,
            recipe=json.dumps(recipe, sort_keys=True),
            sweep=json.dumps(variant.sweep, sort_keys=True) if variant.sweep else None,
            origin=variant.origin, step=variant.step,
            sources=json.dumps([s.key for s in variant.sources]) if variant.sources else None,
        )
        if isinstance(event, VariantMade):
            row.kind, row.path, row.seconds = event.kind, str(event.path), event.seconds
            if variant.origin == "checkpoint":
                row.steps = variant.step
        elif event.result is None:
            row.status, row.error = "failed", event.error
        else:
            record = event.result.record
            row.kind, row.path = event.result.kind, str(event.result.path)
            row.steps, row.loss_curve, row.final_loss = (record.steps, record.loss_curve,
                                                         record.final_loss)
            row.seconds, row.train_tokens = record.seconds, record.train_tokens
            row.tokens_per_second = record.tokens_per_second
            row.peak_memory_mb = record.peak_memory_mb
            row.trainable_params, row.total_params = record.trainable_params, record.total_params
        self.store.write_variant(row)

    def _record_cell(self, cell: CellPlan, outcome: CellOutcome) -> None:
        route = dict(outcome.route or {})
        row = CellRow(
            cell_key=cell.key, run_id=self.run_id, suite=cell.suite,
            model_name=cell.model.name, model_key=cell.model.fingerprint,
            variant_name=cell.variant.name, variant_key=cell.variant.key,
            evaluator=cell.evaluator.name, evaluator_kind=cell.evaluator.kind,
            evaluator_key=cell.evaluator_key, role=cell.evaluator.role,
            backend=cell.backend, status=outcome.status, error=outcome.error,
            traceback=outcome.traceback, seconds=outcome.seconds,
            started_at=outcome.started_at, finished_at=outcome.finished_at,
            backend_path=route.pop("path", None),
        )
        result = outcome.result
        if result is not None:
            info = dict(result.info)
            if route:
                info["backend"] = route
            row.info = json.dumps(info, default=str)
            warning = result.info.get("warning")
            if warning and warning not in self.warned:  # once per run, not once per cell
                self.warned.add(warning)
                # whole lines, never wrapped: a log is searched line by line
                self.progress.console.print(f"[yellow]warning[/yellow] {cell.evaluator.name}: "
                                            f"{escape(warning)}", soft_wrap=True)
        self.store.write_cell(row, outcome.metrics,
                              result.samples if result is not None else (),
                              result.alerts if result is not None else ())
        if outcome.status == "done":
            self.done += 1
        else:
            self.failed += 1
        self.progress.advance(self.cells_task)
        if self.lines:
            self._line(f"[{self.done + self.failed}/{self.cells_total}] {outcome.status}  "
                       f"{cell.model.name} {cell.variant.name} {cell.evaluator.name}  "
                       f"({outcome.seconds:.1f} s)")
        if outcome.status != "done":
            # the error is the plugin's text: printed as it is, whole (a log is searched)
            self.progress.console.print(f"[red]cell {escape(cell.label)} failed:[/red] "
                                        f"{escape(outcome.error or '')}", soft_wrap=True)
        self.host.cell_finished(cell, outcome)
        for alert in result.alerts if result is not None else ():
            self.progress.console.print(f"[yellow]alert[/yellow] {escape(cell.label)}: "
                                        f"{escape(alert.message)}", soft_wrap=True)
            self.host.drift_alert(cell, alert)
