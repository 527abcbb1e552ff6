"""Seconds per optimiser step and peak memory of each tuner on SmolLM2-135M.

    python bench/tuner_cost.py [--steps 10] [--tuners lora,dora,qlora,full] [--out FILE]

Each tuner trains on the quickstart's SFT data (batch 4, max length 128) in a
fresh process, so that peak memory is that tuner's alone. Seconds per step
leave out the first step (warm-up of kernels and allocator).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
from pathlib import Path
from harness import ResolvedModel, TuneJob
from harness.plugins import PluginHost
from harness_plugins.sources.builtin import builtin_model_path

name, steps, data, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
path = builtin_model_path("smollm2-135m-instruct")
model = ResolvedModel("smollm2", "builtin:smollm2-135m-instruct", path, "bench")
cls = PluginHost.load(entry_points=False).component("tuner", name).cls
options = cls.Options(steps=steps, batch_size=4, max_length=128)
stamps = []
job = TuneJob(model, name, data, out, seed=0, on_step=lambda s, t, l: stamps.append(time.perf_counter()))
result = cls(options).tune(job)
per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
print(json.dumps({"tuner": name, "steps": steps, "seconds_per_step": per_step,
                  "peak_memory_mb": result.record.peak_memory_mb,
                  "trainable_params": result.record.trainable_params,
                  "total_params": result.record.total_params,
                  "tokens_per_second": result.record.tokens_per_second}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tuners", default="lora,dora,qlora,full")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tuner_cost.json")
    args = parser.parse_args()
    data = REPO / "suites" / "data" / "task_sft.jsonl"
    rows = []
    for name in args.tuners.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([sys.executable, "-c", WORKER, name, str(args.steps), str(data), tmp],
                                  capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    import torch, transformers, peft, trl

    report = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{__import__('os').cpu_count()} cores",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__, "trl": trl.__version__},
              "batch_size": 4, "max_length": 128, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
