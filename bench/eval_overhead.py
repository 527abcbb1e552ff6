"""Evaluation overhead: `harness run` against `lm_eval.simple_evaluate` on the same work.

    python bench/eval_overhead.py [--repeats 3] [--out FILE]

Two tasks on SmolLM2-135M-Instruct, batch size 8, every item (no limit):

* multiple choice: the quickstart's `capitals.jsonl` (40 items x 4 choices), as the
  lm-eval task config that the harness's `benchmark` evaluator builds (what a user would
  write as YAML);
* perplexity: the quickstart's `general_text.jsonl` (30 texts), as an lm-eval
  `loglikelihood_rolling` task (wikitext's metrics) against the harness's `perplexity`
  evaluator.

lm-eval runs twice: as `simple_evaluate` is usually called (it then builds the index of
all its own tasks, 4 s, before it looks at the config), and with
`task_manager=TaskManager(include_defaults=False)`, which skips that index as the
harness does for a config it builds.

Each measurement is a fresh process that imports torch, transformers and lm-eval first
and then times everything a user waits for: for lm-eval, `HFLM(...)` (the model load)
and `simple_evaluate`; for the harness, `run_suite` on a suite with the base model and
that one evaluator and a fresh store (suite checks, model load, evaluation, store
writes). The harness runs twice: with `[contamination] membership = false` (the same
work as lm-eval) and with the default `true` (one more forward pass per item for the
Min-K% scores). The three are alternated, `--repeats` times; medians are reported, with
the largest relative difference between the two sides' metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "suites" / "data"

PRELUDE = r"""
import json, os, sys, time
os.environ["TQDM_DISABLE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
import torch, transformers, lm_eval, lm_eval.evaluator, lm_eval.models.huggingface  # untimed
from harness_plugins.sources.builtin import builtin_model_path
model_path = builtin_model_path("smollm2-135m-instruct")
task, data = sys.argv[1], sys.argv[2]
"""

RAW = PRELUDE + r"""
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from harness_plugins.evaluators.benchmark import BenchmarkOptions, task_config_for_jsonl
if task == "mc":
    config = task_config_for_jsonl("capitals", data, BenchmarkOptions())
else:
    config = {"task": "general_text", "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"test": data}}, "test_split": "test",
              "output_type": "loglikelihood_rolling", "doc_to_text": "",
              "doc_to_target": "{{text}}", "metadata": {"version": 1.0},
              "metric_list": [{"metric": m} for m in
                              ("word_perplexity", "byte_perplexity", "bits_per_byte")]}
manager = None  # simple_evaluate then indexes all of lm-eval's tasks, as it does by default
clock = time.perf_counter()
if sys.argv[3] == "light":  # the same work with an index of no task folders
    from lm_eval.tasks import TaskManager
    manager = TaskManager(include_defaults=False)
lm = HFLM(pretrained=str(model_path), batch_size=8, device="cpu", dtype="float32")
out = simple_evaluate(model=lm, tasks=[config], task_manager=manager, verbosity="ERROR", random_seed=0,
                      numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
seconds = time.perf_counter() - clock
(values,) = out["results"].values()
metrics = {k.split(",")[0]: v for k, v in values.items()
           if "," in k and "_stderr" not in k and isinstance(v, float)}
print(json.dumps({"seconds": seconds, "metrics": metrics}))
"""

HARNESS = PRELUDE + r"""
from rich.console import Console
from harness.runner import run_suite
import duckdb
suite = sys.argv[3]
clock = time.perf_counter()
summary = run_suite(suite, console=Console(file=open(os.devnull, "w")), show_progress=False)
seconds = time.perf_counter() - clock
assert summary.failed == 0
con = duckdb.connect(str(summary.store_path), read_only=True)
metrics = dict(con.execute("SELECT metric, value FROM metrics").fetchall())
print(json.dumps({"seconds": seconds, "metrics": metrics}))
"""


def suite_text(task: str, data: Path, store: Path, membership: bool) -> str:
    kind = "benchmark" if task == "mc" else "perplexity"
    return f"""
[suite]
name = "overhead-{task}"
store = "{store}"
reporters = []

[[models]]
name = "smollm2-135m"
source = "builtin:smollm2-135m-instruct"

[[evaluators]]
name = "{task}"
kind = "{kind}"
data = "{data}"

[backend]
kind = "hf"
options = {{ batch_size = 8, device = "cpu", dtype = "float32" }}

[contamination]
membership = {str(membership).lower()}
"""


def run(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(task: str, repeats: int) -> dict:
    data = DATA / ("capitals.jsonl" if task == "mc" else "general_text.jsonl")
    times: dict[str, list[float]] = {"lm_eval": [], "lm_eval_light": [], "harness": [],
                                     "harness_membership": []}
    metrics: dict[str, dict] = {}
    for _ in range(repeats):
        for label in times:
            if label.startswith("lm_eval"):
                result = run(RAW, task, str(data), "light" if label.endswith("light") else "")
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    suite = Path(tmp) / "suite.toml"
                    suite.write_text(suite_text(task, data, Path(tmp) / "s.duckdb",
                                                label == "harness_membership"))
                    result = run(HARNESS, task, str(data), str(suite))
            times[label].append(result["seconds"])
            metrics[label] = result["metrics"]
            print(task, label, f"{result['seconds']:.2f} s", flush=True)
    shared = sorted(set(metrics["lm_eval"]) & set(metrics["harness"]))
    # float32 forward passes batched differently agree to about 1e-5, not to the last bit
    difference = max(abs(metrics[label][m] - metrics["lm_eval"][m]) / abs(metrics["lm_eval"][m])
                     for m in shared for label in ("harness", "harness_membership"))
    medians = {label: statistics.median(values) for label, values in times.items()}
    return {
        "task": task, "repeats": repeats, "seconds": times, "median_seconds": medians,
        "ratio": medians["harness"] / medians["lm_eval"],
        "ratio_with_membership": medians["harness_membership"] / medians["lm_eval"],
        "ratio_to_light": medians["harness"] / medians["lm_eval_light"],
        "compared_metrics": {m: [metrics["lm_eval"][m], metrics["harness"][m]] for m in shared},
        "max_relative_difference": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "eval_overhead.json")
    args = parser.parse_args()
    results = [measure(task, args.repeats) for task in ("mc", "perplexity")]
    import lm_eval
    import torch
    import transformers

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "lm_eval": lm_eval.__version__},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for r in results:
        print(f"{r['task']}: harness / lm-eval = {r['ratio']:.3f} "
              f"(with membership {r['ratio_with_membership']:.3f}; against lm-eval without its "
              f"task index {r['ratio_to_light']:.3f}); "
              f"largest relative metric difference {r['max_relative_difference']:.1e} "
              f"{r['compared_metrics']}")


if __name__ == "__main__":
    main()
