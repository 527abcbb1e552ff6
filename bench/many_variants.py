"""Many variants, one base: K LoRA adapters evaluated with the base loaded once, against
loading the base again for each; merged into the weights (the backend's way) or through peft's
unmerged layers (the way before).

    python bench/many_variants.py [--variants 1,2,4,8] [--repeats 2] [--threads N]
                                  [--merge both|on|off] [--out FILE]

K rank-8 LoRA adapters of SmolLM2-135M-Instruct (random, so that each differs) are
written once. Each is scored with the quickstart's `capitals` benchmark (40 items x 4
choices, batch 8) on the harness's `hf` backend, the way a run's worker does it:

* once: one backend loads the base, then each adapter is activated in place and
  evaluated (what `harness run` does);
* separate: for each adapter a new backend loads the base, activates the adapter and
  evaluates it (what running each variant as its own job costs).

`--merge off` runs `once` with the backend's merging turned off (the adapter applied by
peft's layers in every forward pass, as before merging); `both` (the default) runs `once`
both ways, alternating, so that the two are measured side by side.

Also timed: loading the base, and evaluating the base alone. As in a run, where the base
is evaluated before its variants, every process evaluates the base once before anything
is timed (lm-eval's first call in a process builds its model wrapper and
imports lazily, once); `once(K)` is then the load plus the K activations and evaluations.
The figure of merit is the extra cost of one more variant on the shared base,
(once(K) - load) / K, divided by one base evaluation (target <= 1.05), with load and base
evaluation from the `base` processes; `paired` divides each `once` process's mean variant
time (activation and evaluation) by that process's own base evaluation, which a shared CPU
disturbs less, and `paired_cpu` does the same with the process's CPU time (with one
thread, what other jobs on the CPU change least). Fresh process per measurement; modes
alternate; medians. Peak resident memory of each process is recorded (`ru_maxrss`).
`--threads` sets torch's threads in each process (default: torch's own choice).
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

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import torch, transformers, peft, lm_eval, lm_eval.evaluator  # untimed imports
from harness import EvaluatorSpec, ResolvedModel, Variant
from harness_plugins.backends import loading
from harness_plugins.backends.hf import HFBackend, HFOptions
from harness_plugins.evaluators.benchmark import BenchmarkEvaluator, BenchmarkOptions
from harness_plugins.sources.builtin import builtin_model_path

mode, adapters, data, threads = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
if mode == "once-unmerged":  # the backend as it was: peft's layers in every forward pass
    loading.MergedAdapter.read = classmethod(lambda cls, model, path, buffers=None: None)
    loading.MergedAdapter.merge = classmethod(lambda cls, peft, name: None)
path = builtin_model_path("smollm2-135m-instruct")
model = ResolvedModel("smollm2", "builtin:smollm2-135m-instruct", path, "bench")
evaluator = BenchmarkEvaluator(EvaluatorSpec("capitals", "benchmark", "general", data, 0),
                               BenchmarkOptions())
options = HFOptions(batch_size=8, device="cpu", dtype="float32")

def variant(i):
    return Variant(f"v{i}", f"adapter-key-{i:04d}", model, "adapter", Path(adapters[i]))

def evaluate_base(backend):
    backend.activate(Variant("base", "base", model, "base"))
    start, cpu = time.perf_counter(), time.process_time()
    evaluator.evaluate(backend)
    result["evaluate_cpu_seconds"] = time.process_time() - cpu
    return time.perf_counter() - start

result = {}
if mode == "separate":  # the same one-off work done first, untimed, as in the other modes
    backend = HFBackend(options); backend.load(model); evaluate_base(backend); backend.close()
clock = time.perf_counter()
if mode == "separate":
    for i in range(len(adapters)):
        backend = HFBackend(options); backend.load(model)
        backend.activate(variant(i)); evaluator.evaluate(backend); backend.close()
    result["seconds"] = time.perf_counter() - clock
else:
    backend = HFBackend(options); backend.load(model)
    result["load_seconds"] = time.perf_counter() - clock
    # as in a run, the base is evaluated first: lm-eval's first call in a process does
    # one-off work (the model wrapper, lazy imports) that no later evaluation repeats
    result["first_evaluate_seconds"] = evaluate_base(backend)
    result["evaluate_seconds"] = evaluate_base(backend)
if mode.startswith("once"):
    result["variant_seconds"], result["variant_cpu_seconds"] = [], []
    for i in range(len(adapters)):
        start, cpu = time.perf_counter(), time.process_time()
        backend.activate(variant(i)); evaluator.evaluate(backend)
        result["variant_seconds"].append(time.perf_counter() - start)
        result["variant_cpu_seconds"].append(time.process_time() - cpu)
    result["merged"] = backend._merged is not None
    result["seconds"] = result["load_seconds"] + sum(result["variant_seconds"])
result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""

MAKE_ADAPTERS = r"""
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from harness_plugins.sources.builtin import builtin_model_path
base = AutoModelForCausalLM.from_pretrained(builtin_model_path("smollm2-135m-instruct"))
for i, folder in enumerate(sys.argv[1:]):
    torch.manual_seed(i)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(folder, safe_serialization=True)
    base = model.unload()
"""


def run(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's own")
    parser.add_argument("--merge", choices=["both", "on", "off"], default="both")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "many_variants.json")
    args = parser.parse_args()
    counts = [int(k) for k in args.variants.split(",")]
    modes = {"both": ["once", "once-unmerged", "separate"], "on": ["once", "separate"],
             "off": ["once-unmerged", "separate"]}[args.merge]
    data = str(REPO / "suites" / "data" / "capitals.jsonl")
    threads = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folders = [str(Path(tmp) / f"adapter-{i}") for i in range(max(counts))]
        subprocess.run([sys.executable, "-c", MAKE_ADAPTERS, *folders], check=True,
                       capture_output=True)
        base_runs, runs = [], {k: {mode: [] for mode in modes} for k in counts}
        for _ in range(args.repeats):
            base_runs.append(run("base", "[]", data, threads))
            print("base", base_runs[-1], flush=True)
            for k in counts:
                for mode in modes:
                    runs[k][mode].append(run(mode, json.dumps(folders[:k]), data, threads))
                    print(k, mode, f"{runs[k][mode][-1]['seconds']:.2f} s", flush=True)
    load = statistics.median(r["load_seconds"] for r in base_runs)
    evaluate = statistics.median(r["evaluate_seconds"] for r in base_runs)
    rows = []
    for k in counts:
        row: dict = {"variants": k}
        separate = statistics.median(r["seconds"] for r in runs[k]["separate"])
        row["separate_seconds"] = separate
        for mode in modes:
            if mode == "separate":
                continue
            done = runs[k][mode]
            once = statistics.median(r["seconds"] for r in done)
            row[mode] = {
                "seconds": once, "over_separate": once / separate,
                "extra_per_variant_over_base_eval": (once - load) / k / evaluate,
                "paired": statistics.median(sum(r["variant_seconds"]) / k
                                            / r["evaluate_seconds"] for r in done),
                "paired_cpu": statistics.median(sum(r["variant_cpu_seconds"]) / k
                                                / r["evaluate_cpu_seconds"] for r in done),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in done),
                "merged": all(r["merged"] for r in done),
            }
        rows.append(row)
    import torch
    import transformers

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average_after": os.getloadavg(), "threads": args.threads or "torch default",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "base_load_seconds": load, "base_evaluate_seconds": evaluate,
              "base_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in base_runs),
              "results": rows, "raw": {"base": base_runs, "runs": runs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"base: load {load:.2f} s, evaluate {evaluate:.2f} s; "
          f"load average now {os.getloadavg()[0]:.1f}")
    for r in rows:
        for mode in modes:
            if mode != "separate":
                m = r[mode]
                print(f"K={r['variants']} {mode}: {m['seconds']:.1f} s (separate "
                      f"{r['separate_seconds']:.1f} s, ratio {m['over_separate']:.3f}), extra per "
                      f"variant / base evaluation {m['extra_per_variant_over_base_eval']:.3f}, "
                      f"paired {m['paired']:.3f} (CPU time {m['paired_cpu']:.3f}), peak "
                      f"{m['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
