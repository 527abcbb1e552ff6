"""How fast the store writes many rows: samples per cell, contamination findings, and the
writes of a 5,000-item run.

    python bench/store_writes.py [--samples 5000 100000] [--contamination 40000]
                                 [--repeats 5] [--out FILE]

Each repeat writes into a fresh store (created and initialised before the clock), through
the store's own typed writes exactly as a run calls them, in this process, timed with
`time.perf_counter` around the call (opening the file, the transaction, the commit and
closing it are all inside):

- `Store.write_cell`: one cell with 2 metrics, 1 alert and N samples shaped like the
  `benchmark` evaluator's multiple-choice samples (a prompt of 200-400 characters, a
  target and an output, a score, 4 log-probabilities, an `extra` dict, membership scores),
  its items' texts new to the store (a base's cell);
- the same for a variant's cell: the same items written once before (outside the clock),
  so their texts are stored already and only the samples' own columns are written;
- `Store.write_contamination`: N findings, replacing two (variant, evaluator) pairs' older
  findings;
- the 5,000-item run of issue 18: every write of a run of a base and two LoRA variants on
  one 5,000-item evaluator, into a new store (13 transactions: its tables, the run, the
  model, 2 variants, 3 cells of 5,000 samples, 2 paired tests, recipe tests, the gate,
  40,000 contamination findings (2 variants x 5,000 items x exact, ngram-13, min-k,
  min-k++) and the run's end), in all.

Building the rows is outside the clock. Reports rows/s as the median over the repeats,
and the process's CPU seconds for the same calls (`time.process_time`, every thread): on a
shared CPU the wall time includes waiting for the other jobs, the CPU time does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import Alert, Metric, ResolvedModel, Sample  # noqa: E402
from harness.store import (  # noqa: E402
    CellRow,
    ContaminationRow,
    GateRow,
    PairedTestRow,
    RecipeTestRow,
    RunRow,
    Store,
    VariantRow,
)

WORDS = ("the of and to in is was for on that with as by at from his an were are which "
         "capital river island harbour north south minister elected founded ancient").split()


def _text(rng: random.Random, low: int, high: int) -> str:
    words, size = [], 0
    target = rng.randint(low, high)
    while size < target:
        words.append(rng.choice(WORDS))
        size += len(words[-1]) + 1
    return " ".join(words)


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample(index=i, item_id=str(i), prompt=_text(rng, 200, 400) + "\nAnswer:",
                   target=_text(rng, 5, 30), output=_text(rng, 5, 30),
                   score=float(rng.random() < 0.5),
                   logprobs=[-rng.random() * 10 for _ in range(4)],
                   extra={"task": "mmlu", "doc_id": i, "acc": 1.0, "acc_norm": 0.0},
                   min_k=-rng.random() * 5, min_k_plus=rng.gauss(0, 1))
            for i in range(n)]


def make_findings(n: int, seed: int = 0) -> list[ContaminationRow]:
    rng = random.Random(seed)
    methods = ("exact", "ngram-13", "min-k", "min-k++")
    rows = []
    for i in range(n):
        variant = f"lora-{i // (n // 2 or 1) % 2}"
        method = methods[i % 4]
        rows.append(ContaminationRow(
            f"ak-{variant}-{method}", "bench", "smollm2-135m", variant, f"vk-{variant}", "mmlu",
            "ek-mmlu", i // 4, str(i // 4), "data/sft.jsonl", method, rng.random(),
            rng.random() < 0.01, json.dumps({"overlap": rng.random(), "ngrams": 13})))
    return rows


def _cell(key: str, variant: str) -> CellRow:
    return CellRow(cell_key=key, run_id="bench", suite="bench", model_name="smollm2-135m",
                   model_key="mk", variant_name=variant, variant_key=f"vk-{variant}",
                   evaluator="mmlu", evaluator_kind="benchmark", evaluator_key="ek-mmlu",
                   role="general", backend="hf", status="done", seconds=1.0)


METRICS = [Metric("acc", 0.5, n=5000, stderr=0.007, primary=True), Metric("acc_norm", 0.4, n=5000)]
ALERTS = [Alert("kl_mean", 0.8, 0.25, "token KL to the base 0.808 nats/token > 0.25")]
REPLACED = [("vk-lora-0", "ek-mmlu", ["exact", "ngram-%"]),
            ("vk-lora-1", "ek-mmlu", ["exact", "ngram-%", "min-k%"])]


def _fresh_store(tmp: str, name: str) -> Store:
    store = Store(Path(tmp) / f"{name}.duckdb")
    store.initialise()
    return store


class Clock:
    """Wall and CPU seconds of the block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_samples(n: int, tmp: str, name: str) -> Clock:
    samples, store = make_samples(n), _fresh_store(tmp, name)
    with Clock() as clock:
        store.write_cell(_cell("c-base", "base"), METRICS, samples, ALERTS)
    return clock


def time_variant_samples(n: int, tmp: str, name: str) -> Clock:
    """A variant's cell: the same items as the base's cell already written, so that their
    texts are in the store and only the samples' own columns are new."""
    samples, store = make_samples(n), _fresh_store(tmp, name)
    store.write_cell(_cell("c-base", "base"), METRICS, samples, ALERTS)
    with Clock() as clock:
        store.write_cell(_cell("c-lora", "lora"), METRICS, samples, ALERTS)
    return clock


def time_findings(n: int, tmp: str, name: str) -> Clock:
    rows, store = make_findings(n), _fresh_store(tmp, name)
    with Clock() as clock:
        store.write_contamination(REPLACED, rows)
    return clock


def time_run(items: int, tmp: str, name: str) -> Clock:
    """Every store write of a run of a base and two variants on one evaluator of ``items``
    items, into a new store: its tables, the run, the model, the two variants, the three
    cells, the paired tests, recipe tests (none), the gate, the contamination findings
    (``items`` x 2 variants x 4 methods) and the run's end; 13 transactions."""
    samples, findings = make_samples(items), make_findings(8 * items)
    pairs = [PairedTestRow(f"c-lora-{v}", "c-base", "mcnemar-midp", items, -0.01, -0.02, 0.0,
                           0.3, None, 40, 35) for v in (0, 1)]
    variants = [VariantRow(f"vk-lora-{v}", "bench", "smollm2-135m", "mk", f"lora-{v}", "lora",
                           steps=100, loss_curve=[2.0 - i / 100 for i in range(100)])
                for v in (0, 1)]
    gates = [GateRow("bench", "smollm2-135m", f"lora-{v}", f"vk-lora-{v}", "mmlu", "acc", "acc",
                     "mcnemar-midp", items, 0.01, -0.01, 0.02, 0.3, 0.6, 0.01, 0.05, 0.02,
                     "GO", "no significant loss") for v in (0, 1)]
    model = ResolvedModel("smollm2-135m", "builtin:smollm2-135m", Path(tmp), "mk")
    store = Store(Path(tmp) / f"{name}.duckdb")
    with Clock() as clock:
        store.initialise()
        store.start_run(RunRow("bench", "bench", "suite.toml", "0", datetime.now(), None,
                               "running", 3, 0))
        store.write_model(model)
        for variant in variants:
            store.write_variant(variant)
        for key, variant in (("c-base", "base"), ("c-lora-0", "lora-0"),
                             ("c-lora-1", "lora-1")):
            store.write_cell(_cell(key, variant), METRICS, samples)
        store.write_paired_tests(pairs)
        store.replace_suite_rows(RecipeTestRow, "bench", [])
        store.replace_suite_rows(GateRow, "bench", gates)
        store.write_contamination(REPLACED, findings)
        store.finish_run("bench", "done", 3, 0, 100.0)
    return clock


def _medians(clocks: list[Clock]) -> tuple[float, float]:
    return statistics.median(c.wall for c in clocks), statistics.median(c.cpu for c in clocks)


def _versions() -> dict[str, str]:
    import duckdb

    versions = {"python": platform.python_version(), "duckdb": duckdb.__version__}
    try:
        import pyarrow

        versions["pyarrow"] = pyarrow.__version__
    except ImportError:
        pass
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[5000, 100_000],
                        help="samples per cell, one measurement each")
    parser.add_argument("--contamination", type=int, nargs="+", default=[40_000],
                        help="findings per write_contamination call")
    parser.add_argument("--run-items", type=int, default=5000,
                        help="items of the base + two variants run (0: skip it)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "store_writes.json")
    args = parser.parse_args()
    report: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                               f"{os.cpu_count()} cores",
                    "load_average_before": os.getloadavg()[0], "versions": _versions(),
                    "repeats": args.repeats, "samples": [], "variant_samples": [],
                    "contamination": []}
    jobs = [("samples", n, time_samples) for n in args.samples]
    jobs += [("variant_samples", n, time_variant_samples) for n in args.samples]
    jobs += [("contamination", n, time_findings) for n in args.contamination]
    with tempfile.TemporaryDirectory() as tmp:
        time_samples(100, tmp, "warm-up")  # imports and DuckDB's first connection
        for kind, n, timer in jobs:
            clocks = [timer(n, tmp, f"{kind}-{n}-{r}") for r in range(args.repeats)]
            wall, cpu = _medians(clocks)
            report[kind].append({"rows": n, "seconds": [round(c.wall, 4) for c in clocks],
                                 "cpu_seconds": [round(c.cpu, 4) for c in clocks],
                                 "median_seconds": round(wall, 4),
                                 "median_cpu_seconds": round(cpu, 4),
                                 "rows_per_second": round(n / wall),
                                 "rows_per_cpu_second": round(n / cpu)})
            print(f"{kind:>15}: {n:>7,} rows in {wall:7.3f} s = {n / wall:>9,.0f} rows/s "
                  f"({cpu:.3f} CPU s = {n / cpu:>9,.0f} rows/CPU s), medians of {args.repeats}",
                  flush=True)
        if args.run_items:
            clocks = [time_run(args.run_items, tmp, f"run-{r}") for r in range(args.repeats)]
            wall, cpu = _medians(clocks)
            report["run"] = {"items": args.run_items, "seconds": [round(c.wall, 4) for c in clocks],
                             "median_seconds": round(wall, 4), "median_cpu_seconds": round(cpu, 4)}
            print(f"a {args.run_items:,}-item run (13 writes: 3 cells, 2 paired tests, "
                  f"{8 * args.run_items:,} findings, ...): {wall:.3f} s in store writes "
                  f"({cpu:.3f} CPU s), medians of {args.repeats}", flush=True)
    report["load_average_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
