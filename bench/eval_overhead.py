"""Evaluation overhead: `harness run` against `lm_eval.simple_evaluate` on the same work.

    python bench/eval_overhead.py [--repeats 3] [--out FILE]
    python bench/eval_overhead.py --items 5000 [--batch-size 64] [--threads N] [--repeats 3] [--out FILE]

Without `--items`: two tasks on SmolLM2-135M-Instruct, batch size 8, every item (no limit):

* multiple choice: the quickstart's `capitals.jsonl` (40 items x 4 choices);
* perplexity: the quickstart's `general_text.jsonl` (30 texts), as an lm-eval
  `loglikelihood_rolling` task (wikitext's metrics) against the harness's `perplexity`
  evaluator.

With `--items N`: one multiple-choice task of N generated items (4 choices each, in the
harness's benchmark format, written to a temporary folder) on the built-in `tiny-random`
model, batch size `--batch-size` (64): the cost a per-item overhead adds at a real
benchmark's size, where the model's own work is small.

lm-eval is given the multiple-choice task as its YAML would say it (the Jinja templates of
`task_config_for_jsonl(..., templates=True)`, which lm-eval compiles again for every
document), and runs twice: as `simple_evaluate` is usually called (`lm_eval`: it then
builds the index of all its own tasks, 4 s, before it looks at the config), and with
`task_manager=TaskManager(include_defaults=False)` (`lm_eval_light`), which skips that
index as the harness does for a config it builds. With `--items`, a third lm-eval run
(`lm_eval_light_functions`) is given the config the harness builds (its prompt as a Python
function): the same prompts, without lm-eval's per-document template compile.

Each measurement is a fresh process. `seconds` is timed inside it, after importing torch,
transformers and lm-eval, around everything a user waits for: for lm-eval, `HFLM(...)`
(the model load) and `simple_evaluate`; for the harness, `run_suite` on a suite with the
base model and that one evaluator and a fresh store (plugin loading, suite checks, model
load, evaluation, store writes, the run's analysis). `process_seconds` is the whole
process's wall time, interpreter start and imports included, and `cpu_seconds` its user +
system CPU time (on a shared CPU the wall time includes waiting for other jobs; the CPU
time does not, but counts the spinning of torch's threads; `--threads 1` gives each
process one thread, which makes the CPU time the work done). The harness runs with
`[contamination] membership = false` (the same work as lm-eval) and, without `--items`,
also with the default `true` (`harness_membership`: one more forward pass per item for
the Min-K% scores). The labels are alternated, in an order rotated each repeat,
`--repeats` times; medians are reported. The dataset cache of `datasets` is filled before
the first measurement.

The multiple-choice metrics (`acc`, `acc_norm` and their standard errors) must be
identical on every side, to the last bit; the script stops if they are not. The
perplexity metrics are compared by their largest relative difference (float32 forward
passes batched differently agree to about 1e-5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO / "suites" / "data"

PRELUDE = r"""
import json, os, sys, time
os.environ["TQDM_DISABLE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
import torch, transformers, lm_eval, lm_eval.evaluator, lm_eval.models.huggingface  # untimed
model_path, batch_size, config_arg, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
"""

RAW = PRELUDE + r"""
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
if config_arg.startswith("functions:"):  # the config the harness builds, its prompt a function
    from pathlib import Path
    from harness_plugins.evaluators.benchmark import BenchmarkOptions, task_config_for_jsonl
    config = task_config_for_jsonl(mode.split(":")[1], Path(config_arg.split(":", 1)[1]),
                                   BenchmarkOptions())
else:
    config = json.loads(config_arg)
manager = None  # simple_evaluate then indexes all of lm-eval's tasks, as it does by default
clock = time.perf_counter()
if mode.startswith("light"):  # the same work with an index of no task folders
    from lm_eval.tasks import TaskManager
    manager = TaskManager(include_defaults=False)
lm = HFLM(pretrained=model_path, batch_size=batch_size, device="cpu", dtype="float32")
out = simple_evaluate(model=lm, tasks=[config], task_manager=manager, verbosity="ERROR", random_seed=0,
                      numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
seconds = time.perf_counter() - clock
(values,) = out["results"].values()
metrics = {k.split(",")[0]: v for k, v in values.items()
           if "," in k and "_stderr" not in k and isinstance(v, float)}
stderrs = {k.split(",")[0].removesuffix("_stderr"): v for k, v in values.items()
           if "_stderr," in k and isinstance(v, float)}
print(json.dumps({"seconds": seconds, "metrics": metrics, "stderrs": stderrs}))
"""

HARNESS = PRELUDE + r"""
from rich.console import Console
from harness.runner import run_suite
import duckdb
clock = time.perf_counter()
summary = run_suite(config_arg, console=Console(file=open(os.devnull, "w")), show_progress=False)
seconds = time.perf_counter() - clock
assert summary.failed == 0
con = duckdb.connect(str(summary.store_path), read_only=True)
rows = con.execute("SELECT metric, value, stderr FROM metrics").fetchall()
print(json.dumps({"seconds": seconds, "metrics": {m: v for m, v, _ in rows},
                  "stderrs": {m: s for m, _, s in rows if s is not None}}))
"""

WORDS = ("the of and to in is was for on that with as by at from his an were are which "
         "capital river island harbour north south minister elected founded ancient city "
         "king queen war treaty mountain lake empire century republic language coast "
         "bridge temple market museum university railway province desert forest").split()


def write_items(path: Path, n: int, seed: int = 0) -> Path:
    """N multiple-choice items in the harness's benchmark format (question, 4 choices, the
    index of the right one, an id): questions of 4-12 words, choices of 1-3 words (about
    50 tokens a request with the tiny model's tokenizer)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            words = " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))
            choices = [" ".join(rng.choices(WORDS, k=rng.randint(1, 3))) for _ in range(4)]
            out.write(json.dumps({"id": f"item-{i:05d}", "question": f"Which {words}?",
                                  "choices": choices, "answer": rng.randrange(4)}) + "\n")
    return path


def perplexity_config(data: Path) -> dict:
    return {"task": "general_text", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
            "output_type": "loglikelihood_rolling", "doc_to_text": "",
            "doc_to_target": "{{text}}", "metadata": {"version": 1.0},
            "metric_list": [{"metric": m} for m in
                            ("word_perplexity", "byte_perplexity", "bits_per_byte")]}


def suite_text(name: str, kind: str, source: str, data: Path, store: Path, batch_size: int,
               membership: bool) -> str:
    return f"""
[suite]
name = "overhead-{name}"
store = "{store}"
reporters = []

[[models]]
name = "model"
source = "{source}"

[[evaluators]]
name = "{name}"
kind = "{kind}"
data = "{data}"

[backend]
kind = "hf"
options = {{ batch_size = {batch_size}, device = "cpu", dtype = "float32" }}

[contamination]
membership = {str(membership).lower()}
"""


THREADS: int | None = None  # --threads: torch's threads in each measured process


def run(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """One fresh process: its own result, its wall time and its CPU time (user + system)."""
    if THREADS:
        env = {**(env if env is not None else os.environ), "OMP_NUM_THREADS": str(THREADS),
               "MKL_NUM_THREADS": str(THREADS)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env)
    wall = time.perf_counter() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    result["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def fill_dataset_cache(config: dict) -> None:
    """lm-eval loads the JSONL through `datasets`, which converts it once into its cache;
    do that before the clock, for both sides alike."""
    from lm_eval.tasks import TaskManager

    TaskManager(include_defaults=False).load([config])


def measure(task: str, data: Path, source: str, batch_size: int, repeats: int,
            labels: list[str]) -> dict:
    from harness_plugins.evaluators.benchmark import BenchmarkOptions, task_config_for_jsonl
    from harness_plugins.sources.builtin import builtin_model_path

    model_path = str(builtin_model_path(source.removeprefix("builtin:")))
    if task == "perplexity":
        config, kind = perplexity_config(data), "perplexity"
    else:
        config, kind = task_config_for_jsonl(task, data, BenchmarkOptions(), templates=True), "benchmark"
    fill_dataset_cache(config)
    times: dict[str, dict[str, list[float]]] = {
        label: {"seconds": [], "process_seconds": [], "cpu_seconds": []} for label in labels}
    metrics: dict[str, dict] = {}
    stderrs: dict[str, dict] = {}
    for repeat in range(repeats):
        shift = repeat % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if label == "lm_eval_light_functions":
                result = run(RAW, model_path, str(batch_size), f"functions:{data}",
                             f"light:{task}")
            elif label.startswith("lm_eval"):
                result = run(RAW, model_path, str(batch_size), json.dumps(config),
                             "light" if label == "lm_eval_light" else "default")
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    suite = Path(tmp) / "suite.toml"
                    suite.write_text(suite_text(task, kind, source, data, Path(tmp) / "s.duckdb",
                                                batch_size, label == "harness_membership"))
                    result = run(HARNESS, model_path, str(batch_size), str(suite), "")
            for key in times[label]:
                times[label][key].append(result[key])
            metrics[label], stderrs[label] = result["metrics"], result["stderrs"]
            print(task, label, f"{result['seconds']:.2f} s (process {result['process_seconds']:.2f} s, "
                  f"CPU {result['cpu_seconds']:.2f} s)", flush=True)
    reference = metrics["lm_eval_light"]
    shared = sorted(set(reference) & set(metrics["harness"]))
    if task != "perplexity":
        # the same requests scored by the same model at the same batch size: equal to the bit
        for label in labels:
            same = {m: metrics[label][m] for m in shared} == {m: reference[m] for m in shared} \
                and {m: stderrs[label][m] for m in shared} == {m: stderrs["lm_eval_light"][m] for m in shared}
            if not same:
                raise SystemExit(f"{task}: {label}'s metrics {metrics[label]} {stderrs[label]} differ "
                                 f"from lm-eval's {reference} {stderrs['lm_eval_light']}")
    difference = max(abs(metrics[label][m] - reference[m]) / abs(reference[m])
                     for m in shared for label in labels)
    medians = {label: {key: statistics.median(values) for key, values in by_key.items()}
               for label, by_key in times.items()}

    def ratios(side: str, against: str) -> dict[str, float]:
        return {key: medians[side][key] / medians[against][key] for key in medians[side]}

    result = {
        "task": task, "items": sum(1 for line in data.open() if line.strip()), "model": source,
        "batch_size": batch_size, "threads": THREADS, "repeats": repeats, "times": times, "medians": medians,
        # the harness against lm-eval told to skip its task index: the same work
        "ratio": ratios("harness", "lm_eval_light"),
        "ratio_to_default_call": ratios("harness", "lm_eval"),
        "compared_metrics": {m: [reference[m], metrics["harness"][m]] for m in shared},
        "max_relative_difference": difference,
    }
    if "harness_membership" in labels:
        result["ratio_with_membership"] = ratios("harness_membership", "lm_eval_light")
    if "lm_eval_light_functions" in labels:
        result["ratio_to_functions_config"] = ratios("harness", "lm_eval_light_functions")
        result["lm_eval_functions_over_templates"] = ratios("lm_eval_light_functions", "lm_eval_light")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=None,
                        help="generated multiple-choice items on the tiny model (default: the "
                             "quickstart's tasks on SmolLM2)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 64 with --items, else 8")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per measured process (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: bench/results/eval_overhead[_<items>].json")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        if args.items:
            data = write_items(Path(tmp) / f"items_{args.items}.jsonl", args.items)
            labels = ["lm_eval", "lm_eval_light", "lm_eval_light_functions", "harness"]
            results = [measure("mc", data, "builtin:tiny-random", args.batch_size or 64,
                               args.repeats, labels)]
        else:
            labels = ["lm_eval", "lm_eval_light", "harness", "harness_membership"]
            results = [measure(task, DATA / file, "builtin:smollm2-135m-instruct",
                               args.batch_size or 8, args.repeats, labels)
                       for task, file in (("mc", "capitals.jsonl"),
                                          ("perplexity", "general_text.jsonl"))]
    import lm_eval
    import torch
    import transformers

    load = os.getloadavg()
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average_at_end": load,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "lm_eval": lm_eval.__version__},
              "results": results}
    out = args.out or REPO / "bench" / "results" / (
        f"eval_overhead_{args.items}.json" if args.items else "eval_overhead.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for r in results:
        line = (f"{r['task']} ({r['items']} items, batch {r['batch_size']}): harness / lm-eval "
                f"without its task index = {r['ratio']['seconds']:.3f} timed in-process, "
                f"{r['ratio']['process_seconds']:.3f} whole process, "
                f"{r['ratio']['cpu_seconds']:.3f} CPU; / lm-eval's default call "
                f"{r['ratio_to_default_call']['seconds']:.3f}")
        if "ratio_with_membership" in r:
            line += f"; with membership {r['ratio_with_membership']['seconds']:.3f}"
        if "ratio_to_functions_config" in r:
            line += (f"; / lm-eval given the harness's own config "
                     f"{r['ratio_to_functions_config']['seconds']:.3f} (that config / the "
                     f"templates {r['lm_eval_functions_over_templates']['seconds']:.3f})")
        print(line)
        print(f"  medians (s): " + ", ".join(f"{label} {m['seconds']:.2f} / {m['process_seconds']:.2f}"
                                             for label, m in r["medians"].items())
              + f"; metrics {r['compared_metrics']}, largest relative difference "
                f"{r['max_relative_difference']:.1e}")
    print(f"load average at the end: {load[0]:.2f} (a shared CPU if well above 0)")


if __name__ == "__main__":
    main()
