"""The worker: one unit of work (one base model's tuning and evaluation), run wherever an
executor puts it. It reports through ``emit`` and never touches the store: the driver
(:mod:`harness.runner`) is the only writer.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from harness.contracts import Backend
from harness.events import (
    CellFinished,
    CellOutcome,
    CellStarted,
    Event,
    TuningFinished,
    TuningStarted,
    TuningStep,
    VariantMade,
)
from harness.loading import merge_adapter
from harness.records import (
    CellPlan,
    EvaluatorSpec,
    Sample,
    TransformJob,
    TransformResult,
    TuneJob,
    TuneResult,
    Unit,
    Variant,
    VariantPlan,
)
from harness.result_checks import check_eval_result

#: how a worker hands an event to the driver
Emit = Callable[[Event], None]

#: what a plugin may raise and fail only its own cell or variant with: any error, and a
#: ``sys.exit()`` (which would otherwise end the whole run with status 0); never
#: KeyboardInterrupt, which stops the run
PLUGIN_FAILURES = (Exception, SystemExit)


def failure_text(exc: BaseException, what: str) -> str:
    """One line for an exception a plugin raised; ``what`` names the plugin's component."""
    if isinstance(exc, SystemExit):
        return (f"{what} called sys.exit({exc.code!r}): a plugin fails a cell by raising, "
                "not by ending the process")
    return f"{type(exc).__name__}: {exc}"


def utcnow() -> datetime:
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


def weights_folder(parent: Variant) -> Path:
    """Where the weights a child of ``parent`` starts from live: a weights variant's own
    folder, or beside an adapter variant's adapter, the adapter merged (``merged/``)."""
    return parent.path if parent.kind == "weights" else parent.path.parent / "merged"


def start_weights(parent: Variant) -> Path:
    """The folder of the weights a child of ``parent`` starts from, written now if it is
    missing: an adapter variant merged into a copy of the weights it applies to (once; the
    base itself is never touched)."""
    merged = weights_folder(parent)
    if parent.kind != "weights" and not (merged / "config.json").is_file():
        staging = merged.with_name("merged.partial")
        shutil.rmtree(staging, ignore_errors=True)
        merge_adapter(parent.base_path or parent.model.path, parent.path, staging,
                      trust_remote_code=parent.model.trust_remote_code)
        shutil.rmtree(merged, ignore_errors=True)
        staging.rename(merged)
    return merged


def _tune(variant: VariantPlan, emit: Emit, unit: Unit) -> Variant:
    """Train ``variant`` on its parent (the base, or another variant's weights); the
    checkpoints it keeps that the unit needs become ready variants too."""
    parent = _parent(variant, unit)
    tuner = variant.tuner.cls(variant.tuner.options)
    final_dir = variant.output_dir
    # The staging folder is the variant's own (its key is in the name): a run that was
    # killed while tuning left its checkpoints there, and tuners that write them resume.
    staging = final_dir.with_name(final_dir.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    emit(TuningStarted(variant))
    model, base_path = variant.model, None
    if parent is not None:  # the parent's weights are the model to tune, and its reference
        base_path = start_weights(parent)
        model = replace(model, path=base_path, fingerprint=parent.key)
    seed = variant.seed if variant.seed is not None else 0
    _seed_everything(seed)
    job = TuneJob(
        model=model, variant_name=variant.name, data=Path(variant.tuner.data),
        output_dir=staging, seed=seed,
        on_step=lambda step, total, loss: emit(TuningStep(variant, step, total, loss)),
        rewards=variant.rewards, parent=parent.name if parent is not None else None,
        save_every=variant.save_every,
    )
    try:
        result = tuner.tune(job)
    except PLUGIN_FAILURES:
        shutil.rmtree(staging, ignore_errors=True)  # a failure starts again from scratch
        raise
    # Only a complete adapter or weights folder gets the final name.
    shutil.rmtree(final_dir, ignore_errors=True)
    staging.rename(final_dir)
    kept = {step: final_dir / path.relative_to(staging)
            for step, path in result.checkpoints.items()}
    result = TuneResult(result.kind, final_dir / result.path.relative_to(staging),
                        result.record, kept)
    emit(TuningFinished(variant, result))
    parent_name = parent.name if parent is not None else None
    for checkpoint in unit.variants:
        if checkpoint.origin == "checkpoint" and checkpoint.sources[0].key == variant.key:
            if checkpoint.step in kept:
                unit.trained[checkpoint.key] = Variant(
                    checkpoint.name, checkpoint.key, variant.model, result.kind,
                    kept[checkpoint.step], variant.method,
                    base_path if result.kind == "adapter" else None, parent_name)
                emit(VariantMade(checkpoint, result.kind, kept[checkpoint.step]))
    return Variant(variant.name, variant.key, variant.model, result.kind, result.path,
                   variant.method, base_path if result.kind == "adapter" else None,
                   parent_name)


def _checkpoint(variant: VariantPlan, emit: Emit, unit: Unit, attempted: set[str]) -> Variant:
    """A checkpoint comes from its tuning run: run again when the state it kept is gone
    (deleted, or kept by a run of an older suite), once per unit."""
    final = variant.sources[0]
    if final.key not in attempted:
        attempted.add(final.key)
        unit.trained[final.key] = _tune(final, emit, unit)
    elif final.key not in unit.trained:
        raise RuntimeError(f"its tuning run {final.name!r} failed")
    ready = unit.trained.get(variant.key)
    if ready is None:
        raise RuntimeError(f"tuning {final.name!r} kept no state at step {variant.step}")
    return ready


def _transform(variant: VariantPlan, emit: Emit, unit: Unit) -> Variant:
    """Make a transformed variant of its ready sources."""
    sources = []
    for source in variant.sources:
        if source.key not in unit.trained:
            raise RuntimeError(f"its source {source.name!r} was not made")
        sources.append(unit.trained[source.key])
    parent = _parent(variant, unit)
    parent_weights = start_weights(parent) if parent is not None else variant.model.path
    transform = variant.transform.cls(variant.transform.options)
    final_dir = variant.output_dir
    staging = final_dir.with_name(final_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    emit(TuningStarted(variant))
    clock = time.perf_counter()
    seed = variant.seed if variant.seed is not None else 0
    _seed_everything(seed)  # DARE's random pruning, for one
    try:
        result = transform.apply(TransformJob(variant.model, sources, parent_weights,
                                              variant.output, staging, seed))
        if not isinstance(result, TransformResult) or result.kind not in ("adapter", "weights"):
            raise TypeError(f"transform {variant.method!r} returned {result!r}, expected a "
                            "TransformResult of kind 'adapter' or 'weights'")
        path = final_dir / result.path.relative_to(staging)
    except PLUGIN_FAILURES:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(final_dir, ignore_errors=True)
    staging.rename(final_dir)
    emit(VariantMade(variant, result.kind, path, time.perf_counter() - clock))
    adapter_base = sources[0].base_path if result.kind == "adapter" else None
    return Variant(variant.name, variant.key, variant.model, result.kind, path,
                   variant.method, adapter_base, parent.name if parent is not None else None)


def _evaluate(cell: CellPlan, backend: Backend) -> CellOutcome:
    started, clock = utcnow(), time.perf_counter()
    cls = cell.evaluator.cls
    what = f"evaluator {cell.evaluator.kind!r} ({cls.__module__}.{cls.__qualname__})"

    def failed(error: str, tb: str | None) -> CellOutcome:
        return CellOutcome("failed", error=error, traceback=tb,
                           seconds=time.perf_counter() - clock, started_at=started,
                           finished_at=utcnow())

    try:
        _seed_everything(cell.seed)
        spec = EvaluatorSpec(cell.evaluator.name, cell.evaluator.kind,
                             cell.evaluator.role or "general", cell.evaluator.data or "", cell.seed,
                             cell.evaluator_models)
        evaluator = cls(spec, cell.evaluator.options)
        result = evaluator.evaluate(backend)
        problem = check_eval_result(result)
        if problem is not None:  # the store would refuse it, or keep nonsense
            return failed(f"{what} returned a bad result: {problem}", None)
        if cell.membership_k is not None and result.samples:
            _score_membership(result.samples, backend, cell.membership_k)
        return CellOutcome("done", result.metrics, result, seconds=time.perf_counter() - clock,
                           started_at=started, finished_at=utcnow())
    except PLUGIN_FAILURES as exc:
        return failed(failure_text(exc, what), traceback.format_exc())


def _score_membership(samples: list[Sample], backend: Backend, k: float) -> None:
    """Min-K% and Min-K%++ of each item's text (prompt and target) under the active model;
    left empty when the backend has no ``token_moments``."""
    # here, not at import: numpy loads only when a run scores membership
    from harness.analysis.contamination import membership_scores
    from harness.analysis.items import item_text

    texts = [item_text(s.prompt, s.target, None) for s in samples]  # prompt and target
    moments_per_text = backend.token_moments(texts)
    if moments_per_text is None:
        return
    for sample, moments in zip(samples, moments_per_text):
        if moments.logprobs:
            sample.min_k, sample.min_k_plus = membership_scores(
                moments.logprobs, moments.means, moments.stds, k)


def fail_cells(cells: list[CellPlan], error: str, tb: str | None, emit: Emit) -> None:
    """Cells that cannot run (their tuning, their model or their worker failed) still start
    and finish, as failed. Executors call it for the cells of a unit whose worker died."""
    for cell in cells:
        now = utcnow()
        emit(CellStarted(cell))
        emit(CellFinished(cell, CellOutcome("failed", error=error, traceback=tb,
                                            started_at=now, finished_at=now)))


def _parent(variant: VariantPlan, unit: Unit) -> Variant | None:
    """The ready parent of a variant made of another; None for a child of the base."""
    parent = variant.parent
    if parent is None or parent.is_base:
        return None
    ready = unit.trained.get(parent.key)
    if ready is None:
        raise RuntimeError(f"its parent {parent.name!r} was not tuned")
    return ready


def run_unit(unit: Unit, emit: Emit) -> None:
    """Tune what is missing, then evaluate every pending cell of one base model."""
    _quiet_libraries()
    backend = None
    attempted: set[str] = set()  # tuning runs started in this unit
    try:
        for index, variant in enumerate(unit.variants):
            cells = [c for c in unit.cells if c.variant.key == variant.key]
            ready = unit.trained.get(variant.key)
            if ready is None:
                try:
                    if variant.origin == "checkpoint":
                        ready = _checkpoint(variant, emit, unit, attempted)
                    elif variant.origin == "transformed":
                        ready = _transform(variant, emit, unit)
                    else:
                        attempted.add(variant.key)
                        ready = _tune(variant, emit, unit)
                except PLUGIN_FAILURES as exc:
                    verb = "making" if variant.origin == "transformed" else "tuning"
                    error = f"{verb} {variant.name!r} failed: " + failure_text(
                        exc, "the " + ("transform" if variant.origin == "transformed"
                                       else "tuner"))
                    tb = traceback.format_exc()
                    emit(TuningFinished(variant, None, error, tb))
                    fail_cells(cells, error, tb, emit)
                    continue
                unit.trained[variant.key] = ready  # its children start from it
            if not cells:  # an ancestor tuned only for its descendants' sake
                continue
            if backend is None:
                try:
                    backend = unit.backend_class(unit.backend_options)
                    backend.load(unit.model)
                except PLUGIN_FAILURES as exc:
                    error = f"loading {unit.model.name!r} failed: " + failure_text(
                        exc, "the backend")
                    tb = traceback.format_exc()
                    later = {v.key for v in unit.variants[index:]}
                    fail_cells([c for c in unit.cells if c.variant.key in later], error, tb, emit)
                    backend = None
                    return
            try:
                if ready.base_path is not None and not ready.base_path.is_dir():
                    start_weights(unit.trained[variant.parent.key])  # removed since: again
                backend.activate(ready)
            except PLUGIN_FAILURES as exc:
                error = f"activating {variant.name!r} failed: " + failure_text(exc, "the backend")
                fail_cells(cells, error, traceback.format_exc(), emit)
                continue
            route = backend.route()
            for cell in cells:
                emit(CellStarted(cell))
                outcome = _evaluate(cell, backend)
                outcome.route = route
                emit(CellFinished(cell, outcome))
    finally:
        if backend is not None:
            backend.close()
