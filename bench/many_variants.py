"""Many variants, one base: K LoRA adapters evaluated with the base loaded once, against
loading the base again for each.

    python bench/many_variants.py [--variants 1,2,4,8] [--repeats 2] [--out FILE]

K rank-8 LoRA adapters of SmolLM2-135M-Instruct (random, so that each differs) are
written once. Each is scored with the quickstart's `capitals` benchmark (40 items x 4
choices, batch 8) on the harness's `hf` backend, the way a run's worker does it:

* once: one backend loads the base, then each adapter is activated in place and
  evaluated (what `harness run` does);
* separate: for each adapter a new backend loads the base, activates the adapter and
  evaluates it (what running each variant as its own job costs).

Also timed: loading the base, and evaluating the base alone. The figure of merit is the
extra cost of one more variant on the shared base, (once(K) - load) / K, divided by one
base evaluation (target <= 1.15). Fresh process per measurement; modes alternate.
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
import json, sys, time
from pathlib import Path
import torch, transformers, peft, lm_eval, lm_eval.evaluator  # untimed imports
from harness import EvaluatorSpec, ResolvedModel, Variant
from harness_plugins.backends.hf import HFBackend, HFOptions
from harness_plugins.evaluators.benchmark import BenchmarkEvaluator, BenchmarkOptions
from harness_plugins.sources.builtin import builtin_model_path

mode, adapters, data = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
path = builtin_model_path("smollm2-135m-instruct")
model = ResolvedModel("smollm2", "builtin:smollm2-135m-instruct", path, "bench")
evaluator = BenchmarkEvaluator(EvaluatorSpec("capitals", "benchmark", "general", data, 0),
                               BenchmarkOptions())
options = HFOptions(batch_size=8, device="cpu", dtype="float32")

def variant(i):
    return Variant(f"v{i}", f"adapter-key-{i:04d}", model, "adapter", Path(adapters[i]))

result = {}
clock = time.perf_counter()
if mode == "base":
    backend = HFBackend(options); backend.load(model)
    result["load_seconds"] = time.perf_counter() - clock
    backend.activate(Variant("base", "base", model, "base"))
    start = time.perf_counter(); evaluator.evaluate(backend)
    result["evaluate_seconds"] = time.perf_counter() - start
elif mode == "once":
    backend = HFBackend(options); backend.load(model)
    for i in range(len(adapters)):
        backend.activate(variant(i)); evaluator.evaluate(backend)
else:
    for i in range(len(adapters)):
        backend = HFBackend(options); backend.load(model)
        backend.activate(variant(i)); evaluator.evaluate(backend); backend.close()
result["seconds"] = time.perf_counter() - clock
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
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "many_variants.json")
    args = parser.parse_args()
    counts = [int(k) for k in args.variants.split(",")]
    data = str(REPO / "suites" / "data" / "capitals.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        folders = [str(Path(tmp) / f"adapter-{i}") for i in range(max(counts))]
        subprocess.run([sys.executable, "-c", MAKE_ADAPTERS, *folders], check=True,
                       capture_output=True)
        base_runs, runs = [], {k: {"once": [], "separate": []} for k in counts}
        for _ in range(args.repeats):
            base_runs.append(run("base", "[]", data))
            print("base", base_runs[-1], flush=True)
            for k in counts:
                for mode in ("once", "separate"):
                    runs[k][mode].append(run(mode, json.dumps(folders[:k]), data)["seconds"])
                    print(k, mode, f"{runs[k][mode][-1]:.2f} s", flush=True)
    load = statistics.median(r["load_seconds"] for r in base_runs)
    evaluate = statistics.median(r["evaluate_seconds"] for r in base_runs)
    rows = []
    for k in counts:
        once = statistics.median(runs[k]["once"])
        separate = statistics.median(runs[k]["separate"])
        rows.append({"variants": k, "once_seconds": once, "separate_seconds": separate,
                     "once_over_separate": once / separate,
                     "extra_per_variant_over_base_eval": (once - load) / k / evaluate})
    import torch
    import transformers

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "base_load_seconds": load, "base_evaluate_seconds": evaluate, "results": rows,
              "raw": {"base": base_runs, "runs": runs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"base: load {load:.2f} s, evaluate {evaluate:.2f} s")
    for r in rows:
        print(f"K={r['variants']}: once {r['once_seconds']:.1f} s, separate "
              f"{r['separate_seconds']:.1f} s, ratio {r['once_over_separate']:.3f}, extra per "
              f"variant / base evaluation {r['extra_per_variant_over_base_eval']:.3f}")


if __name__ == "__main__":
    main()
