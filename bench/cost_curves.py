"""Cost curves: grow the work and see how run time, peak memory and store size follow it.

    python bench/cost_curves.py [items|variants|tuning-rows|store|all] [--quick]
        [--items 40,200,1000,5000,20000] [--items-variants 1]
        [--variants 1,2,4,8,16] [--variant-items 1000] [--tune-steps 2] [--membership on|off]
        [--tuning-rows 1000,5000,10000,25000,50000,100000] [--tuning-items 5000]
        [--store-samples 100000,300000,1000000] [--store-variants 4] [--store-evaluators 4]
        [--report-formats html,md] [--repeats 1] [--query-repeats 3] [--no-warm-up]
        [--out FILE] [--figures DIR]

A straight line is fitted to every measured series of a curve (`numpy.polyfit`, degree 1:
slope, intercept, R^2, and how far the worst point lies off the line). A series is called
linear when R^2 >= 0.99 over the whole range; otherwise the output says from which size on
it is (the smallest size from which the remaining points, three at least, fit with
R^2 >= 0.99), or that it is flat. Raw numbers go to `bench/results/cost_curves.json` (a
curve measured alone replaces its own entry and keeps the others'; each entry has the
machine and library versions), figures to `docs/figures/cost_<curve>.svg` (`cost_items`,
`cost_variants`, `cost_tuning_rows`, `cost_store`). `--quick` (tiny sizes, about a minute
on a quiet CPU: a check that the script works) writes `bench/results/cost_curves_quick.json`
and `bench/results/quick_figures/` instead.

* `items`: a real run of the built-in `tiny-random` model on one multiple-choice evaluator of
  N generated items (4 choices each; `bench/eval_overhead.py`'s generator): the base and
  `--items-variants` (1) LoRA variant(s), tuned by the `lora` tuner (r 8) for `--tune-steps`
  (2) optimiser steps on the quickstart's SFT data (83 rows); `hf` backend at batch 64;
  Min-K% membership scores on, as by default (`--membership off` turns them off); no
  reporters (the report's cost is the `store` curve's).
* `variants`: the same run on `--variant-items` (1,000) items with K LoRA variants: one
  `[[tuners]]` entry with `seeds = [0, ..., K-1]`, so K tunings of `--tune-steps` steps and
  K + 1 cells. A suite cannot refer to an adapter made outside it, so each variant is tuned
  as in a user's run; the steps are few, so what grows is mostly the evaluation, and the
  store's `variants.seconds` (tuning) and `cells.seconds` (evaluation) split the time.

  Each point of both is a fresh process calling `harness.runner.run_suite` (what
  `harness run` calls) on a new suite and store, as `bench/eval_overhead.py` does.
  `run_seconds` is timed inside it around `run_suite`, after importing torch, transformers,
  peft and lm-eval: plugin loading, suite checks, the model load, tuning (trl is imported by
  the first one), evaluation, membership scores, store writes, paired tests, contamination
  checks and the gate. `process_seconds` is the whole process's wall time (interpreter and
  imports too: what a user waits for), `cpu_seconds` its user + system time, `peak_rss_mib`
  its peak resident set, and `cell_seconds` and `tune_seconds` the sums the store recorded.
* `tuning-rows`: the contamination index against N tuning rows, with `--tuning-items`
  (5,000) items, as `harness.analysis.findings.record_contamination` builds and uses it:
  reading the tuning JSONL (`read_tuning_texts`), indexing it (`NgramIndex`), the 13-gram
  table (built on the first lookup) and checking every item, exact and 13-gram
  (`data_side`). Rows and items are `bench/contamination_index.py`'s (40-120 and 20-60
  words of a 20,000-word Zipf vocabulary, 25 items planted in tuning rows); each point reads
  the first N rows of one file, in a fresh process, timed inside with `time.perf_counter`
  around those four steps (making the data is outside).
* `store`: a store of S samples written by the harness's own writers (`Store`'s typed
  writes, as a run calls them; `bench/store_writes.py`'s shapes, 64-hex content keys): one
  model, a base and `--store-variants` (4) LoRA variants x `--store-evaluators` (4; the
  last `target`, the others `general`) benchmark evaluators of S / ((variants + 1) x
  evaluators) items each, one cell each, with their metrics; the variants' rows with loss
  curves; a paired test per variant and evaluator; the gate's rows; 4 contamination findings
  per variant, evaluator and item (exact, ngram-13, min-k, min-k++; 0.5% flagged; one
  `write_contamination` per variant and evaluator, where a run makes one in all). A sample
  is a multiple-choice one as the `benchmark` evaluator stores it: a 200-400-character
  question in its prompt, the right choice as target, the chosen one as output, a score, 4
  log-probabilities, the question alone as its `query`, an `extra` dict, and membership
  scores. Measured: the file's bytes / S (everything the run stores, per sample);
  the seconds inside the writes (making the rows is outside); `SELECT * FROM forgetting` and
  `SELECT * FROM clean_scores` through `harness.query` (what `harness sql` calls: open
  read-only, run, fetch every row, close; the median of `--query-repeats`, all kept); and
  `harness report STORE --format html|md` as a fresh process (wall time, peak resident
  set). Then the same rows go into a second store with each item's text once per
  evaluator by hand: the variants' samples without prompt, target and query (the base's
  cell keeps them). The store already keeps each text once (`item_texts`), so the
  difference in bytes should be close to nothing: what the variants' samples still cost
  for their texts.

Every measured process is started through a small launcher process that reports the
process's own `os.wait4` usage: Linux counts, in a process's peak resident set, the memory
of the process it was forked from, so a child started straight from this script would
report at least this script's own peak. With warm-up on (not with `--quick`), each curve's
first point runs once more before it is measured (the first process after a while reads its
libraries from disk). Times on a shared CPU include waiting for the other jobs (each curve
records the load average before and after); peak memory is not affected.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
from harness import Metric, ResolvedModel, Sample  # noqa: E402
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

from contamination_index import vocabulary  # noqa: E402  bench/contamination_index.py
from eval_overhead import write_items  # noqa: E402  bench/eval_overhead.py

SFT_DATA = REPO / "suites" / "data" / "task_sft.jsonl"
CURVES = ("items", "variants", "tuning-rows", "store")
LINEAR_R2 = 0.99

DEFAULTS = {
    "items": [40, 200, 1000, 5000, 20000],
    "variants": [1, 2, 4, 8, 16],
    "tuning_rows": [1000, 5000, 10_000, 25_000, 50_000, 100_000],
    "store_samples": [100_000, 300_000, 1_000_000],
    "variant_items": 1000, "tuning_items": 5000, "store_variants": 4, "store_evaluators": 4,
}
QUICK = {
    "items": [20, 80], "variants": [1, 2], "tuning_rows": [500, 2000, 4000],
    "store_samples": [2000, 10_000], "variant_items": 20, "tuning_items": 200,
    "store_variants": 2, "store_evaluators": 2,
}


# -- one measured child process ---------------------------------------------------------

@dataclass
class Child:
    stdout: str
    seconds: float  # wall time of the whole process
    cpu_seconds: float  # user + system
    peak_rss_mib: float  # its own peak resident set

    def result(self) -> dict:
        """The JSON object the child printed last."""
        return json.loads(self.stdout.strip().splitlines()[-1])


#: Starts the measured command from a small process of its own. Linux keeps a process's peak
#: resident set across exec, and counts in it the memory of the process it was forked from
#: (with vfork or posix_spawn, the parent's own peak), so a child started straight from this
#: script would report at least this script's peak. This launcher (a bare interpreter, far
#: smaller than any measured process) forks, the child execs the command, and the launcher
#: reports the child's own usage from ``os.wait4``.
LAUNCHER = r"""
import json, os, sys, time
clock = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": time.perf_counter() - clock, "status": os.waitstatus_to_exitcode(status),
               "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_kib": usage.ru_maxrss}, out)
"""


def run_child(command: list[str], cwd: Path | None = None) -> Child:
    """Run ``command`` to its end, through ``LAUNCHER``; its wall and CPU time and peak
    resident set are its own."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        usage_file, out_file, err_file = (Path(tmp) / name for name in ("usage", "out", "err"))
        with out_file.open("w") as out, err_file.open("w") as err:
            subprocess.run([sys.executable, "-c", LAUNCHER, str(usage_file), *command],
                           stdout=out, stderr=err, cwd=cwd, env=env, check=False)
        usage = json.loads(usage_file.read_text()) if usage_file.exists() else {"status": -1}
        if usage["status"]:
            raise SystemExit(f"{' '.join(command[:4])} ... failed ({usage['status']}):\n"
                             + (err_file.read_text() + out_file.read_text())[-3000:])
        return Child(out_file.read_text(), usage["seconds"], usage["cpu_seconds"],
                     usage["peak_kib"] / 1024)


# -- fitting a line -----------------------------------------------------------------------

def _r2(x: np.ndarray, y: np.ndarray) -> float:
    slope, intercept = np.polyfit(x, y, 1)
    total = float(np.sum((y - y.mean()) ** 2))
    residual = float(np.sum((y - (slope * x + intercept)) ** 2))
    return 1.0 - residual / total if total > 0 else 1.0


def fit(xs: list[float], ys: list[float]) -> dict:
    """A least-squares line through the points, and whether the points lie on one: over
    the whole range (R^2 >= LINEAR_R2), else from which size on (three points at least)."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(set(xs)) < 2:  # one size: no line
        return {"slope": 0.0, "intercept": float(y.mean()), "r2": float("nan"), "linear": False,
                "linear_from": None, "verdict": "one size only", "points": len(x),
                "max_relative_residual": 0.0}
    slope, intercept = np.polyfit(x, y, 1)
    predicted = slope * x + intercept
    r2 = _r2(x, y)
    linear_from = next((float(x[i]) for i in range(len(x) - 2)
                        if _r2(x[i:], y[i:]) >= LINEAR_R2), None)
    if len(x) < 3:
        verdict = "too few points to tell"
    elif r2 >= LINEAR_R2:
        verdict = "linear"
    elif abs(slope) * (x.max() - x.min()) < 0.05 * abs(y.mean()):
        verdict = "flat (the line moves < 5% over the range)"
    elif linear_from is not None:
        verdict = f"linear from {linear_from:,.0f} on"
    else:
        verdict = "not linear"
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2,
            "linear": len(x) >= 3 and r2 >= LINEAR_R2, "linear_from": linear_from,
            "verdict": verdict, "points": len(x),
            "max_relative_residual": float(np.max(np.abs(y - predicted)
                                                  / np.maximum(np.abs(y), 1e-12)))}


@dataclass
class Series:
    """One measured quantity of a curve: what it is, its unit, and how its slope reads."""

    key: str
    label: str
    unit: str
    per: float  # the slope is printed per this many x units
    per_label: str


def fit_series(points: list[dict], x_key: str, series: list[Series]) -> dict:
    xs = [p[x_key] for p in points]
    fits = {}
    for s in series:
        if all(p.get(s.key) is not None for p in points):
            f = fits[s.key] = fit(xs, [p[s.key] for p in points])
            f.update({"label": s.label, "unit": s.unit, "per": s.per, "per_label": s.per_label})
            print(f"  {s.label}: {f['intercept']:.4g} {s.unit} + {f['slope'] * s.per:.4g} "
                  f"{s.unit} per {s.per_label} (R^2 {f['r2']:.4f}, points off the line by up to "
                  f"{f['max_relative_residual']:.0%}; {f['verdict']})", flush=True)
    return fits


# -- the items and variants curves: real runs -----------------------------------------------

RUN = r"""
import json, os, sys, time
os.environ["TQDM_DISABLE"] = "1"
import torch, transformers, peft, lm_eval, lm_eval.evaluator  # untimed, as in eval_overhead.py
from rich.console import Console
from harness.runner import run_suite
clock = time.perf_counter()
summary = run_suite(sys.argv[1], console=Console(file=open(os.devnull, "w")), show_progress=False)
seconds = time.perf_counter() - clock
print(json.dumps({"run_seconds": seconds, "cells": summary.done, "failed": summary.failed}))
"""


def run_suite_text(name: str, items: Path, store: Path, variants: int, steps: int,
                   membership: bool) -> str:
    tuners = "" if not variants else f"""
[[tuners]]
name = "lora"
method = "lora"
data = "{SFT_DATA}"
seeds = {list(range(variants))}
options = {{ r = 8, alpha = 16, steps = {steps}, lr = 1e-3, batch_size = 4, max_length = 128 }}
"""
    return f"""
[suite]
name = "{name}"
store = "{store}"
reporters = []

[[models]]
name = "tiny"
source = "builtin:tiny-random"
{tuners}
[[evaluators]]
name = "mc"
kind = "benchmark"
data = "{items}"

[backend]
kind = "hf"
options = {{ batch_size = 64, device = "cpu", dtype = "float32" }}

[contamination]
membership = {str(membership).lower()}
"""


def measure_run(folder: Path, items: int, variants: int, steps: int, membership: bool,
                repeats: int, warm_up: bool = False) -> dict:
    """``repeats`` runs of base + ``variants`` LoRA variants on ``items`` items, each a fresh
    process on a fresh store; medians. ``warm_up``: one more run first, not counted (the
    first process after a while reads its libraries from disk)."""
    data = write_items(folder / f"items-{items}.jsonl", items)
    runs = []
    for repeat in range(-1 if warm_up else 0, repeats):
        store = folder / f"run-{items}-{variants}-{repeat}.duckdb"
        suite = folder / f"run-{items}-{variants}-{repeat}.toml"
        suite.write_text(run_suite_text(f"cost-{items}-{variants}", data, store, variants,
                                        steps, membership))
        child = run_child([sys.executable, "-c", RUN, str(suite)])
        result = child.result()
        if result["failed"]:
            raise SystemExit(f"{suite}: {result['failed']} cell(s) failed")
        _, [(samples, cell_seconds)] = harness.query(
            store, "SELECT (SELECT count(*) FROM samples), sum(seconds) FROM cells")
        _, [(tune_seconds,)] = harness.query(
            store, "SELECT coalesce(sum(seconds), 0) FROM variants")
        runs.append({"run_seconds": result["run_seconds"], "process_seconds": child.seconds,
                     "cpu_seconds": child.cpu_seconds, "peak_rss_mib": child.peak_rss_mib,
                     "cell_seconds": cell_seconds, "tune_seconds": tune_seconds,
                     "cells": result["cells"], "samples": samples,
                     "store_bytes": store.stat().st_size})
        for path in (store, suite):
            path.unlink()
        if repeat < 0:
            runs.clear()
    point = {"items": items, "variants": variants, "repeats": runs}
    point.update({key: statistics.median(r[key] for r in runs) for key in runs[0]})
    return point


def run_series(per: float, per_label: str) -> list[Series]:
    """What the items and variants curves fit, with slopes per ``per`` of their x."""
    return [Series(key, label, unit, per, per_label) for key, label, unit in (
        ("process_seconds", "process wall time", "s"),
        ("run_seconds", "run_suite wall time", "s"),
        ("cpu_seconds", "process CPU time", "s"),
        ("cell_seconds", "evaluation (cells.seconds)", "s"),
        ("tune_seconds", "tuning (variants.seconds)", "s"),
        ("peak_rss_mib", "peak resident memory", "MiB"))]


def curve_items(args: argparse.Namespace, folder: Path) -> dict:
    return _run_curve(args, folder, "items", args.items,
                      lambda n: (n, args.items_variants), run_series(1000, "1,000 items"),
                      variants=args.items_variants)


def curve_variants(args: argparse.Namespace, folder: Path) -> dict:
    return _run_curve(args, folder, "variants", args.variants,
                      lambda k: (args.variant_items, k), run_series(1, "variant"),
                      items=args.variant_items)


def _run_curve(args: argparse.Namespace, folder: Path, x_name: str, sizes: list[int],
               items_and_variants: Callable[[int], tuple[int, int]], series: list[Series],
               **fixed: int) -> dict:
    """One `harness run` per size; ``items_and_variants(size)`` gives the run's items and
    variants."""
    points = []
    for size in sizes:
        items, variants = items_and_variants(size)
        points.append(measure_run(folder, items, variants, args.tune_steps,
                                  args.membership == "on", args.repeats,
                                  warm_up=args.warm_up and not points))
        _print_run(x_name, size, points[-1])
    return {"x": x_name, **fixed, "tune_steps": args.tune_steps,
            "membership": args.membership, "points": points,
            "fits": fit_series(points, x_name, series)}


def _print_run(x_name: str, x: int, p: dict) -> None:
    print(f"{x_name} {x:>6,}: process {p['process_seconds']:7.1f} s, run_suite "
          f"{p['run_seconds']:7.1f} s (cells {p['cell_seconds']:.1f} s, tuning "
          f"{p['tune_seconds']:.1f} s), CPU {p['cpu_seconds']:7.1f} s, peak "
          f"{p['peak_rss_mib']:,.0f} MiB; {p['cells']} cells, {p['samples']:,} samples",
          flush=True)


# -- the tuning-rows curve: the contamination index ------------------------------------------

INDEX = r"""
import json, sys, time
from pathlib import Path
from harness.analysis.contamination import NgramIndex, data_side, read_tuning_texts
from harness.analysis.items import Item
data, items_file, planted = Path(sys.argv[1]), sys.argv[2], set(json.loads(sys.argv[3]))
questions = json.loads(Path(items_file).read_text())
items = [Item(i, str(i), q) for i, q in enumerate(questions)]
clock = time.perf_counter()
texts = read_tuning_texts(data)
read = time.perf_counter()
index = NgramIndex(texts)
del texts
built = time.perf_counter()
index.overlap(["warm", "up"] * 7, 13)  # builds the 13-gram table, as the first lookup does
table = time.perf_counter()
findings = data_side(items, index, 13, 0.0)
done = time.perf_counter()
flagged = {f["item"].index for f in findings if f["method"] == "ngram-13" and f["flagged"]}
print(json.dumps({"seconds": done - clock, "read_seconds": read - clock,
                  "index_seconds": built - read, "table_seconds": table - built,
                  "check_seconds": done - table, "words": int(len(index.ids)),
                  "found_planted": len(flagged & planted),
                  "flagged_clean": len(flagged - planted)}))
"""


def write_tuning_data(folder: Path, rows: int, items: int, planted: int,
                      seed: int = 0) -> tuple[Path, Path, list[int]]:
    """``bench/contamination_index.py``'s data: tuning rows of 40-120 Zipf-distributed words
    and items of 20-60, ``planted`` of them inside tuning rows (upper case, inside a longer
    text). The planted rows are among the first ``planted`` x 10 rows, so that every prefix of
    the file from that size on holds them all."""
    rng = random.Random(seed)
    words = vocabulary(20_000, rng)
    cumulative = list(np.cumsum([1 / (rank + 1) for rank in range(len(words))]))  # Zipf

    def sentence(length: int) -> str:
        return " ".join(rng.choices(words, cum_weights=cumulative, k=length)).capitalize() + "."

    questions = [sentence(rng.randint(20, 60)) for _ in range(items)]
    chosen = sorted(rng.sample(range(items), planted))
    hosts = dict(zip(rng.sample(range(min(rows, planted * 10)), planted), chosen))
    data = folder / "tuning.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        for row in range(rows):
            text = sentence(rng.randint(40, 120))
            if row in hosts:
                text = f"{text} {questions[hosts[row]].upper()} {text}"
            handle.write(json.dumps({"prompt": f"Question {row}?", "completion": text}) + "\n")
    items_file = folder / "items.json"
    items_file.write_text(json.dumps(questions))
    return data, items_file, chosen


def curve_tuning_rows(args: argparse.Namespace, folder: Path) -> dict:
    planted = min(25, args.tuning_items, min(args.tuning_rows) // 10 or 1)
    data, items_file, chosen = write_tuning_data(folder, max(args.tuning_rows), args.tuning_items,
                                                 planted)
    points = []
    for n in args.tuning_rows:
        prefix = folder / f"tuning-{n}.jsonl"
        with data.open(encoding="utf-8") as source, prefix.open("w", encoding="utf-8") as out:
            for _, line in zip(range(n), source):
                out.write(line)
        runs = []
        for _ in range(args.repeats):
            child = run_child([sys.executable, "-c", INDEX, str(prefix), str(items_file),
                               json.dumps(chosen)], cwd=REPO)
            runs.append({**child.result(), "process_seconds": child.seconds,
                         "peak_rss_mib": child.peak_rss_mib})
        point = {"rows": n, "file_mib": prefix.stat().st_size / 2**20, "repeats": runs}
        point.update({key: statistics.median(r[key] for r in runs) for key in runs[0]})
        points.append(point)
        prefix.unlink()
        print(f"tuning rows {n:>7,} ({point['file_mib']:.1f} MiB, {point['words']:,} words): "
              f"{point['seconds']:.2f} s (read {point['read_seconds']:.2f}, index "
              f"{point['index_seconds']:.2f}, 13-gram table {point['table_seconds']:.2f}, check "
              f"{point['check_seconds']:.2f}), peak {point['peak_rss_mib']:,.0f} MiB; planted "
              f"found {point['found_planted']}/{planted}, clean flagged "
              f"{point['flagged_clean']}", flush=True)
    series = [Series("seconds", "index + check time", "s", 10_000, "10,000 rows"),
              Series("index_seconds", "indexing", "s", 10_000, "10,000 rows"),
              Series("table_seconds", "13-gram table", "s", 10_000, "10,000 rows"),
              Series("check_seconds", "checking the items", "s", 10_000, "10,000 rows"),
              Series("peak_rss_mib", "peak resident memory", "MiB", 10_000, "10,000 rows")]
    return {"x": "rows", "items": args.tuning_items, "planted": planted, "points": points,
            "fits": fit_series(points, "rows", series)}


# -- the store curve: a big store written by the harness's writers ----------------------------

WORDS = ("the of and to in is was for on that with as by at from his an were are which "
         "capital river island harbour north south minister elected founded ancient").split()
METHODS = ("exact", "ngram-13", "min-k", "min-k++")
SUITE = "cost"
FLAG_RATE = 0.005


def _text(rng: random.Random, low: int, high: int) -> str:
    """``bench/store_writes.py``'s filler text: words until the length is reached."""
    words, size = [], 0
    target = rng.randint(low, high)
    while size < target:
        words.append(rng.choice(WORDS))
        size += len(words[-1]) + 1
    return " ".join(words)


def _key(*parts: object) -> str:
    """A content key as a run makes them: 64 hex digits."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


class Clock:
    """Adds up the wall time of the blocks it times."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> Clock:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start


def build_store(path: Path, samples: int, variants: int, evaluators: int,
                text_once: bool, seed: int = 0) -> dict:
    """Write a run's rows (see the module's docstring) into a new store at ``path``;
    ``text_once``: the variants' samples without the item's text. Returns the store's shape
    and the seconds spent in the writes."""
    rng = random.Random(seed)
    items = samples // ((variants + 1) * evaluators)
    store, clock = Store(path), Clock()
    names = ["base"] + [f"lora-{v}" for v in range(variants)]
    keys = {name: _key("variant", name) for name in names}
    model = ResolvedModel("smollm2-135m", "builtin:smollm2-135m-instruct", path.parent,
                          _key("model"))
    started = datetime(2026, 12, 1, 12, 0, 0)
    with clock:
        store.initialise()
        store.start_run(RunRow("run", SUITE, "suite.toml", harness.__version__, started, None,
                               "running", (variants + 1) * evaluators, 0))
        store.write_model(model)
    for v in range(variants):
        row = VariantRow(keys[f"lora-{v}"], SUITE, model.name, model.fingerprint, f"lora-{v}",
                         "lora", "adapter", json.dumps({"r": 8, "steps": 100}),
                         "data/task_sft.jsonl", _key("data"), f"variants/lora-{v}", steps=100,
                         loss_curve=[2.0 - i / 100 + rng.random() / 10 for i in range(100)],
                         final_loss=1.0, seconds=60.0, run_id="run", tuner="lora",
                         origin="tuned", seed=v)
        with clock:
            store.write_variant(row)
    pairs, gates, findings = [], [], 0
    finished = started
    for e in range(evaluators):
        evaluator, evaluator_key = f"eval-{e}", _key("evaluator", e)
        role = "target" if e == evaluators - 1 and evaluators > 1 else "general"
        questions = [_text(rng, 200, 400) for _ in range(items)]
        choices = [[_text(rng, 5, 30) for _ in range(4)] for _ in range(items)]
        answers = [rng.randrange(4) for _ in range(items)]
        base_scores = [float(rng.random() < 0.5) for _ in range(items)]
        for name in names:
            is_base = name == "base"
            scores = base_scores if is_base else [
                1.0 - s if rng.random() < 0.1 else s for s in base_scores]
            batch = []
            for i in range(items):
                chosen = answers[i] if scores[i] else (answers[i] + 1) % 4
                extra = {"task": evaluator, "doc_id": i, "acc": scores[i], "acc_norm": scores[i]}
                keep_text = is_base or not text_once
                batch.append(Sample(
                    index=i, item_id=f"item-{i:06d}",
                    prompt=f"Question: {questions[i]}\nAnswer:" if keep_text else None,
                    target=choices[i][answers[i]] if keep_text else None,
                    output=choices[i][chosen], score=scores[i],
                    logprobs=[-rng.random() * 60 for _ in range(4)], extra=extra,
                    min_k=-rng.random() * 8, min_k_plus=rng.gauss(0, 1),
                    query=questions[i] if keep_text else None))
            mean = sum(scores) / items
            stderr = (mean * (1 - mean) / max(items - 1, 1)) ** 0.5
            metrics = [Metric("acc", mean, n=items, stderr=stderr, primary=True),
                       Metric("acc_norm", mean, n=items, stderr=stderr)]
            finished += timedelta(seconds=60)
            vk = keys[name]
            cell = CellRow(_key("cell", name, e), "run", SUITE, model.name, model.fingerprint,
                           name, vk, evaluator, "benchmark", evaluator_key, role, "hf",
                           "done", seconds=60.0, started_at=finished - timedelta(seconds=60),
                           finished_at=finished, info=json.dumps({"item_score": "acc"}),
                           backend_path="hf")
            with clock:
                store.write_cell(cell, metrics, batch)
            if is_base:
                continue
            lost = sum(1 for b, s in zip(base_scores, scores) if b > s)
            gained = sum(1 for b, s in zip(base_scores, scores) if b < s)
            delta = (gained - lost) / items
            pairs.append(PairedTestRow(cell.cell_key, _key("cell", "base", e), "mcnemar-midp",
                                       items, delta, delta - 0.01, delta + 0.01, 0.5, None,
                                       lost, gained))
            if role == "general":
                gates.append(GateRow(SUITE, model.name, name, vk, evaluator, "acc", "acc",
                                     "mcnemar-midp", items, -delta, -delta - 0.01,
                                     -delta + 0.01, 0.5, 0.5, 0.01, 0.05, 0.01, "GO",
                                     "no significant loss"))
            rows, data_key, model_key = [], _key("data", vk, e), _key("membership", vk, e)
            for i in range(items):
                for method in METHODS:
                    flagged = rng.random() < FLAG_RATE
                    if method == "exact":
                        score, detail = float(flagged), "{}"
                    elif method == "ngram-13":
                        score = rng.random() if flagged else 0.0
                        detail = f'{{"ngrams": 30, "found": {round(30 * score)}, "n": 13}}'
                    else:
                        base = -rng.random() * 8
                        score = rng.gauss(0, 0.1) + (1.0 if flagged else 0.0)
                        detail = f'{{"base": {base!r}, "variant": {base + score!r}}}'
                    analysis = data_key if method in METHODS[:2] else model_key
                    rows.append(ContaminationRow(analysis, SUITE, model.name, name, vk, evaluator,
                                                 evaluator_key, i, f"item-{i:06d}",
                                                 "data/task_sft.jsonl", method, score, flagged,
                                                 detail))
            findings += len(rows)
            with clock:
                store.write_contamination(
                    [(vk, evaluator_key, ("exact", "ngram-%", "min-k", "min-k++"))], rows)
    with clock:
        store.write_paired_tests(pairs)
        store.replace_suite_rows(RecipeTestRow, SUITE, [])
        store.replace_suite_rows(GateRow, SUITE, gates)
        store.finish_run("run", "done", (variants + 1) * evaluators, 0, 1000.0)
    return {"samples": items * (variants + 1) * evaluators, "items_per_evaluator": items,
            "cells": (variants + 1) * evaluators, "findings": findings,
            "write_seconds": clock.seconds}


def _file_bytes(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _query_latency(path: Path, sql: str, repeats: int) -> dict:
    times, rows = [], 0
    for _ in range(repeats):
        clock = time.perf_counter()
        _, result = harness.query(path, sql)
        times.append(time.perf_counter() - clock)
        rows = len(result)
    return {"first_seconds": times[0], "median_seconds": statistics.median(times),
            "seconds": times, "rows": rows}


def measure_store(folder: Path, samples: int, variants: int, evaluators: int,
                  query_repeats: int, report_formats: list[str], warm_up: bool = False) -> dict:
    path = folder / f"store-{samples}.duckdb"
    shape = build_store(path, samples, variants, evaluators, text_once=False)
    file_bytes = _file_bytes(path)
    _, [(used_bytes,)] = harness.query(
        path, "SELECT used_blocks * block_size FROM pragma_database_size()")
    _, counts = harness.query(path, "SELECT (SELECT count(*) FROM samples), "
                                    "(SELECT count(*) FROM contamination)")
    point = {**shape, "file_bytes": file_bytes, "used_bytes": used_bytes,
             "bytes_per_sample": file_bytes / shape["samples"],
             "stored_samples": counts[0][0], "stored_findings": counts[0][1]}
    for view in ("forgetting", "clean_scores"):
        point[view] = _query_latency(path, f"SELECT * FROM {view}", query_repeats)
        point[f"{view}_seconds"] = point[view]["median_seconds"]
    for fmt in report_formats:
        out = folder / f"report-{samples}.{fmt}"
        command = [sys.executable, "-m", "harness", "report", str(path), "--format", fmt,
                   "--out", str(out)]
        if warm_up:  # not counted: the first process after a while reads its libraries
            run_child(command, cwd=REPO)
        child = run_child(command, cwd=REPO)
        point[f"report_{fmt}"] = {"seconds": child.seconds, "cpu_seconds": child.cpu_seconds,
                                  "peak_rss_mib": child.peak_rss_mib,
                                  "bytes": out.stat().st_size}
        point[f"report_{fmt}_seconds"] = child.seconds
        point[f"report_{fmt}_peak_rss_mib"] = child.peak_rss_mib
    path.unlink()
    once = folder / f"store-{samples}-text-once.duckdb"
    once_shape = build_store(once, samples, variants, evaluators, text_once=True)
    point["text_once_file_bytes"] = _file_bytes(once)
    point["text_once_write_seconds"] = once_shape["write_seconds"]
    point["text_once_saving"] = 1 - point["text_once_file_bytes"] / file_bytes
    once.unlink()
    return point


def curve_store(args: argparse.Namespace, folder: Path) -> dict:
    points = []
    for n in args.store_samples:
        p = measure_store(folder, n, args.store_variants, args.store_evaluators,
                          args.query_repeats, args.report_formats,
                          warm_up=args.warm_up and not points)
        points.append(p)
        reports = ", ".join(f"report {fmt} {p[f'report_{fmt}_seconds']:.2f} s "
                            f"({p[f'report_{fmt}_peak_rss_mib']:,.0f} MiB)"
                            for fmt in args.report_formats)
        print(f"store {p['samples']:>9,} samples ({p['cells']} cells of "
              f"{p['items_per_evaluator']:,} items, {p['findings']:,} findings): "
              f"{p['file_bytes'] / 2**20:,.1f} MiB = {p['bytes_per_sample']:.0f} bytes/sample, "
              f"writes {p['write_seconds']:.1f} s; forgetting "
              f"{p['forgetting_seconds'] * 1e3:.0f} ms, "
              f"clean_scores {p['clean_scores_seconds'] * 1e3:.0f} ms, {reports}; item text "
              f"once per evaluator: {p['text_once_file_bytes'] / 2**20:,.1f} MiB "
              f"({p['text_once_saving']:.1%} smaller)", flush=True)
    per = (1_000_000, "1,000,000 samples")
    series = [Series("file_bytes", "store bytes", "B", 1, "sample"),
              Series("text_once_file_bytes", "store bytes, item text once per evaluator", "B",
                     1, "sample"),
              Series("write_seconds", "store writes", "s", *per),
              Series("forgetting_seconds", "SELECT * FROM forgetting", "s", *per),
              Series("clean_scores_seconds", "SELECT * FROM clean_scores", "s", *per)]
    series += [Series(f"report_{fmt}_seconds", f"harness report --format {fmt}", "s", *per)
               for fmt in args.report_formats]
    series += [Series(f"report_{fmt}_peak_rss_mib", f"harness report --format {fmt}, peak memory",
                      "MiB", *per) for fmt in args.report_formats]
    fits = fit_series(points, "samples", series)
    largest = points[-1]
    text_once = {"samples": largest["samples"], "saving_bytes": largest["file_bytes"]
                 - largest["text_once_file_bytes"], "saving": largest["text_once_saving"]}
    line = (f"  item text once per evaluator instead of once per cell: "
            f"{text_once['saving_bytes'] / 2**20:,.1f} MiB ({text_once['saving']:.0%}) of the "
            f"{largest['samples']:,}-sample store")
    written, once = fits["file_bytes"]["slope"], fits["text_once_file_bytes"]["slope"]
    if len(points) > 1 and written > 0:
        text_once.update({"bytes_per_sample": written, "text_once_bytes_per_sample": once,
                          "marginal_saving": 1 - once / written})
        line += (f"; {written - once:.0f} of the {written:.0f} bytes each sample adds "
                 f"({1 - once / written:.0%})")
    print(line, flush=True)
    return {"x": "samples", "variants": args.store_variants,
            "evaluators": args.store_evaluators, "flag_rate": FLAG_RATE,
            "report_formats": args.report_formats, "points": points, "fits": fits,
            "text_once": text_once}


# -- figures ----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # text as text (no glyph paths), one font name per label: small files to commit
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "cost-curves",
                         "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"],
                         "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _panel(ax, result: dict, x_key: str, keys: list[tuple[str, str]], ylabel: str,
           scale: float = 1.0) -> None:
    """Points and their fitted lines, one colour per series; the slope in the legend (in
    the series' own unit, per its own count of x)."""
    xs = np.asarray([p[x_key] for p in result["points"]], dtype=float)
    ends = np.array([xs.min(), xs.max()])
    top = 0.0
    for key, label in keys:
        if key not in result["fits"]:
            continue
        ys = np.asarray([p[key] for p in result["points"]], dtype=float) * scale
        f = result["fits"][key]
        top = max(top, float(ys.max()))
        points = ax.plot(xs, ys, "o", markersize=4)[0]
        ax.plot(ends, (f["slope"] * ends + f["intercept"]) * scale, "-", linewidth=1,
                color=points.get_color(),
                label=f"{label}: {f['slope'] * f['per']:.3g} {f['unit']} per {f['per_label']}, "
                      f"R$^2$ {f['r2']:.3f}")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.set_xlim(0, xs.max() * 1.04)
    # from zero: a fixed cost shows as the intercept, noise as noise; room for the legend
    ax.set_ylim(0, top * (1.2 + 0.09 * len(keys)) or 1)
    ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left")


def draw(name: str, result: dict, folder: Path, fmt: str = "svg") -> Path:
    plt = _pyplot()
    x = result["x"]
    if name in ("items", "variants"):
        shape = (f"base + {result['variants']} LoRA variant(s) on N items" if name == "items"
                 else f"base + K LoRA variants on {result['items']:,} items")
        title = (f"harness run, tiny-random: {shape} ({result['tune_steps']} tuning steps "
                 f"each; membership scores {result['membership']})")
        panels = [([("process_seconds", "process"), ("run_seconds", "run_suite"),
                    ("cell_seconds", "cells"), ("tune_seconds", "tuning")], "seconds", 1.0),
                  ([("peak_rss_mib", "peak RSS")], "MiB", 1.0)]
    elif name == "tuning-rows":
        title = f"contamination index, {result['items']:,} items, exact + 13-gram"
        panels = [([("seconds", "in all"), ("index_seconds", "index"),
                    ("table_seconds", "13-gram table"), ("check_seconds", "check items")],
                   "seconds", 1.0),
                  ([("peak_rss_mib", "peak RSS")], "MiB", 1.0)]
    else:
        title = (f"a store of N samples: base + {result['variants']} variants x "
                 f"{result['evaluators']} evaluators, 4 contamination findings per variant "
                 "and sample")
        panels = [([("file_bytes", "as written"), ("text_once_file_bytes", "item text once")],
                   "store MiB", 1 / 2**20),
                  ([("write_seconds", "writes"), ("forgetting_seconds", "forgetting"),
                    ("clean_scores_seconds", "clean_scores")]
                   + [(f"report_{f}_seconds", f"report {f}") for f in result["report_formats"]],
                   "seconds", 1.0),
                  ([(f"report_{f}_peak_rss_mib", f"report {f}")
                    for f in result["report_formats"]], "peak RSS, MiB", 1.0)]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (keys, ylabel, scale) in zip(axes, panels):
        _panel(ax, result, x, keys, ylabel, scale)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cost_{name.replace('-', '_')}.{fmt}"
    figure.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(figure)
    return path


# -- the command ------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("harness", "torch", "transformers", "peft", "trl", "lm_eval", "duckdb",
                 "pyarrow", "numpy", "matplotlib"):
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _sizes(text: str) -> list[int]:
    return [int(v) for v in text.replace("_", "").split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curve", nargs="?", choices=[*CURVES, "all"], default="all",
                        help="the curve to measure (default: all four)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (about a minute): checks that the script works")
    parser.add_argument("--items", type=_sizes, help="items per run (default 40,...,20000)")
    parser.add_argument("--items-variants", type=int, default=1,
                        help="LoRA variants beside the base in the items curve (0: base only)")
    parser.add_argument("--variants", type=_sizes, help="variants per run (default 1,...,16)")
    parser.add_argument("--variant-items", type=int, help="items of the variants curve (1000)")
    parser.add_argument("--tune-steps", type=int, default=2, help="optimiser steps per variant")
    parser.add_argument("--membership", choices=["on", "off"], default="on",
                        help="[contamination] membership of the runs (on: the default)")
    parser.add_argument("--tuning-rows", type=_sizes, help="default 1000,...,100000")
    parser.add_argument("--tuning-items", type=int, help="items checked against them (5000)")
    parser.add_argument("--store-samples", type=_sizes, help="default 100000,300000,1000000")
    parser.add_argument("--store-variants", type=int, help="LoRA variants beside the base (4)")
    parser.add_argument("--store-evaluators", type=int, help="evaluators (4)")
    parser.add_argument("--report-formats", type=lambda t: t.split(","), default=["html", "md"])
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per point of the run and index curves (medians)")
    parser.add_argument("--query-repeats", type=int, default=3)
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the uncounted first process of each curve (--quick skips it)")
    parser.add_argument("--out", type=Path, help="default: bench/results/cost_curves.json")
    parser.add_argument("--figures", type=Path, help="default: docs/figures")
    args = parser.parse_args()
    sizes = QUICK if args.quick else DEFAULTS
    args.warm_up = args.warm_up and not args.quick
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    results_dir = REPO / "bench" / "results"
    out = args.out or results_dir / ("cost_curves_quick.json" if args.quick else "cost_curves.json")
    figures = args.figures or (results_dir / "quick_figures" if args.quick
                               else REPO / "docs" / "figures")
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("curves", {})
    curves = CURVES if args.curve == "all" else (args.curve,)
    measure = {"items": curve_items, "variants": curve_variants,
               "tuning-rows": curve_tuning_rows, "store": curve_store}
    machine = {"machine": {"platform": platform.platform(),
                           "processor": platform.processor() or platform.machine(),
                           "cpu_count": os.cpu_count()},
               "versions": _versions(), "linear_r2": LINEAR_R2}
    started = time.perf_counter()
    for name in curves:
        print(f"== {name}", flush=True)
        load_before = os.getloadavg()
        clock = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"cost-{name}-") as tmp:
            result = measure[name](args, Path(tmp))
        result.update({"seconds": time.perf_counter() - clock, "load_average_before": load_before,
                       "load_average_after": os.getloadavg(), "quick": args.quick,
                       "measured_at": datetime.now().isoformat(timespec="seconds")})
        result.update(machine)
        figure = draw(name, result, figures).resolve()
        result["figure"] = str(figure.relative_to(REPO) if figure.is_relative_to(REPO) else figure)
        print(f"  figure {result['figure']}; {result['seconds']:.0f} s", flush=True)
        report["curves"][name] = result
    report.update(machine)  # of the latest measurement; each curve keeps its own
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{', '.join(curves)} in {time.perf_counter() - started:.0f} s -> {out}; "
          f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
