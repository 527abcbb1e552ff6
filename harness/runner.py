"""Plans a suite into cells and runs the pending ones.

A cell is one (model, variant, evaluator). Its key is a content hash of
everything that determines its result, so a cell already done in the store is
never recomputed: a finished suite re-runs in seconds and a killed run resumes.
The driver (this process) is the only writer of the store; executors hand
results back through ``emit``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import __version__
from harness.components import (
    EvalResult,
    EvaluatorSpec,
    Metric,
    ReportContext,
    ResolvedModel,
    Sample,
    TuneJob,
    TuneResult,
    Variant,
)
from harness.models import resolve_evaluator_models, resolve_model
from harness.plugins import PluginHost
from harness.store import Store, lock_timeout_from_env, run_lock
from harness.suite import NAMED_REFERENCE, ResolvedComponent, Suite, load_suite

# -- content hashes -------------------------------------------------------------


def content_hash(payload: Any) -> str:
    """SHA-256 of a JSON payload (keys sorted): cell and variant keys, analysis keys."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_hash(reference: str) -> str:
    """Hash a data file or folder by content; a named reference (``lm_eval:x``) by name."""
    if NAMED_REFERENCE.match(reference):
        return content_hash(reference)
    path = Path(reference)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _options_payload(component: ResolvedComponent) -> Any:
    options = component.options
    return options.model_dump(mode="json") if options is not None else component.raw_options


# -- the plan -------------------------------------------------------------------


@dataclass(frozen=True)
class VariantPlan:
    """The base, or a tuner applied to it."""

    name: str
    key: str
    model: ResolvedModel
    tuner: ResolvedComponent | None
    tuner_class: Any = None
    data_hash: str | None = None
    output_dir: Path | None = None
    rewards: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        return self.tuner.kind if self.tuner else None


@dataclass(frozen=True)
class CellPlan:
    key: str
    suite: str
    seed: int
    model: ResolvedModel
    variant: VariantPlan
    evaluator: ResolvedComponent
    evaluator_class: Any
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


def make_plan(suite: Suite, models: list[ResolvedModel], host: PluginHost,
              evaluator_models: dict[str, dict[str, ResolvedModel]] | None = None) -> Plan:
    """Expand models x (base + tuners) x evaluators into keyed cells."""
    evaluator_models = evaluator_models or {}
    artifacts = suite.store_path.parent / f"{suite.store_path.stem}.variants"
    backend_payload = {"kind": suite.backend.kind, "options": _options_payload(suite.backend)}
    # Keys cover everything the suite says about a cell, names and roles included,
    # so that stored rows never carry a stale name or role.
    evaluator_keys = {}
    for e in suite.evaluators:
        payload = {"name": e.name, "kind": e.kind, "role": e.role, "options": _options_payload(e),
                   "data": data_hash(e.data), "seed": suite.seed}
        if evaluator_models.get(e.name):  # a guard or judge model is part of the evaluator
            payload["models"] = {purpose: m.fingerprint
                                 for purpose, m in sorted(evaluator_models[e.name].items())}
        evaluator_keys[e.name] = content_hash(payload)
    tuner_data = {t.name: data_hash(t.data) for t in suite.tuners}
    rewards = {name: reg.component for name, reg in host.registry()["reward"].items()}
    membership = suite.contamination.k if suite.contamination.membership else None
    variants: list[VariantPlan] = []
    cells: list[CellPlan] = []
    for model in models:
        base_key = content_hash({"model": model.fingerprint, "model_name": model.name})
        model_variants = [VariantPlan("base", base_key, model, None)]
        for tuner in suite.tuners:
            key = content_hash({
                "model": model.fingerprint, "model_name": model.name,
                "name": tuner.name, "method": tuner.kind,
                "options": _options_payload(tuner), "data": tuner_data[tuner.name],
                "seed": suite.seed, "harness": __version__,
            })
            model_variants.append(VariantPlan(
                tuner.name, key, model, tuner,
                tuner_class=host.component("tuner", tuner.kind).component,
                data_hash=tuner_data[tuner.name],
                output_dir=artifacts / f"{model.name}-{tuner.name}-{key[:12]}",
                rewards=rewards,
            ))
        variants.extend(model_variants)
        for variant in model_variants:
            for evaluator in suite.evaluators:
                key = content_hash({
                    "suite": suite.name, "variant": variant.key,
                    "evaluator": evaluator_keys[evaluator.name],
                    "backend": backend_payload, "harness": __version__,
                    "membership": membership,
                })
                cells.append(CellPlan(
                    key, suite.name, suite.seed, model, variant, evaluator,
                    host.component("evaluator", evaluator.kind).component,
                    evaluator_keys[evaluator.name], suite.backend.kind,
                    evaluator_models.get(evaluator.name, {}), membership,
                ))
    return Plan(variants, cells)


# -- events the worker emits and the driver records ---------------------------------


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
    #: to ``cells.info`` under ``backend``), from the backend's optional ``route()``
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
    variant: VariantPlan
    result: TuneResult | None
    error: str | None = None
    traceback: str | None = None


@dataclass
class Unit:
    """One base model and the work on it: the backend loads the base once."""

    model: ResolvedModel
    variants: list[VariantPlan]
    trained: dict[str, Variant]  # variant key -> ready variant (base and already-tuned)
    cells: list[CellPlan]
    backend_class: Any
    backend_options: Any


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


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _seed_everything(seed: int) -> None:
    """What ``transformers.set_seed`` does in one process: Python's, numpy's and torch's
    generators (``torch.manual_seed`` seeds every device). Spelled out because importing
    ``set_seed`` loads transformers' whole trainer stack: 2 s before an evaluation-only run
    (bench/eval_overhead.py)."""
    import random

    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def _quiet_libraries() -> None:
    """The libraries' own progress bars would fight with the run's; keep ours."""
    import datasets
    import transformers

    # transformers 5 renamed some training arguments that trl still passes by the old name
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    datasets.disable_progress_bars()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # bitsandbytes (>= 0.50) on a CPU with AVX512-BF16 tries to fetch a faster 4-bit kernel
    # from the hub and warns when it cannot; its built-in CPU kernel is used either way.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


# -- the worker: runs anywhere an executor puts it ---------------------------------------


def _tune(variant: VariantPlan, seed: int, emit: Callable[[Any], None]) -> Variant:
    tuner = variant.tuner_class(variant.tuner.options)
    final_dir = variant.output_dir
    # The staging folder is the variant's own (its key is in the name): a run that was
    # killed while tuning left its checkpoints there, and tuners that write them resume.
    staging = final_dir.with_name(final_dir.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    emit(TuningStarted(variant))
    _seed_everything(seed)
    job = TuneJob(
        model=variant.model, variant_name=variant.name, data=Path(variant.tuner.data),
        output_dir=staging, seed=seed,
        on_step=lambda step, total, loss: emit(TuningStep(variant, step, total, loss)),
        rewards=variant.rewards,
    )
    try:
        result = tuner.tune(job)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)  # a failure starts again from scratch
        raise
    # Only a complete adapter or weights folder gets the final name.
    shutil.rmtree(final_dir, ignore_errors=True)
    staging.rename(final_dir)
    result = TuneResult(result.kind, final_dir / result.path.relative_to(staging), result.record)
    emit(TuningFinished(variant, result))
    return Variant(variant.name, variant.key, variant.model, result.kind, result.path,
                   variant.method)


def _evaluate(cell: CellPlan, backend: Any) -> CellOutcome:
    started, clock = _utcnow(), time.perf_counter()
    try:
        _seed_everything(cell.seed)
        spec = EvaluatorSpec(cell.evaluator.name, cell.evaluator.kind,
                             cell.evaluator.role or "general", cell.evaluator.data or "", cell.seed,
                             cell.evaluator_models)
        evaluator = cell.evaluator_class(spec, cell.evaluator.options)
        result = evaluator.evaluate(backend)
        if not isinstance(result, EvalResult):
            raise TypeError(
                f"evaluator {cell.evaluator.kind!r} returned {type(result).__name__}, "
                "expected EvalResult"
            )
        if cell.membership_k is not None and result.samples \
                and _has(backend, "token_moments"):  # optional for a backend
            _score_membership(result.samples, backend, cell.membership_k)
        return CellOutcome("done", result.metrics, result, seconds=time.perf_counter() - clock,
                           started_at=started, finished_at=_utcnow())
    except Exception as exc:
        return CellOutcome("failed", error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc(),
                           seconds=time.perf_counter() - clock, started_at=started,
                           finished_at=_utcnow())


def _has(backend: Any, method: str) -> bool:
    """Whether a backend implements one of the protocol's optional methods."""
    return callable(getattr(backend, method, None))


def _score_membership(samples: list[Sample], backend: Any, k: float) -> None:
    """Min-K% and Min-K%++ of each item's text (prompt and target) under the active model."""
    from harness.contamination import item_text, membership_scores

    texts = [item_text(s.prompt, s.target, None) for s in samples]  # prompt and target
    for sample, moments in zip(samples, backend.token_moments(texts)):
        if moments.logprobs:
            sample.min_k, sample.min_k_plus = membership_scores(
                moments.logprobs, moments.means, moments.stds, k)


def fail_cells(cells: list[CellPlan], error: str, tb: str | None,
                emit: Callable[[Any], None]) -> None:
    """Cells that cannot run (their tuning, their model or their worker failed) still start
    and finish, as failed. Executors call it for the cells of a unit whose worker died."""
    for cell in cells:
        now = _utcnow()
        emit(CellStarted(cell))
        emit(CellFinished(cell, CellOutcome("failed", error=error, traceback=tb,
                                            started_at=now, finished_at=now)))


def run_unit(unit: Unit, emit: Callable[[Any], None]) -> None:
    """Tune what is missing, then evaluate every pending cell of one base model."""
    _quiet_libraries()
    backend = None
    try:
        for index, variant in enumerate(unit.variants):
            cells = [c for c in unit.cells if c.variant.key == variant.key]
            ready = unit.trained.get(variant.key)
            if ready is None:
                try:
                    ready = _tune(variant, cells[0].seed, emit)
                except Exception as exc:
                    error = f"tuning {variant.name!r} failed: {type(exc).__name__}: {exc}"
                    tb = traceback.format_exc()
                    emit(TuningFinished(variant, None, error, tb))
                    fail_cells(cells, error, tb, emit)
                    continue
            if backend is None:
                try:
                    backend = unit.backend_class(unit.backend_options)
                    backend.load(unit.model)
                except Exception as exc:
                    error = f"loading {unit.model.name!r} failed: {type(exc).__name__}: {exc}"
                    tb = traceback.format_exc()
                    later = {v.key for v in unit.variants[index:]}
                    fail_cells([c for c in unit.cells if c.variant.key in later], error, tb, emit)
                    backend = None
                    return
            try:
                backend.activate(ready)
            except Exception as exc:
                error = f"activating {variant.name!r} failed: {type(exc).__name__}: {exc}"
                fail_cells(cells, error, traceback.format_exc(), emit)
                continue
            route = backend.route() if _has(backend, "route") else None  # optional
            for cell in cells:
                emit(CellStarted(cell))
                outcome = _evaluate(cell, backend)
                outcome.route = route
                emit(CellFinished(cell, outcome))
    finally:
        if backend is not None:
            backend.close()


# -- the driver -----------------------------------------------------------------------------


def _variant_from_row(variant: VariantPlan, row: dict[str, Any]) -> Variant | None:
    path = Path(row["path"]) if row.get("path") else None
    if path is None or not path.exists():
        return None
    return Variant(variant.name, variant.key, variant.model, row["kind"], path, variant.method)


class _Recorder:
    """Receives worker events on the driver: writes the store, fires hooks, moves the bars."""

    def __init__(self, store: Store, host: PluginHost, run_id: str, suite: Suite,
                 progress: Progress, cells_task: int) -> None:
        self.store, self.host, self.run_id, self.suite = store, host, run_id, suite
        self.progress, self.cells_task = progress, cells_task
        self.tuning_tasks: dict[str, int] = {}
        self.warned: set[str] = set()
        self.done = self.failed = 0

    def __call__(self, event: Any) -> None:
        if isinstance(event, CellStarted):
            self.progress.update(self.cells_task, description=f"[cyan]{event.cell.label}")
            self.host.cell_started(event.cell)
        elif isinstance(event, CellFinished):
            self._record_cell(event.cell, event.outcome)
        elif isinstance(event, TuningStarted):
            self.tuning_tasks[event.variant.key] = self.progress.add_task(
                f"[magenta]tuning {event.variant.model.name}/{event.variant.name}", total=None
            )
        elif isinstance(event, TuningStep):
            task = self.tuning_tasks.get(event.variant.key)
            if task is not None:
                self.progress.update(task, completed=event.step, total=event.total,
                                     description=f"[magenta]tuning {event.variant.name} "
                                                 f"loss {event.loss:.3f}")
        elif isinstance(event, TuningFinished):
            task = self.tuning_tasks.pop(event.variant.key, None)
            if task is not None:
                self.progress.remove_task(task)
            self._record_variant(event)

    def _record_variant(self, event: TuningFinished) -> None:
        variant = event.variant
        row: dict[str, Any] = {
            "variant_key": variant.key, "suite": self.suite.name,
            "model_name": variant.model.name, "model_key": variant.model.fingerprint,
            "name": variant.name, "method": variant.method,
            "config": _options_payload(variant.tuner), "data_path": variant.tuner.data,
            "data_hash": variant.data_hash, "run_id": self.run_id,
        }
        if event.result is None:
            row.update(status="failed", error=event.error, kind=None, path=None)
        else:
            record = event.result.record
            row.update(
                status="done", error=None, kind=event.result.kind, path=str(event.result.path),
                steps=record.steps, loss_curve=record.loss_curve, final_loss=record.final_loss,
                seconds=record.seconds, train_tokens=record.train_tokens,
                tokens_per_second=record.tokens_per_second,
                peak_memory_mb=record.peak_memory_mb,
                trainable_params=record.trainable_params, total_params=record.total_params,
            )
        self.store.record_variant(row)

    def _record_cell(self, cell: CellPlan, outcome: CellOutcome) -> None:
        row = {
            "cell_key": cell.key, "run_id": self.run_id, "suite": cell.suite,
            "model_name": cell.model.name, "model_key": cell.model.fingerprint,
            "variant_name": cell.variant.name, "variant_key": cell.variant.key,
            "evaluator": cell.evaluator.name, "evaluator_kind": cell.evaluator.kind,
            "evaluator_key": cell.evaluator_key, "role": cell.evaluator.role,
            "backend": cell.backend, "status": outcome.status, "error": outcome.error,
            "traceback": outcome.traceback, "seconds": outcome.seconds,
            "started_at": outcome.started_at, "finished_at": outcome.finished_at,
        }
        metrics = [
            {"metric": m.name, "value": float(m.value), "n": m.n, "stderr": m.stderr,
             "higher_is_better": m.higher_is_better, "is_primary": m.primary}
            for m in outcome.metrics
        ]
        route = dict(outcome.route or {})
        row["backend_path"] = route.pop("path", None)
        samples, alerts = [], []
        if outcome.result is not None:
            info = dict(outcome.result.info)
            if route:
                info["backend"] = route
            row["info"] = json.dumps(info, default=str)
            warning = outcome.result.info.get("warning")
            if warning and warning not in self.warned:  # once per run, not once per cell
                self.warned.add(warning)
                self.progress.console.print(f"[yellow]warning[/yellow] {cell.evaluator.name}: {warning}")
            alerts = [{"metric": a.metric, "value": float(a.value), "threshold": a.threshold,
                       "message": a.message} for a in outcome.result.alerts]
            samples = [
                {"item_index": s.index, "item_id": s.item_id, "prompt": s.prompt,
                 "target": s.target, "output": s.output, "score": s.score,
                 "logprobs": s.logprobs, "extra": s.extra,
                 "min_k": s.min_k, "min_k_plus": s.min_k_plus}
                for s in outcome.result.samples
            ]
        self.store.record_cell(row, metrics, samples, alerts)
        if outcome.status == "done":
            self.done += 1
        else:
            self.failed += 1
            self.progress.console.print(f"[red]cell {cell.label} failed:[/red] {outcome.error}")
        self.progress.advance(self.cells_task)
        self.host.cell_finished(cell, outcome)
        for alert in outcome.result.alerts if outcome.result is not None else ():
            self.progress.console.print(f"[yellow]alert[/yellow] {cell.label}: {alert.message}")
            self.host.drift_alert(cell, alert)


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
    suite = load_suite(suite_path, host)
    models = [resolve_model(entry, host, suite.base_dir) for entry in suite.models]
    plan = make_plan(suite, models, host, resolve_evaluator_models(suite, host))

    def waiting() -> None:
        console.print(f"[yellow]waiting[/yellow] for {suite.store_path}: another harness run is "
                      f"using it (up to {timeout:.0f} s)")

    timeout = lock_timeout_from_env()
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
        store.start_run(run_id, suite.name, suite.path, __version__, len(plan.cells), len(finished))
        for model in models:
            store.record_model(model.fingerprint, model.name, model.source, model.path)
        backend_class = host.component("backend", suite.backend.kind).component
        units = _units(suite, plan, pending, store, backend_class)
        info = RunInfo(run_id, suite.name, suite.store_path, plan.cells, pending)
        host.run_started(info)
        executor = host.component("executor", suite.executor.kind).component(
            suite.executor.options
        )
        status = "failed"
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, disable=not show_progress, transient=True,
        ) as progress:
            task = progress.add_task("cells", total=len(pending))
            recorder = _Recorder(store, host, run_id, suite, progress, task)
            try:
                executor.run(units, run_unit, recorder)
                status = "done" if recorder.failed == 0 else "done_with_failures"
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                summary.done, summary.failed = recorder.done, recorder.failed
                summary.seconds = time.perf_counter() - clock
                store.finish_run(run_id, status, summary.done, summary.failed, summary.seconds)
        store.record_paired_tests(seed=suite.seed)  # significance for the forgetting view
        host.run_finished(info, summary)
    # contamination findings for pairs not checked yet (new cells, or changed settings)
    from harness.contamination import analyse

    analyse(store, suite, plan.variants)
    summary.seconds = time.perf_counter() - clock

    for reporter in suite.reporters:
        component = host.component("reporter", reporter.kind).component(reporter.options)
        component.report(ReportContext(suite.store_path, summary.run_id, suite.name, console))
    console.print(
        f"[bold]{suite.name}[/bold]: {summary.planned} cells, {summary.cached} already in the "
        f"store, {summary.done} done, {summary.failed} failed in {summary.seconds:.1f} s "
        f"-> {suite.store_path}"
    )
    return summary


def _units(suite: Suite, plan: Plan, pending: list[CellPlan], store: Store,
           backend_class: Any) -> list[Unit]:
    """Group pending cells by base model; find variants already tuned by earlier runs."""
    units = []
    for model in {id(c.model): c.model for c in pending}.values():
        cells = [c for c in pending if c.model is model]
        needed = [v for v in plan.variants if v.model is model and any(c.variant is v for c in cells)]
        trained: dict[str, Variant] = {}
        for variant in needed:
            if variant.tuner is None:
                trained[variant.key] = Variant("base", variant.key, model, "base")
                continue
            row = store.trained_variant(variant.key)
            ready = _variant_from_row(variant, row) if row else None
            if ready is not None:
                trained[variant.key] = ready
        units.append(Unit(model, needed, trained, cells, backend_class, suite.backend.options))
    return units
